"""The websocket door: what a handshake gets, good or bad, and the hooks that
decide it (WS4REDIS_ALLOWED_CHANNELS, WS4REDIS_PROCESS_REQUEST,
WS4REDIS_SUBSCRIBER). A refused handshake costs the server nothing else."""

from __future__ import annotations

import base64
import os
import socket

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import login, unique, wait_subscribed

ALLOWED = {"WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.allowed_channels"}
TIMEOUT = 5


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; return the status, headers and body of the
    response, which must be complete and followed by the server closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"incomplete response: {data!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"])
    return int(status), headers, body


def handshake(
    path: str = "/ws/door?subscribe-broadcast",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    drop: tuple[str, ...] = (),
    extra: str = "",
    key: str | None = None,
    ws_version: str = "13",
) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": ws_version,
    }
    lines = [f"{method} {path} {version}"] + [f"{n}: {v}" for n, v in headers.items() if n not in drop]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def assert_still_serving(server, redis_client, heartbeat: str | None = None) -> None:
    """A new websocket opens and receives (past the ``heartbeat`` messages, if any)."""
    facility = unique("alive")
    with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        redis_client.publish(f"broadcast:{facility}", "still here")
        while (message := ws.recv(timeout=TIMEOUT)) == heartbeat:
            pass
        assert message == "still here"


def refused_status(server, path: str, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws_url(path), open_timeout=TIMEOUT, **kwargs)
    return refused.value.response.status_code


# -- malformed handshakes ---------------------------------------------------------


BAD_HANDSHAKES = {
    "no Upgrade header": (handshake(drop=("Upgrade",)), 426),
    "not GET": (handshake(method="POST"), 405),
    "HTTP/1.0": (handshake(version="HTTP/1.0"), 400),  # RFC 6455 4.2.1; 505 is for another major version
    "no key": (handshake(drop=("Sec-WebSocket-Key",)), 400),
    "key not 16 bytes": (handshake(key=base64.b64encode(b"short").decode()), 400),
    "no version": (handshake(drop=("Sec-WebSocket-Version",)), 400),
    "facility not UTF-8": (handshake("/ws/%ff?subscribe-broadcast"), 400),
    "header smuggled with a vertical tab": (handshake(extra="X-A: a\x0bSec-WebSocket-Protocol: x\r\n"), 400),
    "header smuggled with a form feed": (handshake(extra="X-A: a\x0cUpgrade: websocket\r\n"), 400),
}


@pytest.mark.parametrize(("request_bytes", "status"), BAD_HANDSHAKES.values(), ids=BAD_HANDSHAKES.keys())
def test_a_bad_handshake_gets_a_complete_error_response(server, redis_client, request_bytes, status):
    got, headers, body = raw_request(server.port, request_bytes)
    assert got == status, body
    if status == 426:
        assert headers["upgrade"].lower() == "websocket"
    assert_still_serving(server, redis_client)


def test_an_old_protocol_version_is_told_which_one_to_use(server):
    """Drafts (version 8) are refused, naming version 13, as RFC 6455 4.4 asks."""
    got, headers, _ = raw_request(server.port, handshake(ws_version="8"))
    assert got == 400
    assert headers["sec-websocket-version"] == "13"


def test_the_reason_of_a_refusal_stays_in_the_body(server):
    """A client-chosen string (the facility) never reaches the status line or
    the headers, where it could forge a response."""
    got, headers, _ = raw_request(server.port, handshake("/ws/%ff%0d%0aX-Evil:%20yes?subscribe-broadcast"))
    assert got == 400
    assert "x-evil" not in headers


