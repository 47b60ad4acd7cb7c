"""HTTP requests that would cost the server more than their own connection:
bodies (on the websocket door, too large, too slow), a Host that is not the
site's, bytes in the request-target that the two parsers behind the channel
(Twisted's, then Autobahn's) would read differently. Each gets its status at
once, and the server's memory and temporary files stay as they were."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import time

import psutil
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from test_door import assert_still_serving, handshake, raw_request

TIMEOUT = 5
MiB = 2**20
#: A server with small body limits, to reach them quickly.
SMALL = {"WS4REDIS_MAX_BODY_SIZE": MiB, "WS4REDIS_BODY_TIMEOUT": 1}


def footprint(pid: int) -> tuple[int, int]:
    """The server's RSS, and the bytes of the files under the temporary
    directory it holds open (Twisted's request bodies are unlinked temporary
    files there, so only their descriptors show them)."""
    process = psutil.Process(pid)
    temp = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(entry.path).startswith(tempfile.gettempdir()):
                temp += os.stat(entry.path).st_size
        except OSError:
            pass  # closed meanwhile
    return process.memory_info().rss, temp


class Attack:
    """Sends ``head``, then ``chunk`` after ``chunk`` (up to ``total`` bytes)
    from a thread, while the test reads the answer and samples the server's
    footprint."""

    def __init__(self, server, head: bytes, total: int, chunk: bytes = b"x" * MiB):
        self.pid = server.process.pid
        self.before = footprint(self.pid)
        self.peak = self.before
        self.sent = 0
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        self.sock.sendall(head)
        self._total, self._chunk = total, chunk
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        try:
            while self.sent < self._total:
                self.sock.sendall(self._chunk)
                self.sent += len(self._chunk)
        except OSError:
            pass  # the server closed: what we were sending is not read

    def answer(self) -> bytes:
        """The server's answer, read until it closes; the footprint sampled meanwhile."""
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
                self._sample()
        except ConnectionResetError:
            pass  # our unread bytes made the server's kernel reset
        self._sender.join(TIMEOUT)
        self._sample()
        self.sock.close()
        return data

    def _sample(self) -> None:
        now = footprint(self.pid)
        self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))

    def growth_mib(self) -> tuple[float, float]:
        return ((self.peak[0] - self.before[0]) / MiB, (self.peak[1] - self.before[1]) / MiB)


def post(path: str, length: int | None) -> bytes:
    """The head of a POST whose body has ``length`` bytes (None: chunked)."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response from a connection kept open: its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = {
        line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
    }
    if headers.get(b"transfer-encoding") == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {rest!r}"
            rest += chunk
        body = b""
        while size := int(rest.split(b"\r\n", 1)[0], 16):
            rest = rest.split(b"\r\n", 1)[1]
            body, rest = body + rest[:size], rest[size + 2 :]
    else:
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            rest += sock.recv(65536)
        body = rest[:length]
    return int(head.split(b" ")[1]), body


def silent_for(sock: socket.socket, seconds: float) -> bool:
    """Whether the server says nothing (and does not close) for ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1, socket.MSG_PEEK)  # a byte of an answer, or b"" once closed
        return False
    except TimeoutError:
        return True
    finally:
        sock.settimeout(TIMEOUT)


# -- item 3: a websocket handshake has no body --------------------------------------------


def test_a_handshake_announcing_a_huge_body_gets_400_before_the_body(server, redis_client):
    """256 MiB announced, then sent as fast as the server takes them: the 400
    comes at once, the server reads none of it, its RSS does not grow."""
    attack = Attack(server, handshake(extra=f"Content-Length: {256 * MiB}\r\n"), 256 * MiB)
    answer = attack.answer()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"A websocket handshake has no body." in answer
    rss, temp = attack.growth_mib()
    assert attack.sent < 32 * MiB, f"the server took {attack.sent / MiB:.0f} MiB of the body"
    assert rss < 8, f"RSS +{rss:.1f} MiB, temporary files +{temp:.1f} MiB"
    assert temp < 1, f"RSS +{rss:.1f} MiB, temporary files +{temp:.1f} MiB"
    assert_still_serving(server, redis_client)


@pytest.mark.parametrize("framing", ["Transfer-Encoding: chunked", "Transfer-Encoding: identity", "Content-Length: 1"])
def test_a_handshake_with_any_body_framing_gets_400_before_the_body(server, framing):
    got, _, body = raw_request(server.port, handshake(extra=f"{framing}\r\n"))
    assert got == 400
    assert body == b"A websocket handshake has no body.\n"


# -- item 4: bodies on the Django side -------------------------------------------------------


