"""The server's log is safe to read: no session key (whoever holds one is that
user) and no control character a client sent (a terminal would obey it), from
our lines, Autobahn's and twisted.web's access log alike."""

from __future__ import annotations

import re
import socket

import pytest
from websockets.sync.client import connect

from conftest import login, round_trip, session_key, unique, wait_subscribed
from test_door import handshake, raw_request
from twisted_ws4redis import logsafe
from twisted_ws4redis.audience import session_digest

TIMEOUT = 5


def log_text(server) -> str:
    """The whole log as written (UTF-8), without replacing anything."""
    return server.log_path.read_bytes().decode("utf-8")


def assert_printable(log: str) -> None:
    """Every line of ``log`` is printable text: no ESC, no C1 control, no DEL."""
    for line in log.splitlines():
        assert line.isprintable(), f"unprintable characters in {line!r}"


# -- the escaping function -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mevil", "\\x1b[31mevil"),
        ("a\x9b31mb", "a\\x9b31mb"),  # C1 CSI: a control sequence on its own for some terminals
        ("del\x7f", "del\\x7f"),
        ("line\nbreak\r", "line\\x0abreak\\x0d"),
        ("tab\there", "tab\\x09here"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("sep\u2028x", "sep\\u2028x"),
        ("plain /ws/chat?subscribe-broadcast é ü 中", "plain /ws/chat?subscribe-broadcast é ü 中"),
    ],
)
def test_text_escapes_what_is_not_printable(raw, shown):
    assert logsafe.text(raw) == shown


def test_text_is_bounded_and_idempotent():
    long = "\x1b" * 10_000
    once = logsafe.text(long)
    assert len(once) == logsafe.MAX_LENGTH
    assert once.endswith("…")
    assert once.isprintable()
    assert logsafe.text(once) == once
    assert logsafe.text("x" * logsafe.MAX_LENGTH) == "x" * logsafe.MAX_LENGTH


@pytest.mark.parametrize("prefix", ["", "demo:"])
def test_channel_names_show_a_digest_instead_of_the_session_key(prefix):
    key = "pcc1gbxhtp2gwmhhwaw4dlii97svax61"
    assert logsafe.channel(f"{prefix}session:{key}:chat", prefix) == f"{prefix}session:{session_digest(key)}:chat"
    # signed_cookies keys contain colons
    signed = "eyJhIjoxfQ:1w2x3y:AbCdEf"
    assert logsafe.channel(f"{prefix}session:{signed}:chat".encode(), prefix) == (
        f"{prefix}session:{session_digest(signed)}:chat"
    )
    for other in (f"{prefix}broadcast:chat", f"{prefix}user:john:chat", f"{prefix}group:staff:chat"):
        assert logsafe.channel(other, prefix) == other
    assert key not in logsafe.channel(f"{prefix}session:{key}", prefix)


# -- the real server's log ------------------------------------------------------------


def test_no_session_key_in_the_log_and_wsconnect_still_says_who(server, redis_client):
    cookie = login(server, "john")
    key = session_key(cookie)
    facility = unique("keys")
    path = f"{facility}?subscribe-session&subscribe-user&publish-session&echo"
    with connect(server.ws_url(path), additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT) as ws:
        wait_subscribed(redis_client, f"session:{key}:{facility}")
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
    log = log_text(server)
    assert key not in log
    line = next(line for line in log.splitlines() if "WSCONNECT" in line and facility in line)
    digest = session_digest(key)
    assert f"'user:john:{facility}'" in line
    assert f"subscribe=['user:john:{facility}', 'session:{digest}:{facility}']" in line
    assert f"publish=['session:{digest}:{facility}']" in line


def test_a_prefixed_session_channel_is_redacted_too(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_PREFIX": "site"})
    cookie = login(server, "mary")
    key = session_key(cookie)
    facility = unique("prefixed")
    with connect(
        server.ws_url(f"{facility}?subscribe-session"), additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
    ):
        wait_subscribed(redis_client, f"site:session:{key}:{facility}")
    log = log_text(server)
    assert key not in log
    assert f"subscribe=['site:session:{session_digest(key)}:{facility}']" in log


def test_control_bytes_from_a_client_reach_the_log_escaped(server, redis_client):
    cookie = login(server, "john")
    key = session_key(cookie)
    facility = unique("esc")
    # Autobahn refuses a bad Host and quotes it, in the response and in its own
    # log lines. C1 controls (0x9b is CSI, ESC [ to a terminal) are obs-text to
    # HTTP, which Autobahn (>= 26.11) lets through where it refuses C0 ones.
    status, _, body = raw_request(
        server.port, handshake(extra="X-Pad: 1\r\n").replace(b"Host: 127.0.0.1", b"Host: \x9b31mevil:99x")
    )
    assert status == 400
    assert b"\\x9b31mevil" in body
    # A Host with CSI that Autobahn accepts is refused by the Host check.
    assert (
        raw_request(
            server.port,
            handshake(f"/ws/{facility}?subscribe-broadcast").replace(b"Host: 127.0.0.1", b"Host: \x9b31mevil"),
        )[0]
        == 400
    )
    # Controls in User-Agent, a session cookie. (Raw bytes outside printable ASCII in the
    # request-target are refused before anything logs them.)
    request = handshake(
        f"/ws/{facility}?subscribe-session", extra=(f"Cookie: {cookie}\r\nUser-Agent: \x9b32magent\x9c\r\n")
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        wait_subscribed(redis_client, f"session:{key}:{facility}")
    # A C1 CSI in the request-target: refused by the channel; twisted.web's access log for an HTTP request.
    assert raw_request(server.port, handshake(f"/ws/{facility}\x9b31m?subscribe-broadcast"))[0] == 400
    status, _, _ = raw_request(
        server.port,
        (
            b"GET /not-here HTTP/1.1\r\nHost: \x1b[31mh\r\nUser-Agent: \x1b[34mUA\x9b\r\n"
            b"Referer: \x1b[35mref\r\nConnection: close\r\n\r\n"
        ),
    )
    assert status == 404
    # Twisted's parser itself refuses raw C0 controls in the request line, before anything logs.
    assert raw_request(server.port, b"GET /ws/a\x1bb HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 400
    assert_still_serving_and_logged(server, redis_client)

    log = log_text(server)
    assert_printable(log)
    assert key not in log
    # Autobahn's own lines about a refusal are dropped (tests/test_logging.py): WSREJECT says it once.
    assert "failing WebSocket opening handshake" not in log
    assert re.search(r"WSREJECT .* 400 invalid port .*\\x9b31mevil:99x", log), log
    assert re.search(
        rf"WSCONNECT /ws/{facility}\?subscribe-session .*"
        rf"subscribe=\['session:{session_digest(key)}:{facility}'\]",
        log,
    ), log
    # twisted.web escapes its access log itself (repr of the bytes): pinned here.
    assert re.search(r'"GET /not-here HTTP/1.1" 404 \d+ "\\x1b\[35mref" "\\x1b\[34mUA\\x9b"', log), log


def assert_still_serving_and_logged(server, redis_client) -> None:
    """A last websocket works, so everything before it has reached the log."""
    facility = unique("after")
    with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
        round_trip(ws)
    assert f"WSCONNECT /ws/{facility}?subscribe-broadcast " in log_text(server)
