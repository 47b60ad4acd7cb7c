"""``twistd ws4redis --workers N``: worker processes sharing one listening
socket under a supervisor. Real twistd, real workers, real sockets; which
worker holds a connection is read from /proc."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import (
    PROJECT,
    TwistdServer,
    free_port,
    http_post_json,
    new_log_path,
    project_env,
    runws4redis_command,
    self_signed_certificate,
    unique,
    warm_up,
)

TIMEOUT = 10.0


# -- what runs where --------------------------------------------------------------------


def workers_of(parent: int) -> set[int]:
    """The worker processes of the supervisor ``parent`` now."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"twisted_ws4redis.server.worker" in command and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.add(int(entry))
    return found


def wait_for_workers(
    server: TwistdServer, count: int, *, other_than: set[int] = frozenset(), timeout: float = 30.0
) -> set[int]:
    """Until ``count`` workers, none of ``other_than``, have said they are ready."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, server.log()
        ready = {int(pid) for pid in re.findall(r"Worker \d+ \(pid (\d+)\) is ready", server.log())}
        alive = workers_of(server.process.pid)
        current = (ready & alive) - set(other_than)
        if len(current) >= count and len(alive - set(other_than)) == count:
            return current
        assert time.monotonic() < deadline, f"{count} workers are not ready:\n{server.log()}"
        time.sleep(0.05)


def wait_for_line(server: TwistdServer, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log()}"
        time.sleep(0.05)


def holder(ws_or_sock, server_port: int, pids: set[int]) -> int | None:
    """The worker (of ``pids``) holding the server side of a client's connection."""
    sock = getattr(ws_or_sock, "socket", ws_or_sock)
    client_port = sock.getsockname()[1]
    wanted = f"0100007F:{server_port:04X} 0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


def start(redis_server, test_db, *args: str, **kwargs) -> tuple[TwistdServer, set[int]]:
    server = TwistdServer(redis_server.url, test_db, args=("--workers=2", *args), **kwargs)
    pids = wait_for_workers(server, 2)
    warm_up(server)
    return server, pids


def sockets_on_both(
    server: TwistdServer, pids: set[int], path: str, stack: contextlib.ExitStack, at_least: int = 3, most: int = 400
) -> dict[int, list]:
    """Websockets opened until each worker holds ``at_least`` of them."""
    held: dict[int, list] = {pid: [] for pid in pids}
    for _ in range(most):
        ws = stack.enter_context(connect(server.ws_url(path), open_timeout=TIMEOUT))
        held[holder(ws, server.port, pids)].append(ws)
        if all(len(sockets) >= at_least for sockets in held.values()):
            return held
    raise AssertionError(f"after {most} sockets: {[len(s) for s in held.values()]} per worker")


# -- the tests ------------------------------------------------------------------------------


def test_two_workers_share_the_port_and_redis_carries_messages_between_them(redis_server, test_db, redis_client):
    """Each worker takes connections from the one socket; what Django publishes
    reaches the sockets of both; a socket's publish reaches those of the other."""
    server, pids = start(redis_server, test_db)
    try:
        facility = unique("workers")
        with contextlib.ExitStack() as stack:
            held = sockets_on_both(server, pids, f"{facility}?subscribe-broadcast&publish-broadcast", stack)
            everyone = [ws for sockets in held.values() for ws in sockets]
            http_post_json(server, "/publish/", {"facility": facility, "broadcast": True, "message": "to all"})
            assert [ws.recv(timeout=TIMEOUT) for ws in everyone] == ["to all"] * len(everyone)
            for pid, sockets in held.items():
                sender = sockets[0]
                sender.send(f"from {pid}")
                others = [ws for ws in everyone if ws is not sender]
                assert [ws.recv(timeout=TIMEOUT) for ws in others] == [f"from {pid}"] * len(others)
    finally:
        assert server.stop() == 0, server.log()


