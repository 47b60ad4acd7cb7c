"""``manage.py runserver`` as a Django developer runs it: our server behind
Django's command (banner, checks, migrations warning, static files, the
autoreloader), a Redis that is not there yet, and the system check on the
order of INSTALLED_APPS."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import PROJECT, free_port, new_log_path, project_env, unique, wait_for_port, wait_subscribed
from twisted_ws4redis.server.embedded import EmbeddedRedis

TIMEOUT = 5.0
APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "twisted_ws4redis",
    "django.contrib.staticfiles",
    "testproject",
]


def copy_project(directory: Path) -> Path:
    """A copy of the test project that a test may edit."""
    return Path(shutil.copytree(PROJECT, directory / "project", ignore=shutil.ignore_patterns("__pycache__")))


def runserver_env(project: Path, redis_port: int, db_path: str, overrides: dict | None = None) -> dict:
    """The test project's settings with DEBUG on and staticfiles installed,
    Redis on ``redis_port``, the project copy first on the path."""
    env = project_env(
        db_path,
        {
            "DEBUG": True,
            "INSTALLED_APPS": APPS,
            "WS4REDIS_CONNECTION": {"host": "127.0.0.1", "port": redis_port, "db": 0},
            **(overrides or {}),
        },
    )
    env["PYTHONPATH"] = os.pathsep.join([str(project), env["PYTHONPATH"]])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Runserver:
    """``manage.py runserver 127.0.0.1:PORT`` in its own process group (the
    autoreloader's child with it), its output in a file."""

    def __init__(self, project: Path, env: dict, *args: str):
        self.port = free_port()
        self.log_path = new_log_path("runserver-")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", *args],
                cwd=project,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=30, process=self.process)
        except (RuntimeError, TimeoutError):  # what wait_for_port raises
            self.stop()
            raise RuntimeError(f"runserver did not start:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{self.log()}"
            time.sleep(0.1)
        return self.log()

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=TIMEOUT) as response:
            return response.status, response.read()

    def ws(self, path: str):
        return connect(f"ws://127.0.0.1:{self.port}/ws/{path}", open_timeout=TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # the reloader's child, should it outlive its parent
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


def assert_websockets_work(server: Runserver, client: redis.Redis) -> None:
    """A handshake gets 101 and a message published on Redis arrives."""
    facility = unique("runserver")
    with server.ws(f"{facility}?subscribe-broadcast") as ws:
        assert ws.response.status_code == 101
        wait_subscribed(client, f"broadcast:{facility}")
        client.publish(f"broadcast:{facility}", "from Redis")
        assert ws.recv(timeout=TIMEOUT) == "from Redis"


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory, redis_server):
    """runserver with the autoreloader, on a project copy and a database that
    has not been migrated (for the migrations warning)."""
    directory = tmp_path_factory.mktemp("runserver")
    project = copy_project(directory)
    server = Runserver(project, runserver_env(project, redis_server.port, str(directory / "empty.sqlite3")))
    server.project = project
    yield server
    server.stop()


def test_banner_checks_and_migrations_warning(dev_server):
    log = dev_server.wait_for_log("Websockets under /ws/ on the same port.")
    assert "Watching for file changes with StatReloader" in log
    assert "System check identified no issues" in log
    assert "You have 15 unapplied migration(s)" in log
    # Django's own banner ("Starting WSGI development server" from Django 6.1 on).
    assert re.search(rf"Starting (WSGI )?development server at http://127\.0\.0\.1:{dev_server.port}/", log), log


def test_a_websocket_receives_what_is_published_on_redis(dev_server, redis_client):
    assert_websockets_work(dev_server, redis_client)


def test_pages_and_static_files_are_served(dev_server):
    assert dev_server.get("/") == (200, b"testproject")
    status, body = dev_server.get("/static/testproject/hello.txt")
    assert status == 200
    assert body.startswith(b"hello from the test project")
    # staticfiles' handler, as Django's runserver: the app's own static files too.
    assert dev_server.get("/static/twisted_ws4redis/js/ws4redis.js")[0] == 200


