"""One port, two doors: paths under WEBSOCKET_URL go to the websocket
protocol, everything else to Django's WSGI application (or 404 without one)."""
from __future__ import annotations

import re

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.web import server
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import Resource

# Characters that str.splitlines() (used by Autobahn's header parser) treats as
# line breaks but HTTP does not: a value holding one would smuggle a header past
# Twisted's parser into Autobahn's.
_SMUGGLING = re.compile(rb"[\r\n\x0b\x0c\x1c\x1d\x1e\x85]")


class WebSocketDoor(WebSocketResource):
    """Autobahn's resource, behind checks that Twisted's HTTP parser leaves to us."""

    def render(self, request: server.Request):
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

    def render(self, request: server.Request):
        if request.path.startswith(self._websocket_url):
            return self._websocket.render(request)
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