def test_a_body_announced_over_the_limit_gets_413_before_it_is_read(server):
    """The default WS4REDIS_MAX_BODY_SIZE (10 MiB) against 300 MiB announced:
    Django never runs, no temporary file fills."""
    attack = Attack(server, post("/body-digest/", 300 * MiB), 300 * MiB)
    answer = attack.answer()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"over 10485760 bytes (WS4REDIS_MAX_BODY_SIZE)" in answer
    rss, temp = attack.growth_mib()
    assert attack.sent < 32 * MiB, f"the server took {attack.sent / MiB:.0f} MiB of the body"
    assert rss < 8, f"RSS +{rss:.1f} MiB, temporary files +{temp:.1f} MiB"
    assert temp < 1, f"RSS +{rss:.1f} MiB, temporary files +{temp:.1f} MiB"


@pytest.mark.parametrize(("path", "status"), [(b"/", 413), (b"/ws/door", 400)])
def test_a_content_length_of_5000_digits_is_refused_not_a_traceback(server, path, status):
    """Twisted's int() of it raises out of the HTTP parser: no answer, a
    traceback in the log for every such request."""
    got, _, _ = raw_request(
        server.port,
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + b"9" * 5000 + b"\r\nX-After: 1\r\n\r\n",
    )
    assert got == status
    assert "Unhandled Error" not in server.log()


def test_a_client_expecting_100_continue_gets_413_instead(server):
    """curl asks before sending a large body: it is told not to send it."""
    got, _, _ = raw_request(server.port, post("/body-digest/", 20 * MiB)[:-2] + b"Expect: 100-continue\r\n\r\n")
    assert got == 413


