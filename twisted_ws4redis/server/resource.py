"""One port, two doors: paths under WEBSOCKET_URL go to the websocket
protocol, everything else to Django's WSGI application (or 404 without one).
Before either, the HTTP channel bounds how long and how large a request's
head and body may be, and refuses what the two parsers behind it (Twisted's,
then Autobahn's) would read differently."""

from __future__ import annotations

import re

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource

from .. import logsafe
from .descriptors import ConnectionBudget

log = Logger()

# Characters that str.splitlines() (used by Autobahn's header parser) treats as
# line breaks but HTTP does not: a value holding one would smuggle a header past
# Twisted's parser into Autobahn's.
_SMUGGLING = re.compile(rb"[\r\n\x0b\x0c\x1c\x1d\x1e\x85]")

# A request-target is printable ASCII (RFC 9112 3.2). Twisted lets 0x7f-0xb0
# through, which Autobahn's parser reads as line breaks (0x85) or spaces (0xa0).
_REQUEST_TARGET = re.compile(rb"[\x21-\x7e]+")
#: Seconds a client refused with 503 (no descriptors to spare, Redis unreachable) is asked to wait.
RETRY_AFTER = b"10"


class WebSocketDoor(WebSocketResource):
    """Autobahn's resource, behind checks that Twisted's HTTP parser leaves to us."""

    def render(self, request: server.Request):
        # First, before any parsing or Django work: the cheapest refusals.
        stats = self._factory.stats
        if not self._factory.budget.may_open_websocket():
            stats.handshake_refused("max_connections")
            return _unavailable(
                request, "Too many websockets on this server (WS4REDIS_MAX_CONNECTIONS); try again later."
            )
        if not self._factory.bus.reachable:
            # A websocket could not subscribe: the client retries later rather
            # than holding a socket that would receive nothing.
            stats.handshake_refused("redis_unavailable")
            return _unavailable(request, "Redis is unreachable from this server; try again later.")
        # RFC 6455 4.2.1 asks for 400: Twisted takes no other major version than 1.
        if request.clientproto != b"HTTP/1.1":
            stats.handshake_refused("bad_request")
            return _refuse(request, 400, "Bad Request", "Websockets need HTTP/1.1.")
        for name, values in request.requestHeaders.getAllRawHeaders():
            if _SMUGGLING.search(name) or any(_SMUGGLING.search(value) for value in values):
                stats.handshake_refused("bad_request")
                return _refuse(request, 400, "Bad Request", "Control characters in a header.")
        return super().render(request)


def _unavailable(request: server.Request, detail: str) -> bytes:
    """503 with Retry-After: the server cannot take a websocket now, but will."""
    request.setHeader(b"retry-after", RETRY_AFTER)
    return _refuse(request, 503, "Service Unavailable", detail)


def _refuse(request: server.Request, code: int, brief: str, detail: str) -> bytes:
    """An error page, then the end of the connection: a client that asked for
    an upgrade has nothing more to say on it."""
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False
    return errorPage(code, brief, detail).render(request)  # type: ignore[return-value]  # a page's bytes


class Root(Resource):
    """The site's only resource; a leaf, so that WSGI sees the whole path."""

    isLeaf = True

    def __init__(
        self,
        websocket_url: str,
        websocket: IResource,
        wsgi: IResource | None,
        health: tuple[str, IResource] | None = None,
    ):
        """``health``: (WS4REDIS_HEALTH_URL, its resource), answered before Django."""
        super().__init__()
        self._websocket_url = websocket_url.encode("ascii")
        self._websocket = websocket
        self._wsgi = wsgi or notFound("No Such Resource", "Only websockets are served here.")
        self._health_url: bytes | None = health[0].encode("ascii") if health else None
        self._health: IResource | None = health[1] if health else None
        #: HTTP requests being answered, which a graceful stop lets finish.
        self.in_flight: set[server.Request] = set()

    def is_websocket(self, target: bytes) -> bool:
        """Whether a request-target (path and query) leads to the websocket door."""
        return target.split(b"?", 1)[0].startswith(self._websocket_url)

    def is_health(self, path: bytes) -> bool:
        """Whether a request's path is WS4REDIS_HEALTH_URL."""
        return path == self._health_url

    def render(self, request: server.Request):
        if self.is_websocket(request.uri):
            return self._websocket.render(request)
        if self._health is not None and self.is_health(request.path):
            return self._health.render(request)
        self.in_flight.add(request)
        request.notifyFinish().addBoth(lambda _: self.in_flight.discard(request))
        return self._wsgi.render(request)