def test_a_worker_that_dies_is_restarted_and_the_other_serves_meanwhile(redis_server, test_db):
    server, pids = start(redis_server, test_db)
    try:
        victim, survivor = sorted(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # during the back-off: every page from the survivor
            with urllib.request.urlopen(server.http_url("/"), timeout=TIMEOUT) as response:
                assert response.status == 200
        new = wait_for_workers(server, 2, other_than={victim})
        assert survivor in new
        assert victim not in new
        log = server.log()
        assert re.search(rf"Worker \d \(pid {victim}\) was killed by signal 9; starting it again in 0.5 s", log), log
    finally:
        assert server.stop() == 0, server.log()


def test_sigterm_closes_every_socket_of_every_worker_with_1001_and_exits_0(redis_server, test_db):
    server, pids = start(redis_server, test_db)
    answers = []

    def slow_request() -> None:
        with urllib.request.urlopen(server.http_url("/slow/?seconds=2"), timeout=15) as response:
            answers.append((response.status, response.read()))

    with contextlib.ExitStack() as stack:
        held = sockets_on_both(server, pids, f"{unique('stop')}?subscribe-broadcast", stack, at_least=2)
        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        for ws in [ws for sockets in held.values() for ws in sockets]:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1001
        client.join(15)
    assert server.process.wait(30) == 0, server.log()
    assert answers == [(200, b"slow and done")]
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_worker_at_its_cap_leaves_new_connections_to_one_with_room(redis_server, test_db):
    """Three websockets per worker: six open, three on each, whichever worker
    the kernel would have woken first; the seventh, with both full, gets 503."""
    server, pids = start(redis_server, test_db, overrides={"WS4REDIS_MAX_CONNECTIONS": 3})
    try:
        with contextlib.ExitStack() as stack:
            path = f"{unique('cap')}?subscribe-broadcast"
            sockets = [stack.enter_context(connect(server.ws_url(path), open_timeout=TIMEOUT)) for _ in range(6)]
            held = [holder(ws, server.port, pids) for ws in sockets]
            assert sorted(held.count(pid) for pid in pids) == [3, 3], held
            time.sleep(0.5)  # a look at the other worker (loadshare.RECHECK): both full, both accept
            with pytest.raises(InvalidStatus) as refused:
                connect(server.ws_url(path), open_timeout=TIMEOUT)
            assert refused.value.response.status_code == 503
        assert "near its cap: another worker takes new connections" in server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_connections_whose_handshake_is_still_to_come_count_against_the_cap(redis_server, test_db):
    """Six connections that have sent nothing yet land three on each worker
    (a worker counting only open websockets took them all), and each of
    them then opens as a websocket."""
    server, pids = start(redis_server, test_db, overrides={"WS4REDIS_MAX_CONNECTIONS": 3})
    try:
        raw = []
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            raw.append(sock)
            deadline = time.monotonic() + TIMEOUT
            while holder(sock, server.port, pids) is None:  # accepted by a worker
                assert time.monotonic() < deadline
                time.sleep(0.01)
        held = [holder(sock, server.port, pids) for sock in raw]
        assert sorted(held.count(pid) for pid in pids) == [3, 3], held
        for sock in raw:
            sock.sendall(
                f"GET /ws/{unique('later')}?subscribe-broadcast HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
        assert [sock.recv(12) for sock in raw] == [b"HTTP/1.1 101"] * 6
    finally:
        for sock in raw:
            sock.close()
        assert server.stop() == 0, server.log()


def probe(port: int, stop: threading.Event, outcomes: list) -> None:
    """An HTTP request every 5 ms, each on a new connection, until ``stop``."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            outcomes.append(answer.split(b"\r\n", 1)[0])
        except OSError as exc:
            outcomes.append(repr(exc).encode())
        time.sleep(0.005)


def test_sighup_restarts_the_workers_one_at_a_time_without_refusing_a_connection(redis_server, test_db):
    server, pids = start(redis_server, test_db)
    stop = threading.Event()
    outcomes: list[bytes] = []
    prober = threading.Thread(target=probe, args=(server.port, stop, outcomes))
    try:
        prober.start()
        time.sleep(0.3)
        server.process.send_signal(signal.SIGHUP)
        new = wait_for_workers(server, 2, other_than=pids)
        wait_for_line(server, "SIGHUP: every worker restarted")
        time.sleep(0.3)
        stop.set()
        prober.join(TIMEOUT)
        assert not new & pids
        assert not workers_of(server.process.pid) & pids
        failed = [outcome for outcome in outcomes if outcome != b"HTTP/1.1 200 OK"]
        assert len(outcomes) > 50, (len(outcomes), failed[:5])
        assert not failed, (len(outcomes), failed[:5])
    finally:
        stop.set()
        assert server.stop() == 0, server.log()


def test_a_unix_socket_outlives_a_worker_restart_and_goes_at_exit(redis_server, test_db, tmp_path):
    """Twisted's UNIX port removes its file when it closes, even an adopted
    one (the pin below): a worker's must not, or no worker would be reachable."""
    path = tmp_path / "ws.sock"
    server, pids = start(redis_server, test_db, f"--endpoint=unix:{path}")
    try:
        server.process.send_signal(signal.SIGHUP)
        wait_for_workers(server, 2, other_than=pids)
        wait_for_line(server, "SIGHUP: every worker restarted")
        assert path.exists()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(path))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
    finally:
        assert server.stop() == 0, server.log()
    assert not path.exists()


def test_twisteds_adopted_unix_port_removes_its_file_and_shuts_the_socket_down(tmp_path):
    """The assumptions sharedports._AdoptedUNIXPort is built on: Twisted's
    adopted UNIX port removes the socket file when it closes and, the file
    kept, still shuts the shared socket down (another holder no longer
    accepts); ours does neither."""
    script = f"""
import os, socket
from twisted.internet import reactor, tcp, unix
from twisted.internet.protocol import Factory
from twisted_ws4redis.server.sharedports import _AdoptedUNIXPort

class FileKept(unix.Port):
    connectionLost = tcp.Port.connectionLost

for kind in ("twisted", "file kept", "ours"):
    path = os.path.join({str(tmp_path)!r}, kind.replace(" ", "-") + ".sock")
    sock = socket.socket(socket.AF_UNIX); sock.bind(path); sock.listen(5); sock.setblocking(False)
    other_holder = os.dup(sock.fileno())
    if kind == "twisted":
        port = reactor.adoptStreamPort(sock.fileno(), socket.AF_UNIX, Factory())
    else:
        port = (FileKept if kind == "file kept" else _AdoptedUNIXPort)._fromListeningDescriptor(
            reactor, sock.fileno(), Factory())
        port.startListening()
    port.stopListening()
    for _ in range(3):
        reactor.iterate(0)
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(path)
        accepting = True
    except OSError:
        accepting = False
    print(f"{{kind}}: file {{os.path.exists(path)}}, accepting {{accepting}}")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert result.stdout.splitlines() == [
        "twisted: file False, accepting False",
        "file kept: file True, accepting False",
        "ours: file True, accepting True",
    ], result.stderr


def test_a_worker_that_cannot_start_ends_the_supervisor_with_its_reason(redis_server, test_db):
    server = TwistdServer(redis_server.url, test_db, args=("--workers=2", "--wsgi=no_such_module.application"))
    try:
        assert server.process.wait(30) == 1, server.log()
    finally:
        server.stop()
    log = server.log()
    assert "cannot import 'no_such_module.application'" in log
    assert "before any worker was ready: stopping" in log
    assert not workers_of(server.process.pid)


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_a_bad_workers_option_is_named(redis_server, test_db, value):
    with pytest.raises(RuntimeError) as failed:
        TwistdServer(redis_server.url, test_db, args=(f"--workers={value}",))
    assert f"--workers must be a number from 1, or 'auto', got {value!r}" in str(failed.value)


def test_auto_starts_one_worker_per_cpu_this_process_may_use(redis_server, test_db):
    server = TwistdServer(
        redis_server.url, test_db, args=("--workers=auto",), preexec_fn=lambda: os.sched_setaffinity(0, {0})
    )
    try:
        wait_for_workers(server, 1)
        time.sleep(0.5)
        assert len(workers_of(server.process.pid)) == 1
        assert "for 1 worker(s)" in server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_workers_share_a_tls_endpoint_hardened_as_one_process_is(redis_server, redis_client, test_db, tmp_path):
    key, cert = self_signed_certificate(tmp_path)
    port = free_port()
    server = TwistdServer(
        redis_server.url,
        test_db,
        args=("--workers=2",),
        port=port,
        endpoint=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    )
    try:
        pids = wait_for_workers(server, 2)
        context = ssl.create_default_context(cafile=str(cert))
        facility = unique("tls")
        with contextlib.ExitStack() as stack:
            held: dict[int, list] = {pid: [] for pid in pids}
            for _ in range(200):
                ws = stack.enter_context(
                    connect(
                        f"wss://localhost:{port}/ws/{facility}?subscribe-broadcast", ssl=context, open_timeout=TIMEOUT
                    )
                )
                held[holder(ws, port, pids)].append(ws)
                if all(held.values()):
                    break
            assert all(held.values()), {pid: len(sockets) for pid, sockets in held.items()}
            redis_client.publish(f"broadcast:{facility}", "sealed")
            everyone = [ws for sockets in held.values() for ws in sockets]
            assert [ws.recv(timeout=TIMEOUT) for ws in everyone] == ["sealed"] * len(everyone)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(cert))
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            old.wrap_socket(raw, server_hostname="localhost")
    finally:
        assert server.stop() == 0, server.log()


def test_workers_share_an_embedded_redis_that_goes_with_them(test_db):
    server = TwistdServer("embedded", test_db, args=("--workers=2",))
    try:
        pids = wait_for_workers(server, 2)
        warm_up(server)
        socket_path = Path(re.search(r"Embedded redis-server \S+ on (\S+)", server.log()).group(1))
        facility = unique("embedded")
        with contextlib.ExitStack() as stack:
            held = sockets_on_both(server, pids, f"{facility}?subscribe-broadcast", stack, at_least=1)
            everyone = [ws for sockets in held.values() for ws in sockets]
            answer = http_post_json(
                server, "/publish/", {"facility": facility, "broadcast": True, "message": "from one worker's view"}
            )
            assert answer["received"] == 2  # each worker's one subscriber connection
            assert [ws.recv(timeout=TIMEOUT) for ws in everyone] == ["from one worker's view"] * len(everyone)
    finally:
        assert server.stop() == 0, server.log()
    assert not socket_path.parent.exists()


def test_runws4redis_takes_workers_too(redis_server, test_db):
    port = free_port()
    command = runws4redis_command(
        f"--endpoint=tcp:{port}:interface=127.0.0.1", f"--redis={redis_server.url}", "--workers=2"
    )
    with open(new_log_path("runws4redis-"), "w+b") as log:
        process = subprocess.Popen(command, env=project_env(test_db), cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while len(workers_of(process.pid)) < 2 or b"is ready" not in Path(log.name).read_bytes():
                assert process.poll() is None, Path(log.name).read_text()
                assert time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.05)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as response:
                assert response.read() == b"testproject"
            pids = workers_of(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, Path(log.name).read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_with_a_logfile_the_supervisor_relays_the_workers_events(redis_server, test_db, tmp_path):
    """twistd --logfile: the workers send JSON events that the supervisor
    writes into its file, with the worker's number, a failure with its message."""
    log_file = tmp_path / "twistd.log"
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "twistd"),
        "--nodaemon",
        "--pidfile=",
        f"--logfile={log_file}",
        "ws4redis",
        "--settings=testproject.settings",
        f"--endpoint=tcp:{port}:interface=127.0.0.1",
        f"--redis={redis_server.url}",
        "--workers=2",
    ]
    process = subprocess.Popen(
        command, env=project_env(test_db), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while not log_file.exists() or log_file.read_text().count(") is ready") < 2:
            assert process.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as response:
            assert response.read() == b"testproject"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_file.read_text()
    log = log_file.read_text()
    assert re.search(r"\[worker [01] twisted_ws4redis\.server\.worker#info\] Worker [01] \(pid \d+\) is serving", log)
    assert re.search(r'\[worker [01] twisted\.python\.log#info\] "127\.0\.0\.1" .* "GET / HTTP/1\.1" 200', log), log
    assert "unpersistable" not in log


def scrape(port: int) -> list[tuple[str, dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def open_per_worker(port: int) -> dict[str, float]:
    return {
        labels["worker"]: value
        for name, labels, value in scrape(port)
        if name == "ws4redis_websockets_open" and labels["facility"] == "other"
    }


def test_the_supervisor_serves_every_workers_metrics_labelled_by_worker(redis_server, test_db):
    """--metrics with --workers: the supervisor asks each worker at every
    scrape (over a private UNIX socket) and labels what it says with its
    slot; through a SIGHUP roll too; the sockets' directory goes at exit."""
    sockets_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "ws4redis-metrics-*")))
    metrics_port = free_port()
    server, pids = start(redis_server, test_db, f"--metrics=tcp:{metrics_port}:interface=127.0.0.1")
    try:
        facility = unique("metered")
        with contextlib.ExitStack() as stack:
            held = sockets_on_both(server, pids, f"{facility}?subscribe-broadcast", stack)
            counts = open_per_worker(metrics_port)
            assert set(counts) == {"0", "1"}
            assert sorted(counts.values()) == sorted(len(sockets) for sockets in held.values())
            ready = [value for name, _, value in scrape(metrics_port) if name == "ws4redis_workers_ready"]
            assert ready == [2]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=TIMEOUT) as response:
                assert response.status == 200
                assert b'"workers_healthy":2' in response.read()
        server.process.send_signal(signal.SIGHUP)
        wait_for_workers(server, 2, other_than=pids)
        wait_for_line(server, "SIGHUP: every worker restarted")
        assert open_per_worker(metrics_port) == {"0": 0, "1": 0}  # the new workers' own counts
    finally:
        assert server.stop() == 0, server.log()
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "ws4redis-metrics-*"))) == sockets_before


def test_a_hung_worker_delays_neither_the_supervisors_health_nor_its_scrapes_for_ever(redis_server, test_db):
    """One worker stopped (SIGSTOP): /health still answers 200 (the other is
    healthy) within the 1 s it gives each worker, and scrapes, ten at once,
    answer after the 5 s a worker has, with one worker ready."""
    metrics_port = free_port()
    server, pids = start(redis_server, test_db, f"--metrics=tcp:{metrics_port}:interface=127.0.0.1")
    hung = min(pids)
    try:
        os.kill(hung, signal.SIGSTOP)
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=TIMEOUT) as response:
            assert response.status == 200
            assert b'"workers_healthy":1' in response.read()
        assert time.monotonic() - started < 2, "the health check waited for the hung worker past 1 s"
        with ThreadPoolExecutor(10) as pool:
            started = time.monotonic()
            rounds = list(pool.map(lambda _: scrape(metrics_port), range(10)))
        assert time.monotonic() - started < 9, "the scrapes waited for the hung worker past its 5 s"
        for samples in rounds:
            assert [value for name, _, value in samples if name == "ws4redis_workers_ready"] == [1]
    finally:
        os.kill(hung, signal.SIGCONT)
        assert server.stop() == 0, server.log()
