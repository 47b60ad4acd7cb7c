"""Logout closes the session's websockets on every node: two ``twistd
ws4redis`` processes on one Redis, Django's logout() in one of them, real
websocket clients on both (issue 10, item 11)."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import override_settings
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TwistdServer, free_port, login, open_ws, session_key, unique, wait_subscribed
from twisted_ws4redis.audience import session_digest

TIMEOUT = 5
#: Seconds within which a logged-out session's websockets must be closed.
CLOSED_WITHIN = 2.0
#: Only these two nodes use it, so PUBLISH on their control channel counts them.
PREFIX = f"lo{uuid.uuid4().hex[:6]}"
CONTROL = f"{PREFIX}:ws4redis:control"


@pytest.fixture(scope="module")
def nodes(redis_server, test_db):
    started: list[TwistdServer] = []
    try:
        for _ in range(2):
            started.append(TwistdServer(redis_server.url, test_db, {"WS4REDIS_PREFIX": PREFIX}))  # noqa: PERF401 (as above)
        yield started
    finally:
        for node in started:
            node.stop()


def log_out(node: TwistdServer, cookie: str) -> None:
    request = urllib.request.Request(node.http_url("/logout/"), data=b"", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read()) == {"ok": True}


def seconds_until_closed(ws, started: float) -> float:
    """Seconds from ``started`` until the server closed ``ws`` (which must not send anything else)."""
    with pytest.raises(ConnectionClosed):
        message = ws.recv(timeout=TIMEOUT)
        raise AssertionError(f"received {message!r} instead of a close")
    return time.monotonic() - started


def barrier(node: TwistdServer, redis_client) -> None:
    """Returns once Redis has processed every SUBSCRIBE ``node`` sent before (one
    subscriber connection per node, in order: see test_audiences)."""
    facility = unique("barrier")
    with open_ws(node, f"{facility}?subscribe-broadcast"):
        wait_subscribed(redis_client, f"{PREFIX}:broadcast:{facility}")


def assert_receives(redis_client, channel: str, sockets, message: str) -> None:
    redis_client.publish(channel, message)
    for ws in sockets:
        assert ws.recv(timeout=TIMEOUT) == message


def test_logout_closes_that_sessions_websockets_on_every_node(nodes, redis_client):
    one, two = nodes
    facility = unique("logout")
    path = f"{facility}?subscribe-user&subscribe-session"
    leaving, staying, mary = login(one, "john"), login(two, "john"), login(one, "mary")
    with (
        open_ws(one, path, leaving) as on_one,
        open_ws(two, path, leaving) as on_two,
        open_ws(two, path, staying) as other_session,
        open_ws(one, path, mary) as other_user,
    ):
        john, marys = f"{PREFIX}:user:john:{facility}", f"{PREFIX}:user:mary:{facility}"
        wait_subscribed(redis_client, john, 2)
        wait_subscribed(redis_client, marys, 1)
        assert_receives(redis_client, john, [on_one, on_two, other_session], "before logout")

        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            closing = [pool.submit(seconds_until_closed, ws, started) for ws in (on_one, on_two)]
            log_out(one, leaving)
            took = [future.result() for future in closing]
        print(f"logout to close: node 1 {took[0] * 1000:.1f} ms, node 2 {took[1] * 1000:.1f} ms")
        assert max(took) < CLOSED_WITHIN, took
        for ws in (on_one, on_two):
            assert (ws.close_code, ws.close_reason) == (4401, "Session ended")

        assert_receives(redis_client, john, [other_session], "john's other session still hears")
        assert_receives(
            redis_client,
            f"{PREFIX}:session:{session_key(staying)}:{facility}",
            [other_session],
            "and its own session channel",
        )
        assert_receives(redis_client, marys, [other_user], "mary still hears")
        # The old cookie names no session now: reopened, it is anonymous (no user channel).
        with open_ws(one, path, leaving), open_ws(two, path, leaving):
            for node in nodes:
                barrier(node, redis_client)
            assert dict(redis_client.pubsub_numsub(john)) == {john.encode(): 1}
    digest = session_digest(session_key(leaving))
    for node in nodes:
        ended = [line for line in node.log().splitlines() if "WSSESSIONEND" in line]
        assert len(ended) == 1, ended
        assert digest in ended[0], ended
        assert session_key(leaving) not in ended[0], ended


def test_garbage_on_the_control_channel_is_ignored_and_the_nodes_keep_serving(nodes, redis_client):
    one, two = nodes
    facility = unique("garbage")
    cookie = login(one, "john")
    digest = session_digest(session_key(cookie))
    junk = [
        b"\xff\xfe\x00\x1b[31mnot json",
        b"[]",
        b'"close-session"',
        b"{}",
        json.dumps({"op": "reboot", "session": digest}).encode(),
        json.dumps({"op": "close-session"}).encode(),
        json.dumps({"op": "close-session", "session": 42}).encode(),
        json.dumps({"op": "close-session", "session": session_key(cookie)}).encode(),  # a key, not a digest
        json.dumps({"op": "close-session", "session": digest, "pad": "x" * 2_000_000}).encode(),  # too long
    ]
    with (
        open_ws(one, f"{facility}?subscribe-session", cookie) as first,
        open_ws(two, f"{facility}?subscribe-session", cookie) as second,
    ):
        channel = f"{PREFIX}:session:{session_key(cookie)}:{facility}"
        wait_subscribed(redis_client, channel, 2)
        for message in junk:
            assert redis_client.publish(CONTROL, message) == 2
        assert_receives(redis_client, channel, [first, second], "still open, still served")
    for node in nodes:
        ignored = [line for line in node.log().splitlines() if "Ignored a control message" in line]
        assert len(ignored) == len(junk), ignored
        assert max(len(line) for line in ignored) < 300
        assert r"b'\xff\xfe\x00\x1b[31mnot json'" in ignored[0]
        assert "Traceback" not in node.log()
    with open_ws(two, f"{facility}?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, f"{PREFIX}:broadcast:{facility}", 1)
        assert_receives(redis_client, f"{PREFIX}:broadcast:{facility}", [ws], "new sockets too")


def test_close_session_websockets_from_another_django_process(nodes, redis_client, django_in_process):
    """The public function, called in this process (as app code that flushes a
    session itself would), reaches the sockets on both nodes."""
    from twisted_ws4redis.publisher import close_session_websockets

    one, two = nodes
    facility = unique("flush")
    path = f"{facility}?subscribe-user"
    cookie = login(two, "john")
    with open_ws(one, path, cookie) as on_one, open_ws(two, path, cookie) as on_two:
        wait_subscribed(redis_client, f"{PREFIX}:user:john:{facility}", 2)
        # Another prefix is another process group: nothing here is closed.
        with override_settings(WS4REDIS_PREFIX="elsewhere"):
            assert close_session_websockets(session_key(cookie)) == 0
        assert_receives(redis_client, f"{PREFIX}:user:john:{facility}", [on_one, on_two], "still open")

        with override_settings(WS4REDIS_PREFIX=PREFIX):
            assert close_session_websockets(session_key(cookie)) == 2
        for ws in (on_one, on_two):
            assert seconds_until_closed(ws, time.monotonic()) < CLOSED_WITHIN
            assert ws.close_code == 4401
    # The session itself is still valid, but the nodes refuse it for a while.
    with pytest.raises(InvalidStatus) as refused:
        open_ws(one, path, cookie)
    assert refused.value.response.status_code == 403


def test_logout_succeeds_when_redis_is_down(django_in_process, caplog):
    from django.contrib.auth import logout

    from conftest import django_request

    request = django_request("john")
    key = request.session.session_key
    down = {"host": "127.0.0.1", "port": free_port(), "db": 0, "socket_connect_timeout": 1}
    with override_settings(WS4REDIS_CONNECTION=down), caplog.at_level(logging.WARNING, "twisted_ws4redis"):
        logout(request)
    assert request.session.session_key is None
    assert not request.user.is_authenticated
    records = [record for record in caplog.records if record.name == "twisted_ws4redis.receivers"]
    warnings = [record.getMessage() for record in records]
    assert len(warnings) == 1, warnings
    assert session_digest(key) in warnings[0], warnings
    assert key not in warnings[0], warnings
    # The fields every twisted_ws4redis record carries (README, Logging).
    assert records[0].ws4redis["session"] == records[0].ws4redis_session == session_digest(key)
    assert key not in repr(records[0].ws4redis)


def test_an_ended_session_is_refused_for_ten_seconds_then_forgotten(django_in_process):
    """What a node remembers of ended sessions is bounded in time (a flood of
    logouts costs memory for SESSION_ENDED_MEMORY seconds only)."""
    from twisted.internet.task import Clock

    from twisted_ws4redis.conf import get_settings
    from twisted_ws4redis.server.protocol import SESSION_ENDED_MEMORY, WebSocketFactory

    clock = Clock()
    factory = WebSocketFactory(get_settings(), bus=None, pool=None, reactor=clock)
    first, second = "0" * 16, "1" * 16
    assert factory.close_session(first) == 0  # no websocket of it here
    assert factory.session_ended(first)
    assert not factory.session_ended(second)
    clock.advance(SESSION_ENDED_MEMORY - 0.1)
    assert factory.session_ended(first)
    clock.advance(0.1)
    assert not factory.session_ended(first)
    factory.close_session(second)
    assert list(factory._ended) == [second]
