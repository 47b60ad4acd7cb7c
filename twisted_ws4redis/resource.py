"""One port, two doors: paths under WEBSOCKET_URL go to the websocket
protocol, everything else to Django's WSGI application (or 404 without one).
Before either, the HTTP channel bounds how long and how large a request's
head may be."""
from __future__ import annotations

import re

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import Resource

from .descriptors import ConnectionBudget

log = Logger()

# Characters that str.splitlines() (used by Autobahn's header parser) treats as
# line breaks but HTTP does not: a value holding one would smuggle a header past
# Twisted's parser into Autobahn's.
_SMUGGLING = re.compile(rb"[\r\n\x0b\x0c\x1c\x1d\x1e\x85]")

#: Seconds a client refused for want of descriptors is asked to wait (HTTP 503).
RETRY_AFTER = b"10"


class WebSocketDoor(WebSocketResource):
    """Autobahn's resource, behind checks that Twisted's HTTP parser leaves to us."""

    def render(self, request: server.Request):
        # First, before any parsing or Django work: the cheapest refusal.
        if not self._factory.budget.may_open_websocket():
            request.setHeader(b"retry-after", RETRY_AFTER)
            return _refuse(request, 503, "Service Unavailable",
                           "Too many websockets on this server (WS4REDIS_MAX_CONNECTIONS); try again later.")
        if request.clientproto != b"HTTP/1.1":
            return _refuse(request, 505, "HTTP Version Not Supported", "Websockets need HTTP/1.1.")
        for name, values in request.requestHeaders.getAllRawHeaders():
            if _SMUGGLING.search(name) or any(_SMUGGLING.search(value) for value in values):
                return _refuse(request, 400, "Bad Request", "Control characters in a header.")
        return super().render(request)


def _refuse(request: server.Request, code: int, brief: str, detail: str) -> bytes:
    """An error page, then the end of the connection: a client that asked for
    an upgrade has nothing more to say on it."""
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False
    return errorPage(code, brief, detail).render(request)


class Root(Resource):
    """The site's only resource; a leaf, so that WSGI sees the whole path."""

    isLeaf = True

    def __init__(self, websocket_url: str, websocket: Resource, wsgi: Resource | None):
        super().__init__()
        self._websocket_url = websocket_url.encode("ascii")
        self._websocket = websocket
        self._wsgi = wsgi or notFound("No Such Resource", "Only websockets are served here.")
        #: HTTP requests being answered, which a graceful stop lets finish.
        self.in_flight: set[server.Request] = set()

    def render(self, request: server.Request):
        if request.path.startswith(self._websocket_url):
            return self._websocket.render(request)
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

    def getHost(self):
        address = super().getHost()
        return address if hasattr(address, "port") else _LocalAddress()

    def getClientAddress(self):
        address = super().getClientAddress()
        return address if hasattr(address, "host") else _LocalAddress()


class Channel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel with two limits it lacks: a request's head
    (request line and headers) must arrive within ``site.head_timeout`` seconds
    of the connection, or of the previous response, and be at most
    ``site.max_head_size`` bytes. A client that sends its head a byte at a time
    (slowloris) no longer holds a connection for ever."""

    _deadline = None
    _head_bytes = 0  # of complete lines
    _head_begun = False  # any byte of the head received

    @property
    def MAX_LENGTH(self) -> int:  # noqa: N802 (LineReceiver's name): the longest line
        return self.site.max_head_size

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.site.budget.connection_opened():
            self._give_up(503, "Service Unavailable", "Too many connections; try again later.")
            return
        self._expect_head()

    def _expect_head(self) -> None:
        self._head_bytes = 0
        self._head_begun = False
        self._deadline = self.callLater(self.site.head_timeout, self._head_too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        self._head_begun = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._head_bytes + len(line) + 2 > self.site.max_head_size:
            self.lineLengthExceeded(line)
            return
        self._head_bytes += len(line) + 2
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_bytes == 0:
            self._give_up(414, "URI Too Long", "The request line is too long.")
        else:
            self._give_up(431, "Request Header Fields Too Large", "The request head is too large.")

    def allHeadersReceived(self) -> None:
        self._stop_deadline()
        super().allHeadersReceived()

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
            self.transport.loseConnection()  # an idle keep-alive connection

    def _give_up(self, code: int, phrase: str, detail: str) -> None:
        """Answer ``code`` and close: the rest of what the client sends is unusable."""
        self._stop_deadline()
        if self.transport is None:
            return
        peer = self.transport.getPeer()
        log.info("HTTP {code} to {peer}: {detail}", code=code, peer=str(peer), detail=detail)
        body = f"{detail}\n".encode()
        self.transport.write(
            f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body)
        self.transport.loseConnection()  # LineReceiver parses no further line

    def connectionLost(self, reason) -> None:
        # Not called once the connection became a websocket: the websocket
        # protocol, its new owner, tells the budget when it is lost.
        self.site.budget.connection_closed()
        self._stop_deadline()
        super().connectionLost(reason)


class Site(server.Site):
    """The server's site: its channels are ``Channel``, its requests ``Request``."""

    protocol = Channel
    requestFactory = Request

    def __init__(self, resource, *, head_timeout: float, max_head_size: int, budget: ConnectionBudget, **kwargs):
        super().__init__(resource, **kwargs)
        self.head_timeout = head_timeout
        self.max_head_size = max_head_size
        #: every connection of this site counts against the descriptors (descriptors.py)
        self.budget = budget
