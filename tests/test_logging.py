"""The server's log also goes to the standard library's logging (Django's
LOGGING): logger names, levels, the event's fields as ``extra``, tracebacks;
twistd's own log keeps its lines, and a refusal is one line in it, not three."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
from websockets.sync.client import connect

from conftest import (
    PROJECT,
    RedisServer,
    TwistdServer,
    free_port,
    login,
    open_ws,
    project_env,
    runws4redis_command,
    session_key,
    unique,
    wait_for_port,
    wait_subscribed,
)
from test_door import handshake, raw_request, refused_status
from twisted_ws4redis.audience import session_digest

TIMEOUT = 5
PUBLISH_RATE = 5
HOOKS = {
    "WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.breakable_allowed_channels",
    "WS4REDIS_MAX_PUBLISH_RATE": PUBLISH_RATE,
}


def logging_to(path) -> dict:
    """A Django LOGGING that writes twisted_ws4redis' records to ``path``, one
    JSON object each, and to ``path`` + ".txt" with the README's format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "testproject.logjson.JsonLines"},
            "text": {"format": "%(levelname)s %(name)s %(message)s %(ws4redis)s"},
        },
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "json"},
            "text": {"class": "logging.FileHandler", "filename": f"{path}.txt", "formatter": "text"},
        },
        "loggers": {"twisted_ws4redis": {"handlers": ["file", "text"], "level": "INFO", "propagate": False}},
    }