def test_a_view_added_to_urls_py_is_served_within_15_seconds(dev_server, redis_client):
    # The StatReloader sees a change only in a file it has seen before: urls.py
    # is imported by the first request, and seen at the reloader's next tick.
    assert dev_server.get("/") == (200, b"testproject")
    time.sleep(2.5)  # two ticks (one a second)
    urls = dev_server.project / "testproject" / "urls.py"
    urls.write_text(
        urls.read_text().replace(
            "urlpatterns = [",
            "from django.http import HttpResponse\n\n"
            "urlpatterns = [\n    path('added/', lambda request: HttpResponse('added after start')),",
        )
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            if dev_server.get("/added/") == (200, b"added after start"):
                break
        except OSError:  # 404 from the old child, or no one listening between two children
            pass
        assert time.monotonic() < deadline, f"the new view is not served after 15 s:\n{dev_server.log()}"
        time.sleep(0.2)
    assert "urls.py changed, reloading." in dev_server.log()
    # The new child bound the same port and serves websockets too.
    assert_websockets_work(dev_server, redis_client)


def test_noreload_nothreading_and_nostatic(redis_server, redis_client, test_db):
    server = Runserver(
        PROJECT, runserver_env(PROJECT, redis_server.port, test_db), "--noreload", "--nothreading", "--nostatic"
    )
    try:
        assert server.get("/") == (200, b"testproject")
        with pytest.raises(urllib.error.HTTPError) as missing:
            server.get("/static/testproject/hello.txt")
        assert missing.value.code == 404
        assert_websockets_work(server, redis_client)
        # One Django thread: two slow requests are answered one after the other.
        started = time.monotonic()
        with ThreadPoolExecutor(2) as clients:
            answers = list(clients.map(server.get, ["/slow/?seconds=1"] * 2))
        assert answers == [(200, b"slow and done")] * 2
        assert time.monotonic() - started >= 1.9
        # Without the reloader the reactor runs in the main thread with its
        # signal handlers: Ctrl-C is a graceful stop.
        assert server.stop(signal.SIGINT) == 0, server.log()
        log = server.log()
        assert "Watching for file changes" not in log
        assert "Main loop terminated." in log
    finally:
        server.stop()


def test_ipv6_address_insecure_and_a_port_in_use(tmp_path, redis_server, test_db):
    """[::1]:PORT, with DEBUG off and --insecure (static files all the same)."""
    env = runserver_env(PROJECT, redis_server.port, test_db, {"DEBUG": False})
    port = free_port()
    command = [sys.executable, "manage.py", "runserver", f"[::1]:{port}", "--noreload", "--insecure"]
    with open(tmp_path / "v6.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://[::1]:{port}/", timeout=TIMEOUT) as response:
                    assert response.read() == b"testproject"
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "v6.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "v6.log").read_text()
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://[::1]:{port}/static/testproject/hello.txt", timeout=TIMEOUT) as response:
            assert response.read().startswith(b"hello from the test project")
        # A second server on the same port: Django's own one-line error.
        taken = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert taken.returncode == 1
        assert "Error: That port is already in use." in taken.stderr
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_redis_unreachable_at_start(test_db):
    redis_port = free_port()
    server = Runserver(PROJECT, runserver_env(PROJECT, redis_port, test_db))
    try:
        log = server.wait_for_log("is unreachable: ")
        assert f"Redis at redis://127.0.0.1:{redis_port}/0 is unreachable: " in log
        assert "Connection refused" in log.split("is unreachable: ", 1)[1].splitlines()[0]
        assert "#warn]" in log.split("is unreachable: ", 1)[0].splitlines()[-1]
        with pytest.raises(InvalidStatus) as refused:
            server.ws(f"{unique('down')}?subscribe-broadcast")
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "10"
        assert server.get("/") == (200, b"testproject")

        redis_later = EmbeddedRedis(port=redis_port)
        redis_later.start()
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    assert_websockets_work(server, redis.Redis(host="127.0.0.1", port=redis_port))
                    break
                except InvalidStatus as refusal:
                    assert refusal.response.status_code == 503  # noqa: PT017 (a retry loop: only a 503 is retried)
                    assert time.monotonic() < deadline, f"still refused 15 s after Redis started:\n{server.log()}"
                    time.sleep(0.2)
            log = server.wait_for_log(f"Redis at redis://127.0.0.1:{redis_port}/0 is reachable again")
            assert log.count("is unreachable: ") == 1, "one warning per outage"
        finally:
            redis_later.stop()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("apps", "warned"),
    [
        (APPS, False),
        (["django.contrib.staticfiles", *[app for app in APPS if app != "django.contrib.staticfiles"]], True),
    ],
)
def test_the_check_names_staticfiles_listed_before_us(test_db, apps, warned):
    env = runserver_env(PROJECT, free_port(), test_db, {"INSTALLED_APPS": apps})
    checked = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr  # a warning, not an error
    output = checked.stdout + checked.stderr
    assert ("twisted_ws4redis.W010" in output) is warned, output
    if warned:
        assert "Move 'twisted_ws4redis' above 'django.contrib.staticfiles' in INSTALLED_APPS" in output
