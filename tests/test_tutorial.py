"""docs/tutorial.rst done as a reader would: a new project from ``django-admin
startproject``, the page's files put where their captions say, the page's
commands, a real ``twistd ws4redis``, a real Redis, a real websocket client
and a real headless Chromium."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from websockets.sync.client import connect

from conftest import BIN, ROOT, RedisServer, free_port, wait_for_port, wait_subscribed
from test_browser import open_browser, wait_until  # noqa: F401  (open_browser is a fixture)

DOCS = ROOT / "docs"
PAGE = DOCS / "tutorial.rst"
HEARTBEAT = "--heartbeat--"
#: A ``.. literalinclude::`` with its options, up to the next blank line.
INCLUDE = re.compile(r"^\.\. literalinclude:: (?P<source>\S+)\n(?P<options>(?:   :.*\n)+)", re.MULTILINE)


def included_files(page: str) -> list[tuple[Path, str, str]]:
    """(source, destination, text) of each included file: the destination is its
    caption, "(at the end)" meaning append; ``:lines: N-`` is honoured."""
    files = []
    for match in INCLUDE.finditer(page):
        options = dict(re.findall(r"   :(\w+): (.*)", match["options"]))
        source = DOCS / match["source"]
        lines = source.read_text().splitlines(keepends=True)
        if "lines" in options:
            lines = lines[int(options["lines"].rstrip("-")) - 1 :]
        files.append((source, options["caption"], "".join(lines)))
    return files


def next_message(websocket) -> str:
    while (message := websocket.recv(5)) == HEARTBEAT:
        pass
    return message


def read_line(process: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"nothing printed after {timeout}s"
    return process.stdout.readline()


def run(command: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def tutorial_redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def tutorial_project(tmp_path, tutorial_redis) -> tuple[Path, dict]:
    """Steps 1 to 5 of the page: the project, its files, its tables."""
    page = PAGE.read_text()
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for command in ("django-admin startproject mysite", "python manage.py startapp chat", "python manage.py migrate"):
        assert command in page, f"the page no longer says {command!r}"
    run([str(BIN / "django-admin"), "startproject", "mysite"], tmp_path, env)
    project = tmp_path / "mysite"
    run([sys.executable, "manage.py", "startapp", "chat"], project, env)
    for folder in ("chat/management", "chat/management/commands"):  # "an empty __init__.py in ..."
        (project / folder).mkdir(parents=True, exist_ok=True)
        (project / folder / "__init__.py").touch()
        assert f"``{folder}/``" in page
    for _, caption, text in included_files(page):
        destination = project / caption.removesuffix(" (at the end)")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "a" if caption.endswith("(at the end)") else "w") as file:
            file.write(text)
    # The one line the page does not show: this test's private Redis instead of localhost:6379.
    with open(project / "mysite" / "settings.py", "a") as file:
        file.write(f'\nWS4REDIS_CONNECTION = {{"host": "127.0.0.1", "port": {tutorial_redis.port}, "db": 0}}\n')
    assert "System check identified no issues" in run([sys.executable, "manage.py", "check"], project, env)
    run([sys.executable, "manage.py", "migrate", "-v0"], project, env)
    return project, env


def test_every_file_of_the_tutorial_folder_is_on_the_page():
    shown = {source.name for source, _, _ in included_files(PAGE.read_text())}
    assert shown == {path.name for path in (DOCS / "tutorial").iterdir() if path.is_file()}


def test_the_tutorial_chat_works(tutorial_project, tutorial_redis, open_browser):  # noqa: F811
    project, env = tutorial_project
    page = PAGE.read_text()
    command = (
        "twistd --nodaemon --pidfile= ws4redis --settings=mysite.settings \\\n"
        "        --endpoint=tcp:8000:interface=127.0.0.1 --static"
    )
    assert command in page, "the page's twistd command changed: change it here too"
    port = free_port()
    twistd = [str(BIN / "twistd"), *command.replace("\\\n", "").replace(":8000:", f":{port}:").split()[1:]]
    with open(project / "twistd.log", "wb") as log:
        server = subprocess.Popen(twistd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=server)
        redis = tutorial_redis.client()

        # Step 6: the listener, subscribed before Django publishes (step 5).
        (project / "listen.py").write_text((project / "listen.py").read_text().replace(":8000/", f":{port}/"))
        listener = subprocess.Popen(
            [sys.executable, "listen.py"], cwd=project, env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert read_line(listener) == "Listening.\n"
            wait_subscribed(redis, "broadcast:chat")
            assert 'python manage.py announce "Server restarts in 5 minutes"' in page
            said = run([sys.executable, "manage.py", "announce", "Server restarts in 5 minutes"], project, env)
            assert said == "Sent to 1 server process(es).\n"
            assert read_line(listener) == "Server restarts in 5 minutes\n"
        finally:
            listener.terminate()
            listener.wait(5)

        # Step 4: the page in a browser, and another socket in the same chat.
        browser = open_browser()
        browser.get(f"http://127.0.0.1:{port}/")
        state = browser.find_element(By.ID, "state")
        wait_until(lambda: state.text == "connected", message="the page's websocket to open")
        with connect(f"ws://127.0.0.1:{port}/ws/chat?subscribe-broadcast&publish-broadcast") as other:
            other.send("Hello from another socket")
            browser.find_element(By.ID, "text").send_keys("Hello <b>from</b> the browser\n")
            assert next_message(other) == "Hello <b>from</b> the browser"  # not its own: no echo flag

            def shown() -> list[str]:
                return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#messages li")]

            wait_until(lambda: len(shown()) == 2, message="two messages on the page")
            assert shown() == ["Hello from another socket", "Hello <b>from</b> the browser"]
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        browser.save_screenshot(str(artifacts / "tutorial-chat.png"))
    finally:
        server.terminate()
        server.wait(10)
    assert server.returncode == 0, (project / "twistd.log").read_text()