class Logged:
    """A server with its own Redis, its records in a file, and twistd's log."""

    def __init__(self, tmp_path, test_db):
        self.redis = RedisServer()
        self.path = tmp_path / "ws4redis.jsonl"
        self.server = TwistdServer(self.redis.url, test_db, {"LOGGING": logging_to(self.path), **HOOKS})

    def records(self) -> list[dict]:
        """The records written so far (whole lines: one may be half written)."""
        text = self.path.read_text() if self.path.exists() else ""
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def wait_for(self, start: str, **fields) -> dict:
        """The first record whose message starts with ``start`` and whose fields include ``fields``."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for record in self.records():
                if record["message"].startswith(start) and fields.items() <= record["fields"].items():
                    return record
            assert time.monotonic() < deadline, f"no record {start!r} {fields}: {self.records()}"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def logged(tmp_path_factory, test_db):
    logged = Logged(tmp_path_factory.mktemp("logging"), test_db)
    yield logged
    logged.stop()


def assert_fields_are_extra(record: dict) -> None:
    """Each field is also its own attribute, ``ws4redis_<name>``."""
    assert record["flat"] == {f"ws4redis_{name}": value for name, value in record["fields"].items()}


def test_a_websocket_s_life_reaches_logging_without_the_session_key(logged):
    server, client = logged.server, logged.redis.client()
    facility = unique("life")
    cookie = login(server, "john")
    key = session_key(cookie)
    with open_ws(server, f"{facility}?subscribe-session&publish-broadcast", cookie) as ws:
        wait_subscribed(client, f"session:{key}:{facility}")
        client.publish(f"session:{key}:{facility}", "hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
        path = f"/ws/{facility}?subscribe-session&publish-broadcast"
        connected = logged.wait_for("WSCONNECT", path=path)
        assert (connected["name"], connected["level"]) == ("twisted_ws4redis.server.protocol", "INFO")
        assert connected["fields"]["subscribed"] == [f"session:{session_digest(key)}:{facility}"]
        assert connected["fields"]["publishers"] == [f"broadcast:{facility}"]
        assert connected["fields"]["peer"].startswith("tcp4:127.0.0.1:")
        assert connected["message"] == (
            f"WSCONNECT {path} {connected['fields']['peer']} "
            f"subscribe={connected['fields']['subscribed']} "
            f"publish={connected['fields']['publishers']}"
        )
        assert_fields_are_extra(connected)
    gone = logged.wait_for("WSDISCONNECT", path=path)
    assert (gone["name"], gone["level"], gone["fields"]["code"]) == ("twisted_ws4redis.server.protocol", "INFO", 1000)
    assert_fields_are_extra(gone)
    text = (logged.path.parent / f"{logged.path.name}.txt").read_text()
    assert f"INFO twisted_ws4redis.server.protocol {gone['message']} {gone['fields']}\n" in text, text
    assert key not in logged.path.read_text()
    assert key not in server.log()


def test_start_up_lines_are_passed_on_once(logged):
    """twistd replays what was logged before its log began (while the server
    was made) to every observer: not a second record."""
    serving = [r for r in logged.records() if r["message"].startswith("Serving websockets under")]
    assert len(serving) == 1, serving
    assert (serving[0]["name"], serving[0]["level"]) == ("twisted_ws4redis.server.service", "INFO")
    assert serving[0]["fields"] == {"url": "/ws/", "endpoint": f"tcp:{logged.server.port}:interface=127.0.0.1"}


def new_lines(server: TwistdServer, since: int) -> list[str]:
    return server.log_path.read_bytes()[since:].decode().splitlines()


# Each refusal: (path, keyword arguments of refused_status or a raw request, status).
REFUSALS = {
    "facility": (lambda f: f"{f}:x?subscribe-broadcast", {}, 400),
    "origin": (lambda f: f"{f}?subscribe-broadcast", {"origin": "http://evil.test"}, 403),
    "hook": (lambda f: f"{f}?subscribe-broadcast", {"additional_headers": {"Deny-Channels": "YES"}}, 403),
    "autobahn": (lambda f: f"{f}?subscribe-broadcast", None, 400),  # failed by Autobahn itself: no key
}


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_refusal_is_one_line_in_twistd_s_log_and_one_record(logged, kind):
    """Autobahn logs a refusal itself, twice (an info line, then a warning about
    the dropped connection): dropped by their formats, which this pins."""
    server = logged.server
    shape, kwargs, status = REFUSALS[kind]
    path = shape(unique(kind))
    since = server.log_path.stat().st_size
    if kwargs is None:
        assert raw_request(server.port, handshake(f"/ws/{path}", drop=("Sec-WebSocket-Key",)))[0] == status
    else:
        assert refused_status(server, path, **kwargs) == status
    record = logged.wait_for("WSREJECT", path=f"/ws/{path}", code=status)
    assert (record["name"], record["level"]) == ("twisted_ws4redis.server.protocol", "INFO")
    assert record["fields"]["reason"]
    assert record["fields"]["peer"].startswith("tcp4:127.0.0.1:")
    assert_fields_are_extra(record)
    time.sleep(0.3)  # anything else this connection logs (its close) is written by now
    lines = new_lines(server, since)
    assert len(lines) == 1, lines
    assert f"[twisted_ws4redis.server.protocol#info] WSREJECT /ws/{path} " in lines[0]
    assert [r["message"] for r in logged.records()].count(record["message"]) == 1


def publish_too_fast(server: TwistdServer, facility: str) -> None:
    """Publish faster than PUBLISH_RATE: the server closes with 1008 and reads
    nothing more (test_hostile); this client does not wait for the drop."""
    with connect(server.ws_url(f"{facility}?publish-broadcast"), open_timeout=TIMEOUT, close_timeout=0.2) as ws:
        for i in range(4 * PUBLISH_RATE):
            ws.send(f"message {i}")
        deadline = time.monotonic() + TIMEOUT
        while f"WSPOLICY /ws/{facility}?" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)


def test_autobahn_s_other_lines_stay(logged):
    """Only a refusal loses Autobahn's lines: a protocol error on an open websocket keeps its warning."""
    server = logged.server
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        port = sock.getsockname()[1]
        sock.sendall(handshake(f"/ws/{unique('violation')}?subscribe-broadcast"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        sock.sendall(b"\x81\x02hi")  # unmasked: clients must mask
        frame = sock.recv(4096)
        assert frame[0] == 0x88
        assert frame[2:4] == b"\x03\xea"  # close, 1002 (protocol error)
    deadline = time.monotonic() + TIMEOUT
    while f"tcp4:127.0.0.1:{port} code=1006" not in server.log():  # its WSDISCONNECT: all logged
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)
    assert (
        "[autobahn.twisted.websocket.WebSocketServerProtocol#warn] failing WebSocket connection (code=1002): "
        '"unmasked client-to-server frame"' in server.log()
    )


def test_an_http_refusal_before_django_is_one_line_and_a_record(logged):
    server = logged.server
    since = server.log_path.stat().st_size
    filler = "".join(f"X-Filler-{i}: {'x' * 100}\r\n" for i in range(200))  # over WS4REDIS_MAX_HEADER_SIZE
    assert raw_request(server.port, handshake(extra=filler))[0] == 431
    record = logged.wait_for("HTTP 431 to", code=431)
    assert (record["name"], record["level"]) == ("twisted_ws4redis.server.resource", "INFO")
    assert record["fields"]["peer"].startswith("IPv4Address(")
    assert record["fields"]["detail"]
    assert_fields_are_extra(record)
    time.sleep(0.3)
    lines = new_lines(server, since)
    assert len(lines) == 1, lines
    assert "[twisted_ws4redis.server.resource#info] HTTP 431 to " in lines[0], lines


def test_a_policy_close_is_a_warning(logged):
    facility = unique("policy")
    publish_too_fast(logged.server, facility)
    record = logged.wait_for("WSPOLICY", path=f"/ws/{facility}?publish-broadcast")
    assert (record["name"], record["level"]) == ("twisted_ws4redis.server.protocol", "WARNING")
    assert record["fields"]["reason"] == "Publishing too fast (WS4REDIS_MAX_PUBLISH_RATE)"
    assert_fields_are_extra(record)


def test_a_hook_s_traceback_is_exc_info(logged):
    facility = unique("broken")
    path = f"{facility}?subscribe-broadcast"
    assert refused_status(logged.server, path, additional_headers={"Break-Hook": "YES"}) == 500
    record = logged.wait_for("Websocket handshake for", path=f"/ws/{path}")
    assert (record["name"], record["level"]) == ("twisted_ws4redis.server.protocol", "CRITICAL")
    assert record["message"] == f"Websocket handshake for /ws/{path} failed"
    assert record["traceback"].startswith("Traceback")
    assert "RuntimeError: the hook is broken (test)" in record["traceback"]
    assert "breakable_allowed_channels" in record["traceback"]
    logged.wait_for("WSREJECT", path=f"/ws/{path}", code=500)


def test_redis_connection_changes_reach_logging(logged):
    client = logged.redis.client()
    assert client.client_kill_filter(_type="pubsub") >= 1
    lost = logged.wait_for("Redis subscriber connection lost")
    assert (lost["name"], lost["level"]) == ("twisted_ws4redis.server.pubsub", "WARNING")
    connected = [r for r in logged.records() if r["message"].startswith("Redis subscriber connected")]
    deadline = time.monotonic() + TIMEOUT
    while len(connected) < 2:  # at start, and again now
        assert time.monotonic() < deadline, logged.records()
        time.sleep(0.02)
        connected = [r for r in logged.records() if r["message"].startswith("Redis subscriber connected")]
    assert (connected[-1]["name"], connected[-1]["level"]) == ("twisted_ws4redis.server.pubsub", "INFO")
    assert isinstance(connected[-1]["fields"]["count"], int)


def test_without_a_logger_for_it_twistd_s_log_has_each_line_once(twistd_servers, redis_client):
    """Django's default LOGGING has no handler for twisted_ws4redis: logging's
    last resort (stderr, which twistd captures) must not print a second copy."""
    server = twistd_servers(HOOKS)
    facility = unique("once")
    publish_too_fast(server, facility)
    assert refused_status(server, f"{facility}?subscribe-broadcast", additional_headers={"Break-Hook": "YES"}) == 500
    deadline = time.monotonic() + TIMEOUT
    while f"WSREJECT /ws/{facility}" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)
    time.sleep(0.3)
    log = server.log()
    assert log.count(f"WSPOLICY /ws/{facility}") == 1, log
    assert log.count("RuntimeError: the hook is broken (test)") == 1, log
    assert "[stderr#" not in log, log


