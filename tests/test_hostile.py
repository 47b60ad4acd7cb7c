"""Hostile and broken clients: cross-site pages, odd facilities, oversized or
slow request heads, frames that break RFC 6455, clients publishing too fast.
Each gets the right status or close code, and everyone else is still served."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

import psutil
import pytest
from websockets.sync.client import connect

from conftest import unique, wait_subscribed
from test_door import assert_still_serving, handshake, raw_request, refused_status
from twisted_ws4redis.origin import OriginPolicy

TIMEOUT = 5


# -- a raw websocket client, to send what no library would -------------------------


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A frame as a client sends it (masked), or as told."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, (0x80 if masked else 0) | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, length)
    if masked:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        header += key
    return header + payload


class RawSocket:
    """A websocket opened by hand over a plain socket."""

    def __init__(self, port: int, path: str = "/ws/raw?subscribe-broadcast&publish-broadcast&echo", extra: str = ""):
        """``extra``: more header lines for the handshake, each ending in CRLF."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(handshake(path, extra=extra))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, f"closed during the handshake: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = bytearray()  # read from the front in O(1), for floods of small frames

    def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0
    ) -> None:
        self.sock.sendall(client_frame(opcode, payload, fin=fin, masked=masked, rsv=rsv))

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def close_code(self) -> int:
        """Read until the server's close frame; its status code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0]

    def close(self) -> None:
        self.sock.close()


def listening(redis_client, channel: str):
    """A Redis subscriber on ``channel``, confirmed."""
    listener = redis_client.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    return listener


# -- Origin --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "example.com", True),  # not a browser
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # same origin
        ("HTTPS://Example.COM", "example.com", True),  # same origin, other case
        ("http://evil.test", "example.com", False),
        ("null", "example.com", False),  # sandboxed frame, file: page
        ("http://example.com.evil.test", "example.com", False),
        ("http://", "example.com", False),
        ("http://[::1", "example.com", False),  # not even a URL
        ("https://app.trusted.test", "example.com", True),  # CSRF_TRUSTED_ORIGINS wildcard
        ("http://app.trusted.test", "example.com", False),  # ... but for https only
        ("https://partner.test", "example.com", True),  # WS4REDIS_ALLOWED_ORIGINS
        ("https://partner.test:8443", "example.com", False),
        ("https://www.site.test", "example.com", True),  # ALLOWED_HOSTS ".site.test"
        ("https://site.test:444", "example.com", True),
    ],
)
def test_origin_policy(origin, host, allowed):
    policy = OriginPolicy(["https://partner.test", "https://*.trusted.test"], [".site.test", "*"])
    assert policy.allows(origin, host) is allowed


def test_a_star_in_allowed_hosts_does_not_open_the_origin_check():
    assert not OriginPolicy([], ["*"]).allows("http://evil.test", "example.com")
    assert OriginPolicy(["*"], []).allows("http://evil.test", "example.com")


def test_debug_accepts_localhost_pages_as_django_does():
    assert OriginPolicy([], [], debug=True).allows("http://localhost:3000", "127.0.0.1:8000")
    assert not OriginPolicy([], [], debug=False).allows("http://localhost:3000", "127.0.0.1:8000")
    assert not OriginPolicy([], [], debug=True).allows("http://evil.test", "127.0.0.1:8000")


def test_a_cross_site_page_is_refused_and_the_site_itself_accepted(server, redis_client):
    assert refused_status(server, "door?subscribe-broadcast", origin="http://evil.test") == 403
    assert "WSREJECT" in server.log()
    with connect(
        server.ws_url("door?subscribe-broadcast"), origin=f"http://127.0.0.1:{server.port}", open_timeout=TIMEOUT
    ) as ws:
        assert ws.response.status_code == 101
    assert_still_serving(server, redis_client)


def test_allowed_origins_open_the_door_to_named_sites(twistd_servers, redis_client):
    server = twistd_servers(
        {"WS4REDIS_ALLOWED_ORIGINS": ["https://partner.test"], "CSRF_TRUSTED_ORIGINS": ["https://*.trusted.test"]}
    )
    for origin in ("https://partner.test", "https://app.trusted.test"):
        with connect(server.ws_url("door?subscribe-broadcast"), origin=origin, open_timeout=TIMEOUT):
            pass
    assert refused_status(server, "door?subscribe-broadcast", origin="https://other.test") == 403


# -- facilities ------------------------------------------------------------------------


@pytest.mark.parametrize("facility", ["a:b", "glob*", "what%3F", "x%5B1%5D", "tab%09", "a" * 129, "back%5Cslash"])
def test_facilities_that_would_surprise_redis_are_refused(server, redis_client, facility):
    got, _, body = raw_request(server.port, handshake(f"/ws/{facility}?subscribe-broadcast"))
    assert got == 400
    assert b"WS4REDIS_FACILITY_PATTERN" in body
    assert_still_serving(server, redis_client)


def test_the_facility_pattern_is_a_setting(twistd_servers):
    server = twistd_servers({"WS4REDIS_FACILITY_PATTERN": "[a-z]{1,8}"})
    assert raw_request(server.port, handshake("/ws/Upper?subscribe-broadcast"))[0] == 400
    assert raw_request(server.port, handshake("/ws/toolongname?subscribe-broadcast"))[0] == 400
    with connect(server.ws_url("lower?subscribe-broadcast"), open_timeout=TIMEOUT):
        pass


# -- request heads -----------------------------------------------------------------------


def test_a_huge_query_string_gets_414(server, redis_client):
    query = "&".join(f"flag{i}" for i in range(4000))
    got, _, _ = raw_request(server.port, handshake(f"/ws/door?{query}"))
    assert got == 414
    assert_still_serving(server, redis_client)


def test_huge_headers_get_431(server, redis_client):
    extra = "".join(f"X-Filler-{i}: {'x' * 100}\r\n" for i in range(200))
    got, _, _ = raw_request(server.port, handshake(extra=extra))
    assert got == 431
    assert_still_serving(server, redis_client)


def test_the_head_size_is_a_setting(twistd_servers):
    server = twistd_servers({"WS4REDIS_MAX_HEADER_SIZE": 1024})
    got, _, _ = raw_request(server.port, handshake(extra=f"X-Filler: {'x' * 1000}\r\n"))
    assert got == 431
    with connect(server.ws_url("door?subscribe-broadcast"), open_timeout=TIMEOUT):
        pass


def test_a_slow_request_head_is_cut_off(twistd_servers, redis_client):
    """Slowloris: a head sent a few bytes at a time never completes in time."""
    server = twistd_servers({"WS4REDIS_HANDSHAKE_TIMEOUT": 1})
    request = handshake()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        answer = b""
        for i in range(0, len(request), 4):
            try:
                sock.sendall(request[i : i + 4])
            except OSError:
                break
            time.sleep(0.1)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(4096)
            sock.setblocking(True)
            if answer:
                break
        sock.settimeout(TIMEOUT)
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    assert_still_serving(server, redis_client)


def test_an_idle_connection_that_never_asks_is_closed(twistd_servers):
    server = twistd_servers({"WS4REDIS_HANDSHAKE_TIMEOUT": 1})
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert time.monotonic() - started < 3


def test_keep_alive_requests_each_get_their_own_deadline(twistd_servers):
    server = twistd_servers({"WS4REDIS_HANDSHAKE_TIMEOUT": 1})
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        for _ in range(3):
            time.sleep(0.6)  # together longer than the deadline, each one shorter
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = b""
            while not response.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(4096)
                assert chunk, f"closed after {response!r}"
                response += chunk
            assert response.startswith(b"HTTP/1.1 200")
            assert b"testproject" in response


# -- frames --------------------------------------------------------------------------


BAD_FRAMES = {
    "invalid UTF-8 text": (lambda ws: ws.send_frame(0x1, b"\xff\xfe"), 1007),
    "unmasked": (lambda ws: ws.send_frame(0x1, b"hello", masked=False), 1002),
    "reserved bits": (lambda ws: ws.send_frame(0x1, b"hello", rsv=0b100), 1002),
    "unknown opcode": (lambda ws: ws.send_frame(0x3, b"hello"), 1002),
    "fragmented ping": (lambda ws: ws.send_frame(0x9, b"ping", fin=False), 1002),
    "continuation without a start": (lambda ws: ws.send_frame(0x0, b"orphan"), 1002),
    "new message inside a fragmented one": (
        lambda ws: (ws.send_frame(0x1, b"one", fin=False), ws.send_frame(0x1, b"two")),
        1002,
    ),
    "control frame over 125 bytes": (lambda ws: ws.send_frame(0x9, b"p" * 126), 1002),
    "message over WS4REDIS_MAX_MESSAGE_SIZE": (lambda ws: ws.send_frame(0x1, b"m" * (1024 * 1024 + 1)), 1009),
}


@pytest.mark.parametrize(("send", "code"), BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_a_frame_breaking_the_protocol_gets_its_close_code(server, redis_client, send, code):
    ws = RawSocket(server.port)
    try:
        send(ws)
        assert ws.close_code() == code
    finally:
        ws.close()
    assert_still_serving(server, redis_client)


def test_fragments_with_a_ping_between_them_make_one_message(server, redis_client):
    facility = unique("fragments")
    ws = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo")
    try:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        ws.send_frame(0x1, b"frag", fin=False)
        ws.send_frame(0x9, b"are you there")
        ws.send_frame(0x0, "ment é".encode())
        assert ws.read_frame() == (0xA, b"are you there")
        assert ws.read_frame() == (0x1, "fragment é".encode())
    finally:
        ws.close()


def test_a_binary_frame_is_published_as_is(server, redis_client):
    facility = unique("binary")
    listener = listening(redis_client, f"broadcast:{facility}")
    ws = RawSocket(server.port, f"/ws/{facility}?publish-broadcast")
    try:
        ws.send_frame(0x2, b"\x00\xffbinary")
        assert listener.get_message(timeout=TIMEOUT)["data"] == b"\x00\xffbinary"
    finally:
        ws.close()
        listener.close()


# -- publish rate ---------------------------------------------------------------------


def test_a_client_publishing_too_fast_is_closed_with_1008(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_MAX_PUBLISH_RATE": 5})
    facility = unique("rate")
    listener = listening(redis_client, f"broadcast:{facility}")
    ws = RawSocket(server.port, f"/ws/{facility}?publish-broadcast")
    try:
        for i in range(20):
            ws.send_frame(0x1, f"message {i}".encode())
        assert ws.close_code() == 1008
    finally:
        ws.close()
    received = []
    while (message := listener.get_message(timeout=0.5)) is not None:
        received.append(message["data"])
    listener.close()
    assert received == [f"message {i}".encode() for i in range(5)]
    assert "WSPOLICY" in server.log()
    assert "WS4REDIS_MAX_PUBLISH_RATE" in server.log()
    assert_still_serving(server, redis_client)


def test_a_client_within_the_rate_is_never_closed(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_MAX_PUBLISH_RATE": 5})
    facility = unique("rate-ok")
    with connect(server.ws_url(f"{facility}?publish-broadcast&subscribe-broadcast&echo"), open_timeout=TIMEOUT) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        for i in range(8):
            ws.send(f"paced {i}")
            assert ws.recv(timeout=TIMEOUT) == f"paced {i}"
            time.sleep(0.25)


#: A session cookie (of no session): the handshake goes to Django's threads,
#: where one without it is decided on the reactor (django_bridge.reads_nothing).
TO_A_THREAD = "Cookie: sessionid=nosuchsession\r\n"


def busy_threads(server, seconds: float) -> list[socket.socket]:
    """Requests that keep Django's ten threads busy for ``seconds``: a
    handshake arriving now waits for a thread. Their sockets, to read or close."""
    busy = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) for _ in range(10)]
    for sock in busy:
        sock.sendall(f"GET /slow/?seconds={seconds} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return busy


def test_what_a_client_sends_before_the_101_is_not_another_handshake(server, redis_client):
    """Autobahn took each head sent while Django was authorizing the first for
    a new handshake: two 101s on one socket, and subscriptions that outlived
    it (its connectionLost raised), each counted against the caps for ever."""
    first, later = unique("first"), unique("later")
    # Django's ten threads busy for a second: the first handshake waits for one.
    busy = busy_threads(server, 1)
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake(f"/ws/{first}?subscribe-broadcast", extra=TO_A_THREAD))
        time.sleep(0.2)
        for _ in range(5):
            sock.sendall(handshake(f"/ws/{later}?subscribe-broadcast"))
            time.sleep(0.05)
        answer = b""
        try:
            while chunk := sock.recv(65536):  # the early heads are frames once it is open: 1002
                answer += chunk
        except TimeoutError:
            pass  # still open: the answer tells why
    assert answer.count(b"HTTP/1.1 101 ") == 1, answer
    deadline = time.monotonic() + TIMEOUT
    channels = [f"broadcast:{first}".encode(), f"broadcast:{later}".encode()]
    while any(count for _, count in redis_client.pubsub_numsub(*channels)):
        assert time.monotonic() < deadline, redis_client.pubsub_numsub(*channels)
        time.sleep(0.05)
    assert "AlreadyCalledError" not in server.log()
    for sock in busy:
        sock.close()
    assert_still_serving(server, redis_client)


def test_what_a_client_sends_before_the_101_is_read_once_at_most(server, redis_client):
    """While Django decides (its threads busy here), a client pushing 32 MiB
    after its head is not read further: the server does not grow, and the
    sender is stopped by the kernel's buffers."""
    busy = busy_threads(server, 2)
    time.sleep(0.2)
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake(f"/ws/{unique('early')}?subscribe-broadcast", extra=TO_A_THREAD))
        time.sleep(0.3)  # the head is with Django now; what follows reaches the websocket protocol
        sock.setblocking(False)
        sent, chunk, deadline = 0, b"x" * 65536, time.monotonic() + 1.5
        while sent < 32 * 2**20 and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        growth = (process.memory_info().rss - before) / 2**20
    assert sent < 32 * 2**20, "the server kept reading what came before the 101"
    assert growth < 4, f"server RSS +{growth:.1f} MiB"
    for sock in busy:
        sock.close()
    assert_still_serving(server, redis_client)


def test_a_handshake_dropped_while_django_decides_is_not_opened_later(twistd_servers, redis_client):
    """Autobahn drops a handshake past WS4REDIS_HANDSHAKE_TIMEOUT even while
    Django still decides; when Django then answered, the socket was opened all
    the same: subscribed and counted among the open ones for ever."""
    server = twistd_servers({"WS4REDIS_HANDSHAKE_TIMEOUT": 1})
    facility = unique("late")
    busy = busy_threads(server, 2)
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake(f"/ws/{facility}?subscribe-broadcast", extra=TO_A_THREAD))
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:  # Autobahn aborts
            answer = b""
        assert answer == b"", answer  # dropped at the deadline, before any 101
    for sock in busy:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the threads are free again
        sock.close()
    time.sleep(0.5)
    assert dict(redis_client.pubsub_numsub(f"broadcast:{facility}"))[f"broadcast:{facility}".encode()] == 0
    assert f"WSCONNECT /ws/{facility}" not in server.log()
    assert_still_serving(server, redis_client)