def test_a_chunked_body_gets_413_when_it_passes_the_limit(twistd_servers):
    server = twistd_servers(SMALL)
    piece = 64 * 1024
    chunk = f"{piece:x}\r\n".encode() + b"c" * piece + b"\r\n"
    before = footprint(server.process.pid)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(post("/body-digest/", None) + chunk * (MiB // piece))  # exactly the limit
        assert silent_for(sock, 0.5), "answered before the body passed the limit"
        during = footprint(server.process.pid)
        sock.sendall(chunk)
        status, body = read_response(sock)
    assert (status, body) == (413, b"The request body is over 1048576 bytes (WS4REDIS_MAX_BODY_SIZE).\n")
    assert during[1] - before[1] <= MiB + 64 * 1024, "more than the limit kept in temporary files"


def test_a_large_upload_within_the_limit_reaches_django_and_keep_alive_goes_on(server):
    """8 MiB under the default 10 MiB (past Django's 2.5 MiB DATA_UPLOAD_MAX_MEMORY_SIZE,
    which guards ``request.body`` only): the view reads it all; the connection
    then serves the next requests: a chunked body (which Django reads as far
    as CONTENT_LENGTH, set once the body is whole), then a GET."""
    payload = os.urandom(8 * MiB)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(post("/body-digest/", len(payload)) + payload)
        status, body = read_response(sock)
        assert status == 200, body
        assert json.loads(body) == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        sock.sendall(post("/body-digest/", None) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, body = read_response(sock)
        assert status == 200
        assert json.loads(body) == {"size": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()}
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock) == (200, b"testproject")


def test_a_trickled_body_gets_408_after_the_body_deadline(twistd_servers):
    """One byte every 0.2 s, far under WS4REDIS_BODY_MIN_RATE (500 bytes/s):
    408 once WS4REDIS_BODY_TIMEOUT (1 s here) has passed, not later."""
    server = twistd_servers(SMALL)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(post("/body-digest/", 100))
        started = time.monotonic()
        sock.setblocking(False)
        answer = b""
        while not answer and time.monotonic() - started < 4:
            try:
                sock.send(b"x")
                answer = sock.recv(4096)
            except BlockingIOError:
                pass
            time.sleep(0.2)
        sock.setblocking(True)
        while chunk := sock.recv(4096):
            answer += chunk
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.9 < elapsed < 2.5, f"cut off after {elapsed:.1f} s"


def test_a_steady_upload_outlives_the_body_timeout(twistd_servers):
    """10 kB at 5 kB/s take twice WS4REDIS_BODY_TIMEOUT (1 s here) but keep
    the minimum rate: every received byte extends the deadline."""
    server = twistd_servers(SMALL)
    payload = b"s" * 10_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(post("/body-digest/", len(payload)))
        started = time.monotonic()
        for i in range(0, len(payload), 500):
            sock.sendall(payload[i : i + 500])
            time.sleep(0.1)
        status, body = read_response(sock)
    assert time.monotonic() - started > 1.5
    assert status == 200
    assert json.loads(body)["size"] == len(payload)


# -- item 7: the Host is one of ALLOWED_HOSTS ----------------------------------------------------


def host_status(port: int, host: str, origin: str | None = None, extra: str = "") -> int:
    """The status a handshake with this ``Host`` (and ``Origin``, and ``extra`` headers) gets."""
    request = handshake(drop=("Host",), extra=f"Host: {host}\r\n" + (f"Origin: {origin}\r\n" if origin else "") + extra)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"closed after {head!r}"
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_a_dns_rebinding_page_is_refused_by_the_host_check(twistd_servers):
    """A page on evil.example, whose name now points at this server, opens a
    websocket: Host and Origin are both evil.example, "same origin" for the
    Origin check, and not one of ALLOWED_HOSTS."""
    server = twistd_servers({"ALLOWED_HOSTS": ["testserver.example"]})
    request = handshake(drop=("Host",), extra="Host: evil.example\r\nOrigin: http://evil.example\r\n")
    assert raw_request(server.port, request)[::2] == (400, b"The Host is not one of ALLOWED_HOSTS\n")
    # USE_X_FORWARDED_HOST is off: a forwarded host does not count.
    assert host_status(server.port, "evil.example", extra="X-Forwarded-Host: testserver.example\r\n") == 400
    assert host_status(server.port, "testserver.example:8000", "http://testserver.example:8000") == 101


def test_behind_a_proxy_the_forwarded_host_is_checked(twistd_servers):
    server = twistd_servers({"ALLOWED_HOSTS": ["testserver.example"], "USE_X_FORWARDED_HOST": True})
    forwarded = "X-Forwarded-Host: testserver.example\r\n"
    assert host_status(server.port, "127.0.0.1:8001", "https://testserver.example", forwarded) == 101
    assert host_status(server.port, "testserver.example", extra="X-Forwarded-Host: evil.example\r\n") == 400


def test_debug_without_allowed_hosts_accepts_localhost_as_django_does(twistd_servers):
    server = twistd_servers({"DEBUG": True, "ALLOWED_HOSTS": []})
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert host_status(server.port, host) == 101, host
    assert host_status(server.port, "evil.example") == 400


# -- item 8: the request-target is printable ASCII ------------------------------------------------


@pytest.mark.parametrize("byte", [b"\x85", b"\xa0", b"\x7f", b"\x00"], ids=["NEL", "NBSP", "DEL", "NUL"])
@pytest.mark.parametrize("path", [b"/ws/door", b"/"], ids=["websocket", "page"])
def test_a_request_target_outside_printable_ascii_gets_400(server, path, byte):
    """E.g. ``\\x85``, a line break to Autobahn's parser, smuggled a Cookie
    header past Twisted's (and any proxy's)."""
    request = handshake().replace(b"/ws/door?subscribe-broadcast", path + byte + b"Cookie:%20sessionid=stolen", 1)
    got, _, body = raw_request(server.port, request)
    assert (got, body) == (400, b"The request-target is not printable ASCII.\n")


def test_the_server_is_still_serving_after_the_bad_targets(server, redis_client):
    assert_still_serving(server, redis_client)


# -- the channel alone, on a fake clock: what is served after a refusal -------------------------


class Counting(Resource):
    """Stands for Django: counts the requests that reach it."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request):
        self.bodies.append(request.content.read())
        return b"served"


def channel(max_body_size: int = 1000):
    from twisted_ws4redis.server.descriptors import ConnectionBudget
    from twisted_ws4redis.server.resource import Root, Site

    clock, django = Clock(), Counting()
    site = Site(
        Root("/ws/", Resource(), django),
        reactor=clock,
        head_timeout=30,
        max_head_size=16384,
        max_body_size=max_body_size,
        body_timeout=1,
        body_min_rate=500,
        budget=ConnectionBudget(reserve=128, max_websockets=None),
    )
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, django


def test_nothing_reaches_django_after_a_body_passed_the_limit():
    """The rest of the read (the body's end, a pipelined request) is dropped."""
    protocol, transport, _, django = channel()
    protocol.dataReceived(
        post("/", None)
        + b"3e8\r\n"
        + b"a" * 1000
        + b"\r\n1\r\nb\r\n0\r\n\r\n"
        + b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.value().count(b"HTTP/1.1") == 1
    assert django.bodies == []
    assert transport.disconnecting


def test_a_body_at_the_limit_reaches_django_whole():
    protocol, transport, _, django = channel()
    protocol.dataReceived(post("/", None) + b"3e8\r\n" + b"a" * 1000 + b"\r\n0\r\n\r\n")
    assert django.bodies == [b"a" * 1000]
    assert transport.value().startswith(b"HTTP/1.1 200 ")


def test_the_body_deadline_grows_with_what_was_received():
    """1 s, plus 1 s per 500 bytes: 600 bytes give 2.2 s in all."""
    protocol, transport, clock, django = channel()
    protocol.dataReceived(post("/", 1000) + b"a" * 600)
    clock.advance(1.0)
    clock.advance(1.1)
    assert transport.value() == b""
    clock.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting
    protocol.dataReceived(b"b" * 400)  # too late: not served
    assert django.bodies == []
