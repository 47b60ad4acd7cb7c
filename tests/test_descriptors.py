"""File descriptors: a client opening more sockets than the process may hold
costs only itself. The server runs under ``ulimit -n 1024`` (soft = hard, so
it cannot raise it), raises the soft limit when it can, answers handshakes past
WS4REDIS_MAX_CONNECTIONS with a complete HTTP 503, closes connections past the
descriptors it keeps for itself, and goes on serving pages, Redis and the
websockets it has."""

from __future__ import annotations

import http.client
import re
import resource
import selectors
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROJECT, TwistdServer, free_port, project_env, twistd_command, unique, wait_subscribed
from test_door import handshake, raw_request

TIMEOUT = 10
LIMIT = 1024
RESERVE = 128  # WS4REDIS_RESERVED_DESCRIPTORS' default
CLIENT_CAP = LIMIT - RESERVE  # 896 client connections
WEBSOCKET_CAP = CLIENT_CAP * 7 // 8  # 784 websockets: WS4REDIS_MAX_CONNECTIONS' default under this limit


def open_files_limit(soft: int, hard: int):
    """A preexec_fn: the server starts with these limits (as under ``ulimit -n``)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(autouse=True)
def room_for_the_client():
    """The test itself opens more than 1,024 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def read_head(sock: socket.socket) -> bytes:
    """The response head, up to the blank line; b"" if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def read_to_the_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def status_of(head: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    return int(match.group(1)) if match else None


def read_text_frame(sock: socket.socket) -> bytes:
    """One short unmasked text frame from the server."""
    header = sock.recv(2, socket.MSG_WAITALL)
    assert header[:1] == b"\x81", header
    assert header[1] < 126, header
    return sock.recv(header[1], socket.MSG_WAITALL)


def connect_paced(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, in groups that fit Twisted's listen queue (50):
    a full queue drops SYNs, and the client would wait a second to retry."""
    sockets = []
    while len(sockets) < count:
        sockets += [
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(min(25, count - len(sockets)))
        ]
        time.sleep(0.02)
    return sockets


def closed_by_the_server(sockets: list[socket.socket], expected: int) -> dict[int, int | None]:
    """The sockets the server answers or closes within a second of the last one
    (or once ``expected`` of them have been): index -> HTTP status (None: no response)."""
    closed: dict[int, int | None] = {}
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(sockets):
            selector.register(sock, selectors.EVENT_READ, index)
        while len(closed) < expected and (events := selector.select(timeout=1.0)):
            for key, _ in events:
                try:
                    answer = key.fileobj.recv(4096)
                except ConnectionResetError:
                    answer = b""
                closed[key.data] = status_of(answer)
                selector.unregister(key.fileobj)
        # Anything more within a second would be one too many.
        for key, _ in selector.select(timeout=1.0):
            closed[key.data] = status_of(key.fileobj.recv(4096))
    return closed


def timed_get(port: int) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert body == b"testproject" or response.status != 200
    return response.status, time.monotonic() - started


