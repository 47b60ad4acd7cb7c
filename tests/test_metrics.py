"""``--metrics=ENDPOINT`` and WS4REDIS_HEALTH_URL: a real twistd, scraped
while real websockets open, exchange messages, get refused and close; the
health check against a real Redis that stops and comes back, and during a
real graceful stop."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from conftest import (
    PROJECT,
    TwistdServer,
    free_port,
    new_log_path,
    open_ws,
    project_env,
    round_trip,
    runws4redis_command,
    twistd_command,
    unique,
    wait_for_port,
    wait_subscribed,
    warm_up,
)
from twisted_ws4redis.server.embedded import EmbeddedRedis

HEALTH_URL = "/ws4redis/health"
PATTERNS = ["chat-.*", "news"]
OVERRIDES = {
    "WS4REDIS_HEALTH_URL": HEALTH_URL,
    "WS4REDIS_METRICS_FACILITIES": PATTERNS,
    "WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.allowed_channels",
}
TIMEOUT = 10.0


class Metered:
    """A twistd server with ``--metrics`` on a port of its own."""

    def __init__(self, redis_url: str, db: str, args: tuple[str, ...] = (), overrides: dict | None = None):
        self.metrics_port = free_port()
        self.server = TwistdServer(
            redis_url,
            db,
            {**OVERRIDES, **(overrides or {})},
            (f"--metrics=tcp:{self.metrics_port}:interface=127.0.0.1", *args),
        )
        wait_for_port(self.metrics_port, process=self.server.process)

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        """Every sample of /metrics: (name, labels) -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=TIMEOUT) as response:
            assert response.status == 200
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def scrape_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=TIMEOUT) as response:
            return response.read().decode()


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def eventually(condition, timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or "condition not met"
        time.sleep(0.05)


def health(url: str, method: str = "GET") -> tuple[int, dict, dict]:
    """(status, headers, JSON body or {}) of a health check."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, dict(error.headers), error.read()
    headers = {name.lower(): text for name, text in headers.items()}
    return status, headers, json.loads(body) if headers.get("content-type") == "application/json" and body else {}


@pytest.fixture(scope="module")
def metered(redis_server, test_db):
    node = Metered(redis_server.url, test_db)
    warm_up(node.server)
    yield node
    node.server.stop()


# -- what flows ----------------------------------------------------------------------------


def test_open_websockets_and_messages_are_counted_between_two_scrapes(metered, redis_client):
    chat, other = unique("chat"), unique("misc")
    before = metered.scrape()
    with contextlib.ExitStack() as stack:
        talkers = [
            stack.enter_context(open_ws(metered.server, f"{chat}?subscribe-broadcast&publish-broadcast"))
            for _ in range(3)
        ]
        for _ in range(2):
            stack.enter_context(open_ws(metered.server, f"{other}?subscribe-broadcast"))
        wait_subscribed(redis_client, f"broadcast:{chat}")
        wait_subscribed(redis_client, f"broadcast:{other}")
        opened = metered.scrape()
        gauge = "ws4redis_websockets_open"
        assert value(opened, gauge, facility="chat-.*") == value(before, gauge, facility="chat-.*") + 3
        assert value(opened, gauge, facility="other") == value(before, gauge, facility="other") + 2
        assert value(opened, gauge, facility="news") == value(before, gauge, facility="news")
        accepted = "ws4redis_handshakes_total"
        assert value(opened, accepted, outcome="accepted", reason="") == (
            value(before, accepted, outcome="accepted", reason="") + 5
        )
        assert value(opened, "ws4redis_subscriptions") >= value(before, "ws4redis_subscriptions") + 2
        latency = value(opened, "ws4redis_handshake_seconds_count") - value(before, "ws4redis_handshake_seconds_count")
        assert latency == 5

        payload = b"x" * 100
        for _ in range(10):
            redis_client.publish(f"broadcast:{chat}", payload)
        for ws in talkers:
            for _ in range(10):
                assert ws.recv(timeout=TIMEOUT) == payload.decode()
        published = metered.scrape()
        delivered = value(published, "ws4redis_messages_delivered_total") - value(
            opened, "ws4redis_messages_delivered_total"
        )
        assert delivered == 30
        assert value(published, "ws4redis_delivered_bytes_total") - value(
            opened, "ws4redis_delivered_bytes_total"
        ) == 30 * len(payload)
        assert value(published, "ws4redis_redis_messages_total") - value(opened, "ws4redis_redis_messages_total") == 10

        talkers[0].send("from a client")
        for ws in talkers[1:]:
            assert ws.recv(timeout=TIMEOUT) == "from a client"
        sent = metered.scrape()
        assert (
            value(sent, "ws4redis_messages_received_total") - value(published, "ws4redis_messages_received_total") == 1
        )
        assert value(sent, "ws4redis_received_bytes_total") - value(published, "ws4redis_received_bytes_total") == len(
            "from a client"
        )
    # Closed: the gauge goes back.
    eventually(
        lambda: (
            value(metered.scrape(), "ws4redis_websockets_open", facility="chat-.*")
            == value(before, "ws4redis_websockets_open", facility="chat-.*")
        ),
        what="the open websockets gauge did not go back",
    )


def refused(samples: dict, reason: str) -> float:
    return value(samples, "ws4redis_handshakes_total", outcome="refused", reason=reason)


def test_refused_handshakes_are_counted_by_reason(metered):
    before = metered.scrape()
    server = metered.server
    with pytest.raises(InvalidStatus) as origin:
        connect(server.ws_url(unique("chat") + "?subscribe-broadcast"), origin="http://evil.example")
    assert origin.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as hook:
        connect(server.ws_url(unique("chat") + "?subscribe-broadcast"), additional_headers={"Deny-Channels": "YES"})
    assert hook.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as facility:
        connect(server.ws_url("bad*facility?subscribe-broadcast"))
    assert facility.value.response.status_code == 400
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        raw.sendall(b"GET /ws/chat-x HTTP/1.0\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n")
        assert b" 400 " in raw.recv(100).split(b"\r\n")[0]
    # No websocket handshake at all: Autobahn's 405 (a POST) and 426 (no Upgrade).
    for request, status in ((b"POST /ws/chat-x HTTP/1.1", b" 405 "), (b"GET /ws/chat-x HTTP/1.1", b" 426 ")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
            raw.sendall(request + b"\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
            assert status in raw.recv(100).split(b"\r\n")[0]
    after = metered.scrape()
    for reason, count in (("origin", 1), ("forbidden", 1), ("facility", 1), ("bad_request", 3), ("timeout", 0)):
        assert refused(after, reason) - refused(before, reason) == count, reason
    accepted = "ws4redis_handshakes_total"
    assert value(after, accepted, outcome="accepted", reason="") == value(
        before, accepted, outcome="accepted", reason=""
    )


def test_a_handshake_that_times_out_is_counted_once(redis_server, test_db):
    """Django (the hook) takes 0.3 s, the handshake's deadline is 0.2 s: the
    deadline drops the connection, and Django's late answer is not a second refusal."""
    node = Metered(
        redis_server.url,
        test_db,
        overrides={
            "WS4REDIS_HANDSHAKE_TIMEOUT": 0.2,
            "WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.probing_allowed_channels",
        },
    )
    try:
        warm_up(node.server)
        before = node.scrape()
        with pytest.raises(InvalidHandshake):
            connect(node.server.ws_url(unique("slow") + "?subscribe-broadcast"), open_timeout=TIMEOUT)
        eventually(lambda: refused(node.scrape(), "timeout") - refused(before, "timeout") == 1, what="no timeout")
        time.sleep(0.5)  # Django's answer, 0.1 s after the deadline, has come
        after = node.scrape()
        assert refused(after, "timeout") - refused(before, "timeout") == 1
        total = "ws4redis_handshakes_total"
        assert (
            sum(v for (name, _), v in after.items() if name == total)
            - sum(v for (name, _), v in before.items() if name == total)
            == 1
        )
    finally:
        node.server.stop()


def test_closes_are_counted_by_code(metered):
    before = metered.scrape()
    for code in (1000, 4000, 4000):
        with open_ws(metered.server, unique("news") + "?subscribe-broadcast") as ws:
            round_trip(ws)
            ws.close(code)

    def closed(samples: dict, code: str) -> float:
        return samples.get(("ws4redis_websocket_closes_total", frozenset({("code", code)})), 0.0)

    eventually(
        lambda: closed(metered.scrape(), "other") - closed(before, "other") == 2,
        what="the two 4000 closes were not counted as 'other'",
    )
    after = metered.scrape()
    assert closed(after, "1000") - closed(before, "1000") == 1
    assert closed(after, "4000") == 0


def test_client_chosen_facilities_add_no_label(metered):
    facilities = [f"random-{uuid.uuid4().hex}" for _ in range(200)]
    with contextlib.ExitStack() as stack:
        for facility in facilities:
            stack.enter_context(open_ws(metered.server, f"{facility}?subscribe-broadcast"))
        text = metered.scrape_text()
    labels = {dict(labels)["facility"] for name, labels in metered.scrape() if name == "ws4redis_websockets_open"}
    assert labels == {*PATTERNS, "other"}
    assert not any(facility in text for facility in facilities)
    assert "random-" not in text


def test_history_and_presence_operations_are_counted_when_they_are_on(redis_server, redis_client, test_db):
    node = Metered(redis_server.url, test_db, overrides={"WS4REDIS_HISTORY_SIZE": 10, "WS4REDIS_PRESENCE": True})
    try:
        before = node.scrape()
        facility = unique("chat")
        with open_ws(node.server, f"{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
            ws.send("recorded")
            assert ws.recv(timeout=TIMEOUT) == "recorded"
            during = node.scrape()
        assert (
            value(during, "ws4redis_history_publishes_total") - value(before, "ws4redis_history_publishes_total") == 1
        )
        changes = "ws4redis_presence_changes_total"
        assert value(during, changes, change="join") - value(before, changes, change="join") == 1
        eventually(
            lambda: value(node.scrape(), changes, change="leave") - value(before, changes, change="leave") == 1,
            what="the leave was not counted",
        )
        eventually(
            lambda: value(node.scrape(), "ws4redis_presence_writes_total", result="ok") >= 2,
            what="the join and the leave were not written",
        )
        assert value(node.scrape(), "ws4redis_presence_writes_total", result="failed") == 0
    finally:
        node.server.stop()


# -- health --------------------------------------------------------------------------------


def test_health_answers_on_the_main_port_and_on_the_metrics_endpoint(metered):
    main = metered.server.http_url(HEALTH_URL)
    for url in (main, f"http://127.0.0.1:{metered.metrics_port}/health"):
        status, headers, body = health(url)
        assert status == 200
        assert body == {"status": "ok", "redis": True, "stopping": False}
        assert headers["cache-control"] == "no-store"
        assert headers["content-type"] == "application/json"
        status, headers, body = health(url, "HEAD")
        assert status == 200
        assert body == {}
        assert headers["cache-control"] == "no-store"
    assert health(main, "POST")[0] == 405
    # The metrics endpoint takes no request body (its site is the main port's, bounded the same way).
    with pytest.raises(urllib.error.HTTPError) as body:
        urllib.request.urlopen(f"http://127.0.0.1:{metered.metrics_port}/metrics", data=b"x" * 10, timeout=TIMEOUT)
    assert body.value.code == 413
    # The health check is not Django's: no session, no cookie, no access to the database.
    assert "set-cookie" not in health(main)[1]
    assert value(metered.scrape(), "ws4redis_healthy") == 1
    # Not in the access log (a load balancer's checks would be most of it); other requests are.
    marker = f"/after-health-{uuid.uuid4().hex}"
    # Read until the server closes: twisted.web logs a request when it finishes it, and
    # not at all if the client hung up first (urllib may, once it has the whole body).
    with socket.create_connection(("127.0.0.1", metered.server.port), timeout=TIMEOUT) as raw:
        raw.sendall(f"GET {marker} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        while raw.recv(65536):
            pass
    eventually(lambda: marker in metered.server.log(), what="the request after the health checks was not logged")
    assert HEALTH_URL not in metered.server.log()


def test_health_turns_503_when_redis_freezes_and_back_when_it_thaws(test_db):
    """A Redis that stops answering without closing anything (SIGSTOP: as one
    cut off by the network) is noticed by the subscriber's PING: after
    PING_TIMEOUT the connection is dropped and the health says 503."""
    from twisted_ws4redis.server.pubsub import PING_INTERVAL, PING_TIMEOUT

    redis = EmbeddedRedis(port=free_port())
    redis.start()
    node = None
    try:
        node = Metered(f"redis://127.0.0.1:{redis.port}/0", test_db)
        main = node.server.http_url(HEALTH_URL)
        eventually(lambda: health(main)[0] == 200, what="not healthy at start")
        redis.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        frozen = time.monotonic()
        eventually(
            lambda: health(main)[0] == 503, timeout=PING_INTERVAL + PING_TIMEOUT + 10, what="healthy with Redis frozen"
        )
        assert time.monotonic() - frozen >= PING_TIMEOUT - 1, "503 before a PING could have timed out"
        assert "has not answered a PING" in node.server.log()
        redis.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        eventually(lambda: health(main)[0] == 200, timeout=20, what="not healthy again once Redis thawed")
    finally:
        if redis.process is not None:
            redis.process.send_signal(signal.SIGCONT)
        if node is not None:
            node.server.stop()
        redis.stop()


def test_health_follows_redis(test_db):
    redis = EmbeddedRedis(port=free_port())
    redis.start()
    node = None
    try:
        node = Metered(f"redis://127.0.0.1:{redis.port}/0", test_db)
        main, side = node.server.http_url(HEALTH_URL), f"http://127.0.0.1:{node.metrics_port}/health"
        eventually(lambda: health(main)[0] == 200, what="not healthy at start")
        reconnects = value(node.scrape(), "ws4redis_redis_reconnects_total")
        redis.stop()
        eventually(lambda: health(main)[0] == 503, what="still healthy with Redis stopped")
        status, headers, body = health(side)
        assert status == 503
        assert body == {"status": "unavailable", "redis": False, "stopping": False}
        assert headers["cache-control"] == "no-store"
        down = node.scrape()
        assert value(down, "ws4redis_redis_up") == 0
        assert value(down, "ws4redis_healthy") == 0
        redis = EmbeddedRedis(port=redis.port)
        redis.start()
        eventually(lambda: health(main)[0] == 200, timeout=20, what="not healthy again once Redis is back")
        assert health(side)[0] == 200
        back = node.scrape()
        assert value(back, "ws4redis_redis_up") == 1
        assert value(back, "ws4redis_redis_reconnects_total") == reconnects + 1
    finally:
        if node is not None:
            node.server.stop()
        redis.stop()


def test_health_is_503_during_a_graceful_stop(redis_server, test_db):
    node = Metered(redis_server.url, test_db, ("--grace=20",))
    try:
        warm_up(node.server)
        side = f"http://127.0.0.1:{node.metrics_port}/health"
        assert health(side)[0] == 200
        # A request being answered keeps the graceful stop going for a while.
        slow = threading.Thread(
            target=lambda: urllib.request.urlopen(node.server.http_url("/slow/?seconds=4"), timeout=20).read()
        )
        slow.start()
        time.sleep(0.5)
        node.server.process.send_signal(signal.SIGTERM)
        eventually(lambda: health(side)[0] == 503, what="still healthy while stopping")
        status, _, body = health(side)
        assert status == 503
        assert body == {"status": "unavailable", "redis": True, "stopping": True}
        # New websockets are refused by then: the main port no longer listens.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", node.server.port), timeout=2).close()
        slow.join(20)
        assert node.server.process.wait(20) == 0
    finally:
        node.server.stop()


# -- manage.py runws4redis ------------------------------------------------------------------


def test_runws4redis_serves_metrics(redis_server, test_db):
    port, metrics_port = free_port(), free_port()
    with open(new_log_path("runws4redis-"), "wb") as log:
        process = subprocess.Popen(
            runws4redis_command(
                f"--endpoint=tcp:{port}:interface=127.0.0.1",
                f"--metrics=tcp:{metrics_port}:interface=127.0.0.1",
                f"--redis={redis_server.url}",
            ),
            env=project_env(test_db, OVERRIDES),
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(metrics_port, process=process)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=TIMEOUT) as response:
            assert "ws4redis_websockets_open" in response.read().decode()
        assert health(f"http://127.0.0.1:{port}{HEALTH_URL}")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


@pytest.mark.parametrize("workers", [(), ("--workers=2",)], ids=["one process", "workers"])
def test_a_bad_or_busy_metrics_endpoint_ends_the_start_with_one_line(redis_server, test_db, workers):
    base = twistd_command(f"--endpoint=tcp:{free_port()}:interface=127.0.0.1", f"--redis={redis_server.url}", *workers)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for metrics, said in (
            ("bogus:1", "--metrics 'bogus:1' is not a valid endpoint"),
            (f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1", "(--metrics): Couldn't listen"),
        ):
            result = subprocess.run(
                [*base, f"--metrics={metrics}"],
                env=project_env(test_db),
                cwd=PROJECT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert said in output, output
            assert "Traceback" not in output