class _LocalAddress(IPv4Address):
    """Stands for a UNIX-socket peer where WSGI needs host and port."""

    def __init__(self):
        super().__init__("TCP", "127.0.0.1", 0)


class Request(server.Request):
    """``twisted.web.wsgi`` reads ``.host``/``.port`` of both addresses, which a
    ``unix:`` endpoint's addresses lack; give it a local stand-in."""

    channel: Channel

    def getHost(self):
        address = super().getHost()
        return address if hasattr(address, "port") else _LocalAddress()

    def getClientAddress(self):
        address = super().getClientAddress()
        return address if hasattr(address, "host") else _LocalAddress()

    def handleContentChunk(self, data: bytes) -> None:
        # The channel counts the body and stops keeping it once it refused it.
        if self.channel.body_received(len(data)):
            super().handleContentChunk(data)


class Channel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel with the limits it lacks: a request's head
    (request line and headers) must arrive within ``site.head_timeout`` seconds
    of the connection, or of the previous response, and be at most
    ``site.max_head_size`` bytes. A client that sends its head a byte at a time
    (slowloris) no longer holds a connection for ever.

    Twisted reads a whole body (into a temporary file past 100 kB) before any
    resource runs, so the body is judged here too, once the headers are in:
    none on the websocket door, at most ``site.max_body_size`` bytes elsewhere,
    sent within ``site.body_timeout`` seconds plus one second per
    ``site.body_min_rate`` bytes received (a trickled body is cut off, a slow
    but steady upload is not)."""

    _deadline = None
    _head_bytes = 0  # of complete lines
    _head_begun = False  # any byte of the head received
    _target: bytes | None = None  # this head's request-target, once its request line came
    _body_bytes = 0  # of this request's body, received so far
    _body_started = 0.0  # reactor time the body's headers were complete
    _refused = False  # a refusal was sent: what the client still sends is not served
    site: Site  # set by the Site that made it

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]  # LineReceiver's name: the longest line
        return self.site.max_head_size

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.site.budget.connection_opened():
            # Not logged one by one: the budget warns once per episode at its cap.
            self._give_up(503, "Service Unavailable", "Too many connections; try again later.", logged=False)
            return
        self._expect_head()

    def _expect_head(self) -> None:
        self._head_bytes = 0
        self._head_begun = False
        self._target = None
        self._deadline = self.callLater(self.site.head_timeout, self._head_too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing (a TLS transport may still hand over what it had decrypted)
        self._head_begun = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._head_bytes + len(line) + 2 > self.site.max_head_size:
            self.lineLengthExceeded(line)
            return
        self._head_bytes += len(line) + 2
        if line and self._target is None:  # the request line (Twisted skips one empty line before it)
            parts = line.split(b" ")
            self._target = parts[1] if len(parts) == 3 else b""  # else Twisted's 400
            if len(parts) == 3 and not _REQUEST_TARGET.fullmatch(self._target):
                self._give_up(400, "Bad Request", "The request-target is not printable ASCII.")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_bytes == 0:
            self._give_up(414, "URI Too Long", "The request line is too long.")
        else:
            self._give_up(431, "Request Header Fields Too Large", "The request head is too large.")

    def headerReceived(self, line: bytes) -> bool:
        name, _, value = line.partition(b":")
        value = value.strip(b" \t")
        # Over 18 digits is over any limit; over 4300, Twisted's int() raises out of the parser.
        if name.lower() == b"content-length" and value.isdigit() and len(value.lstrip(b"0")) > 18:
            self._refuse_body()
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        self._stop_deadline()
        headers = self.requests[-1].requestHeaders
        # Twisted's length: None for a chunked body, else Content-Length (0 without one).
        has_body = self.length != 0 or headers.hasHeader(b"transfer-encoding")
        if (has_body and self.site.resource.is_websocket(self._target)) or (
            self.length is not None and self.length > self.site.max_body_size
        ):
            self._refuse_body()
        else:
            super().allHeadersReceived()
            if self.length != 0:
                self._expect_body()

    def _refuse_body(self) -> None:
        """The body's size, or its presence on the websocket door, is refused before it is read."""
        if self.site.resource.is_websocket(self._target):
            self._give_up(400, "Bad Request", "A websocket handshake has no body.")
        else:
            self._body_too_large()

    def _expect_body(self) -> None:
        self._body_bytes = 0
        self._body_started = self.site.reactor.seconds()
        self._deadline = self.callLater(self.site.body_timeout, self._body_deadline)

    def body_received(self, count: int) -> bool:
        """Count ``count`` more bytes of the body; whether to keep them."""
        self._body_bytes += count
        if self._body_bytes > self.site.max_body_size and not self._refused:
            self._body_too_large()
        return not self._refused

    def _body_too_large(self) -> None:
        self._give_up(
            413,
            "Content Too Large",
            f"The request body is over {self.site.max_body_size} bytes (WS4REDIS_MAX_BODY_SIZE).",
        )

    def _body_deadline(self) -> None:
        """Due once ``body_timeout`` seconds have passed, plus one per ``body_min_rate`` bytes received."""
        elapsed = self.site.reactor.seconds() - self._body_started
        allowed = self.site.body_timeout + self._body_bytes / self.site.body_min_rate
        if elapsed < allowed:
            self._deadline = self.callLater(allowed - elapsed, self._body_deadline)
        else:
            self._deadline = None
            self._give_up(408, "Request Timeout", "The request body was not sent in time.")

    def allContentReceived(self) -> None:
        if self._refused:
            return  # the end of a body refused on the way
        self._stop_deadline()
        if self.length is None:
            # A chunked body, whole now: WSGI reads as many bytes as CONTENT_LENGTH says (none without it).
            self.requests[-1].requestHeaders.setRawHeaders(b"content-length", [b"%d" % self._body_bytes])
        super().allContentReceived()

    def requestDone(self, request) -> None:
        # Before Twisted parses a pipelined next request, which it may do at once.
        if self.persistent:
            self._expect_head()
        super().requestDone(request)

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._head_begun:
            self._give_up(408, "Request Timeout", "The request was not sent in time.")
        elif self.transport is not None:
            self.loseConnection()  # an idle keep-alive connection

    def _give_up(self, code: int, phrase: str, detail: str, logged: bool = True) -> None:
        """Answer ``code`` and close: the rest of what the client sends is unusable."""
        self._refused = True
        self._stop_deadline()
        if self.transport is None:
            return
        if logged:
            log.info("HTTP {code} to {peer}: {detail}", code=code, peer=str(self.transport.getPeer()), detail=detail)
        body = f"{detail}\n".encode()
        self.transport.write(
            f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        # HTTPChannel's, which unregisters the channel as the transport's producer
        # first: a TLS transport does not close while one is registered.
        self.loseConnection()  # LineReceiver parses no further line

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Not called once the connection became a websocket: the websocket
        # protocol, its new owner, tells the budget when it is lost.
        self.site.budget.connection_closed()
        self._stop_deadline()
        super().connectionLost(reason)


class _Redacted:
    """A request as twisted.web's access log formatter reads it, minus tokens:
    its target and Referer with secret query values redacted (logsafe.redact_query)."""

    def __init__(self, request: server.Request):
        self._request = request
        self.uri = logsafe.redact_query(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:  # twisted.web's name
        value = self._request.getHeader(name)
        return logsafe.redact_query(value) if value is not None and name.lower() == b"referer" else value

    def __getattr__(self, name: str):
        return getattr(self._request, name)


def access_log_line(timestamp: str, request: server.Request) -> str:
    """twisted.web's combined log line of ``request``, without its tokens."""
    return http.combinedLogFormatter(timestamp, _Redacted(request))


class Site(server.Site):
    """The server's site: its channels are ``Channel``, its requests ``Request``,
    its access log ``access_log_line`` (without the health checks: a load
    balancer's, every few seconds, would be most of it)."""

    protocol = Channel  # type: ignore[assignment]  # an HTTPChannel, as Site builds it
    requestFactory = Request

    def __init__(
        self,
        resource: Root,
        *,
        head_timeout: float,
        max_head_size: int,
        max_body_size: int,
        body_timeout: float,
        body_min_rate: float,
        budget: ConnectionBudget,
        **kwargs,
    ):
        super().__init__(resource, logFormatter=access_log_line, **kwargs)
        self.head_timeout = head_timeout
        self.max_head_size = max_head_size
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        #: every connection of this site counts against the descriptors (descriptors.py)
        self.budget = budget

    def log(self, request: http.Request) -> None:
        if not self.resource.is_health(request.path):
            super().log(request)