def test_websocket_url_without_upgrade_is_not_passed_to_django(server):
    got, _, body = raw_request(server.port, b"GET /ws/door HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert got == 426
    assert b"testproject" not in body


def test_django_is_served_beside_the_websockets(server):
    got, _, body = raw_request(server.port, b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert (got, body) == (200, b"testproject")


# -- subprotocols -------------------------------------------------------------------


def test_the_first_offered_subprotocol_is_selected(server):
    with connect(server.ws_url("door?subscribe-broadcast"), subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "chat"


def test_no_subprotocol_offered_none_selected(server):
    with connect(server.ws_url("door?subscribe-broadcast")) as ws:
        assert ws.subprotocol is None
        assert "sec-websocket-protocol" not in {name.lower() for name in ws.response.headers}


# -- WS4REDIS_ALLOWED_CHANNELS -------------------------------------------------------


def test_allowed_channels_may_refuse_with_403(twistd_servers, redis_client):
    server = twistd_servers(ALLOWED)
    status = refused_status(server, "door?subscribe-broadcast", additional_headers={"Deny-Channels": "YES"})
    assert status == 403
    assert "WSREJECT" in server.log()
    assert_still_serving(server, redis_client)


def test_allowed_channels_may_narrow_the_channels(twistd_servers, redis_client):
    """The hook drops the publish flags: the socket still hears, but what it
    says goes nowhere, while an unrestricted socket publishes."""
    server = twistd_servers(ALLOWED)
    facility = unique("narrow")
    channel = f"broadcast:{facility}"
    listener = redis_client.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    path = f"{facility}?subscribe-broadcast&publish-broadcast&echo"
    with (
        connect(server.ws_url(path), additional_headers={"Read-Only": "YES"}) as read_only,
        connect(server.ws_url(path)) as writer,
    ):
        wait_subscribed(redis_client, channel, 2)
        read_only.send("from the read-only socket")
        writer.send("from the writer")
        assert read_only.recv(timeout=TIMEOUT) == "from the writer"
        assert writer.recv(timeout=TIMEOUT) == "from the writer"
    # Messages of one connection arrive in order: the writer's came through,
    # so the read-only socket's, sent earlier, would have been there first.
    assert listener.get_message(timeout=TIMEOUT)["data"] == b"from the writer"
    listener.close()


# -- WS4REDIS_PROCESS_REQUEST ---------------------------------------------------------


def test_process_request_replaces_the_session_lookup(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_PROCESS_REQUEST": "testproject.hooks.token_process_request"})
    facility = unique("token")
    with connect(server.ws_url(f"{facility}?subscribe-user&token=john")) as ws:
        wait_subscribed(redis_client, f"user:john:{facility}")
        redis_client.publish(f"user:john:{facility}", "for john's token")
        assert ws.recv(timeout=TIMEOUT) == "for john's token"


def test_a_failing_process_request_gives_500_and_a_logged_traceback(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_PROCESS_REQUEST": "testproject.hooks.failing_process_request"})
    assert refused_status(server, "door?subscribe-broadcast") == 500
    log = server.log()
    assert "Traceback" in log
    assert "the session backend is broken (test)" in log
    got, _, body = raw_request(server.port, b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert (got, body) == (200, b"testproject")


def test_a_session_engine_that_fails_gives_500_and_costs_nothing_else(twistd_servers, redis_client):
    """The real session middleware path, with a store that raises: that
    handshake gets 500 with the traceback logged; a handshake without a cookie
    (nothing to load) and the other websockets are served."""
    server = twistd_servers({"SESSION_ENGINE": "testproject.broken_sessions"})
    status = refused_status(
        server, "door?subscribe-user", additional_headers={"Cookie": "sessionid=abcdefghijklmnopqrstuvwxyz012345"}
    )
    assert status == 500
    log = server.log()
    assert "Traceback" in log
    assert "the session store is unreachable (test)" in log
    assert_still_serving(server, redis_client)


# -- WS4REDIS_SUBSCRIBER ------------------------------------------------------------------


def test_a_custom_subscriber_decides_which_flags_count(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_SUBSCRIBER": "testproject.hooks.BroadcastOnlySubscriber"})
    facility = unique("custom")
    cookie = login(server, "john")
    with connect(
        server.ws_url(f"{facility}?subscribe-user&subscribe-broadcast"), additional_headers={"Cookie": cookie}
    ) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        assert redis_client.pubsub_numsub(f"user:john:{facility}") == [(f"user:john:{facility}".encode(), 0)]
        redis_client.publish(f"broadcast:{facility}", "broadcast only")
        assert ws.recv(timeout=TIMEOUT) == "broadcast only"