def test_a_flood_of_websockets_past_the_cap_gets_503_and_costs_no_one_else(redis_server, redis_client, test_db):
    server = TwistdServer(redis_server.url, test_db, preexec_fn=open_files_limit(LIMIT, LIMIT))
    sockets: list[socket.socket] = []
    try:
        log = server.log()
        assert f"Open files limit (RLIMIT_NOFILE): soft {LIMIT} -> {LIMIT}, hard {LIMIT}" in log, log
        assert (
            f"At most {CLIENT_CAP} client connections ({LIMIT} descriptors, {RESERVE} reserved), "
            f"{WEBSOCKET_CAP} of them websockets" in log
        ), log

        facility = unique("flood")
        request = handshake(f"/ws/{facility}?subscribe-broadcast")
        statuses: dict[int | None, int] = {}
        refusal = b""
        # Batches of 50, as a browser's reconnecting tabs would come: each
        # batch's refused sockets are closed before the next one connects.
        for _ in range(1100 // 50):
            batch = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) for _ in range(50)]
            for sock in batch:
                sock.sendall(request)
            for sock in batch:
                head = read_head(sock)
                status = status_of(head)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 101:
                    sockets.append(sock)
                else:
                    refusal = head + read_to_the_end(sock)
                    sock.close()
        assert statuses == {101: WEBSOCKET_CAP, 503: 1100 - WEBSOCKET_CAP}, statuses
        head, _, body = refusal.partition(b"\r\n\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert headers[b"retry-after"] == b"10", headers
        assert headers[b"connection"] == b"close", headers
        # Complete: its body ends where the server closes (or at its Content-Length).
        assert int(headers.get(b"content-length", len(body))) == len(body), refusal
        assert b"WS4REDIS_MAX_CONNECTIONS" in body, refusal
        assert open_descriptors(server.process.pid) < LIMIT

        # Pages are still served, while every descriptor for websockets is taken.
        status, seconds = timed_get(server.port)
        assert status == 200, (status, seconds)
        assert seconds < 2.0, (status, seconds)

        # Every websocket that was let in receives a broadcast.
        wait_subscribed(redis_client, f"broadcast:{facility}")
        redis_client.publish(f"broadcast:{facility}", "to all 784")
        assert {read_text_frame(sock) for sock in sockets} == {b"to all 784"}

        # Once they are gone, their places are free again: the counts came down.
        for sock in sockets:
            sock.close()
        sockets.clear()
        deadline = time.monotonic() + TIMEOUT
        while "Websockets below their cap again" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        status, _, _ = raw_request(server.port, handshake(f"/ws/{facility}", drop=("Upgrade",)))
        assert status == 426  # past the cap check, to the next one
        assert server.process.poll() is None
        assert "EMFILE" not in server.log()
        assert "Traceback" not in server.log()
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_connections_past_the_reserve_are_closed_at_once_and_redis_and_pages_come_back(
    redis_server, redis_client, test_db
):
    """Idle connections (no request at all) hold descriptors too: past
    limit - WS4REDIS_RESERVED_DESCRIPTORS they are closed at once, so accept()
    never meets EMFILE, and Redis and Django keep the reserve."""
    server = TwistdServer(redis_server.url, test_db, preexec_fn=open_files_limit(LIMIT, LIMIT))
    idle: list[socket.socket] = []
    try:
        # Websockets that come and go leave their places behind, counted once.
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as gone:
                gone.sendall(handshake(f"/ws/{unique('gone')}?subscribe-broadcast"))
                assert status_of(read_head(gone)) == 101
        facility = unique("reserve")
        ws = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        ws.sendall(handshake(f"/ws/{facility}?subscribe-broadcast"))
        assert status_of(read_head(ws)) == 101
        wait_subscribed(redis_client, f"broadcast:{facility}")

        idle = connect_paced(server.port, 1100)
        closed = closed_by_the_server(idle, expected=1100 - (CLIENT_CAP - 1))
        # The websocket holds one of the CLIENT_CAP places.
        assert len(closed) == 1100 - (CLIENT_CAP - 1), len(closed)
        assert set(closed.values()) <= {503, None}, closed  # 503, or a reset that dropped it
        assert open_descriptors(server.process.pid) < LIMIT

        # Redis (its reconnects, its subscriber) keeps working on the reserve.
        redis_client.publish(f"broadcast:{facility}", "still subscribed")
        assert read_text_frame(ws) == b"still subscribed"

        for sock in idle:
            sock.close()
        idle.clear()
        deadline = time.monotonic() + TIMEOUT
        while (status := timed_get(server.port)[0]) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert server.process.poll() is None
        assert "EMFILE" not in server.log()
        assert "Traceback" not in server.log()
        # One warning for the episode, not a line per refused connection.
        assert server.log().count("Client connections at their cap") == 1
        assert "HTTP 503 to" not in server.log()
        ws.close()
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_the_soft_limit_is_raised_to_the_hard_one(redis_server, test_db):
    server = TwistdServer(
        redis_server.url, test_db, preexec_fn=open_files_limit(LIMIT, 4096), overrides={"WS4REDIS_MAX_CONNECTIONS": 100}
    )
    try:
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
        assert f"soft {LIMIT} -> 4096, hard 4096" in server.log()
        assert (
            "At most 3968 client connections (4096 descriptors, 128 reserved), 100 of them websockets" in server.log()
        )
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"WS4REDIS_RESERVED_DESCRIPTORS": LIMIT}, "WS4REDIS_RESERVED_DESCRIPTORS (1024) leaves no descriptor"),
        ({"WS4REDIS_RESERVED_DESCRIPTORS": 0}, "WS4REDIS_RESERVED_DESCRIPTORS must be a positive integer"),
        ({"WS4REDIS_MAX_CONNECTIONS": "many"}, "WS4REDIS_MAX_CONNECTIONS must be a positive integer"),
    ],
)
def test_a_reserve_or_cap_that_cannot_work_stops_the_start(test_db, redis_server, overrides, says):
    command = twistd_command(f"--endpoint=tcp:{free_port()}:interface=127.0.0.1", f"--redis={redis_server.url}")
    result = subprocess.run(
        command,
        env=project_env(test_db, overrides),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=open_files_limit(LIMIT, LIMIT),
        check=False,
    )
    assert result.returncode != 0
    assert says in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_the_systemd_unit_sets_the_open_files_limit():
    """Distributions' defaults differ (1024, or 1024 soft and 524288 hard): the unit says it."""
    unit = (Path(__file__).resolve().parent.parent / "docs" / "deploy" / "ws4redis@.service").read_text()
    (value,) = re.findall(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    assert int(value) - RESERVE >= 50_000  # the caps the README gives for the unit
