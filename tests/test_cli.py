"""``twistd ws4redis`` and ``manage.py runws4redis`` as a user runs them:
endpoints (tcp, unix, ssl, several), --redis embedded, --no-wsgi, --static,
shutdown, and clear failures on bad options."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect, unix_connect

from conftest import (
    BIN,
    PROJECT,
    TwistdServer,
    free_port,
    http_post_json,
    project_env,
    runws4redis_command,
    self_signed_certificate,
    unique,
    wait_for_port,
    wait_subscribed,
)

TIMEOUT = 5


def http_get(port: int, path: str = "/", **kwargs) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT, **kwargs)
    connection.request("GET", path)
    response = connection.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return result


def run_twistd(args: list[str], env: dict, timeout: float = 20) -> subprocess.CompletedProcess:
    """A twistd ws4redis that is expected to give up at start."""
    command = [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "ws4redis", *args]
    return subprocess.run(command, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout, check=False)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the server exited"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# -- endpoints -------------------------------------------------------------------------


def test_unix_endpoint_serves_django_and_websockets(tmp_path, redis_server, redis_client, test_db):
    path = tmp_path / "ws.sock"
    server = TwistdServer(redis_server.url, test_db, endpoint=f"unix:{path}")
    try:
        wait_for_file(path, server.process)

        class UnixConnection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))

        connection = UnixConnection("localhost", timeout=TIMEOUT)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"testproject")

        facility = unique("unix")
        with unix_connect(str(path), f"ws://localhost/ws/{facility}?subscribe-broadcast") as ws:
            wait_subscribed(redis_client, f"broadcast:{facility}")
            redis_client.publish(f"broadcast:{facility}", "over a unix socket")
            assert ws.recv(timeout=TIMEOUT) == "over a unix socket"
    finally:
        assert server.stop() == 0


def test_ssl_endpoint_serves_https_and_wss(tmp_path, redis_server, redis_client, test_db):
    key, cert = self_signed_certificate(tmp_path)
    port = free_port()
    server = TwistdServer(
        redis_server.url, test_db, endpoint=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    try:
        wait_for_port(port, process=server.process)
        context = ssl.create_default_context(cafile=str(cert))
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=TIMEOUT)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"testproject")

        facility = unique("tls")
        with connect(f"wss://localhost:{port}/ws/{facility}?subscribe-broadcast", ssl=context) as ws:
            wait_subscribed(redis_client, f"broadcast:{facility}")
            redis_client.publish(f"broadcast:{facility}", "encrypted")
            assert ws.recv(timeout=TIMEOUT) == "encrypted"
    finally:
        server.stop()


def test_several_endpoints_serve_the_same_site(redis_server, redis_client, test_db):
    second = free_port()
    server = TwistdServer(redis_server.url, test_db, args=(f"--endpoint=tcp:{second}:interface=127.0.0.1",))
    try:
        wait_for_port(second, process=server.process)
        facility = unique("two")
        with (
            connect(server.ws_url(f"{facility}?subscribe-broadcast")) as first,
            connect(f"ws://127.0.0.1:{second}/ws/{facility}?subscribe-broadcast") as other,
        ):
            wait_subscribed(redis_client, f"broadcast:{facility}")
            redis_client.publish(f"broadcast:{facility}", "to both ports")
            assert first.recv(timeout=TIMEOUT) == other.recv(timeout=TIMEOUT) == "to both ports"
    finally:
        server.stop()


# -- what is served ----------------------------------------------------------------------


def test_no_wsgi_serves_websockets_only(twistd_servers, redis_client):
    server = twistd_servers(args=("--no-wsgi",))
    status, _, _ = http_get(server.port)
    assert status == 404
    facility = unique("nowsgi")
    with connect(server.ws_url(f"{facility}?subscribe-broadcast")) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        redis_client.publish(f"broadcast:{facility}", "websockets still work")
        assert ws.recv(timeout=TIMEOUT) == "websockets still work"


def test_static_serves_the_static_files_with_their_types(twistd_servers):
    server = twistd_servers(
        {
            "INSTALLED_APPS": [
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
                "django.contrib.staticfiles",
                "twisted_ws4redis",
                "testproject",
            ]
        },
        args=("--static",),
    )
    status, headers, body = http_get(server.port, "/static/twisted_ws4redis/js/ws4redis.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert b"function WS4Redis" in body
    status, headers, _ = http_get(server.port, "/static/twisted_ws4redis/js/ws4redis.mjs")
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/javascript")
    assert http_get(server.port, "/static/nothing-here.css")[0] == 404
    assert http_get(server.port, "/")[2] == b"testproject"


def test_static_without_the_flag_is_left_to_django(server):
    assert http_get(server.port, "/static/twisted_ws4redis/js/ws4redis.js")[0] == 404


# -- embedded Redis and shutdown ------------------------------------------------------------


def test_embedded_redis_serves_the_server_and_its_publisher_and_goes_with_it(test_db):
    server = TwistdServer("embedded", test_db)
    try:
        match = re.search(r"Embedded redis-server \S+ on (\S+)", server.log())
        deadline = time.monotonic() + TIMEOUT
        while match is None and time.monotonic() < deadline:
            time.sleep(0.05)
            match = re.search(r"Embedded redis-server \S+ on (\S+)", server.log())
        assert match, server.log()
        socket_path = Path(match.group(1))
        (redis_pid,) = children(server.process.pid)
        assert "redis-server" in Path(f"/proc/{redis_pid}/cmdline").read_text()

        facility = unique("embedded")
        with connect(server.ws_url(f"{facility}?subscribe-broadcast")) as ws:
            deadline = time.monotonic() + TIMEOUT
            while (
                http_post_json(
                    server, "/publish/", {"facility": facility, "message": "from the view", "broadcast": True}
                )["received"]
                < 1
            ):
                assert time.monotonic() < deadline, "the socket's channel was never subscribed"
                time.sleep(0.05)
            assert ws.recv(timeout=TIMEOUT) == "from the view"
    finally:
        code = server.stop()
    assert code == 0
    assert not Path(f"/proc/{redis_pid}").exists() or "zombie" in Path(f"/proc/{redis_pid}/status").read_text()
    assert not socket_path.parent.exists()


def test_sigterm_closes_websockets_with_1001_and_exits_0(redis_server, test_db):
    server = TwistdServer(redis_server.url, test_db)
    with connect(server.ws_url("bye?subscribe-broadcast")) as ws:
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1001
    assert server.process.wait(TIMEOUT) == 0


# -- failures at start-up --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "overrides", "says"),
    [
        (["--threads=many"], {}, "--threads must be a whole number"),
        (["--threads=0"], {}, "--threads must be at least 1"),
        (["--redis=ftp://x"], {}, "ftp"),
        (["--endpoint=nonsense:1"], {}, "--endpoint 'nonsense:1' is not a valid endpoint"),
        (["--wsgi=testproject.nowhere.application"], {}, "--wsgi"),
        ([], {"WS4REDIS_EXPIRE": "soon"}, "WS4REDIS_EXPIRE"),
        ([], {"WEBSOCKET_URL": "ws"}, "WEBSOCKET_URL"),
        ([], {"WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.no_such_hook"}, "WS4REDIS_ALLOWED_CHANNELS"),
        (
            ["--settings=mysite.settings"],
            {},
            "No module named 'mysite' (run twistd from the directory that holds manage.py and the 'mysite' package",
        ),
    ],
)
def test_a_bad_option_or_setting_stops_the_start_with_a_message(test_db, args, overrides, says):
    result = run_twistd(["--settings=testproject.settings", *args], project_env(test_db, overrides))
    assert result.returncode != 0
    assert says in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_without_settings_twistd_says_what_to_give(test_db):
    env = project_env(test_db)
    del env["DJANGO_SETTINGS_MODULE"]
    result = run_twistd([], env)
    assert result.returncode != 0
    assert "--settings" in result.stdout + result.stderr


@pytest.mark.parametrize("workers", [(), ("--workers=2",)], ids=["one process", "workers"])
def test_a_port_in_use_stops_the_start(test_db, redis_server, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_twistd(
            [
                "--settings=testproject.settings",
                f"--endpoint=tcp:{port}:interface=127.0.0.1",
                f"--redis={redis_server.url}",
                *workers,
            ],
            project_env(test_db),
        )
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr


# -- manage.py runws4redis ---------------------------------------------------------------------


def test_runws4redis_serves_the_same_site(redis_server, redis_client, test_db):
    port = free_port()
    command = runws4redis_command(f"--endpoint=tcp:{port}:interface=127.0.0.1", f"--redis={redis_server.url}")
    process = subprocess.Popen(
        command, env=project_env(test_db), cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, process=process)
        assert http_get(port)[::2] == (200, b"testproject")
        facility = unique("runws4redis")
        with connect(f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-broadcast") as ws:
            wait_subscribed(redis_client, f"broadcast:{facility}")
            redis_client.publish(f"broadcast:{facility}", "from manage.py")
            assert ws.recv(timeout=TIMEOUT) == "from manage.py"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