def test_manage_py_runws4redis_logs_to_logging_too(redis_server, test_db, tmp_path):
    """Any caller of make_service gets the bridge: here the management command,
    whose own log (stdout) begins after the server is made."""
    path, port = tmp_path / "records.jsonl", free_port()
    command = runws4redis_command(f"--endpoint=tcp:{port}:interface=127.0.0.1", f"--redis={redis_server.url}")
    process = subprocess.Popen(
        command,
        env=project_env(test_db, {"LOGGING": logging_to(path)}),
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process=process)
        facility = unique("command")
        assert raw_request(port, handshake(f"/ws/{facility}:x?subscribe-broadcast"))[0] == 400
        deadline = time.monotonic() + TIMEOUT
        while f"WSREJECT /ws/{facility}" not in (path.read_text() if path.exists() else ""):
            assert time.monotonic() < deadline, path.read_text()
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=TIMEOUT)[0]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    serving = [r for r in records if r["message"].startswith("Serving websockets under")]
    assert len(serving) == 1, records
    assert serving[0]["name"] == "twisted_ws4redis.server.service", records
    rejected = [r for r in records if r["message"].startswith(f"WSREJECT /ws/{facility}")]
    assert len(rejected) == 1, records
    assert rejected[0]["fields"]["code"] == 400, records
    # The command's own log: the same lines as before, once.
    assert output.count(f"WSREJECT /ws/{facility}") == 1, output
    assert output.count("Serving websockets under") == 1, output
    assert "failing WebSocket opening handshake" not in output, output
    assert "[stderr#" not in output, output
