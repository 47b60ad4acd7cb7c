"""The health check for load balancers (WS4REDIS_HEALTH_URL, and ``/health``
of the metrics endpoint): 200 while this server can take new websockets,
503 once Redis is unreachable or a graceful stop has begun. Answered on the
reactor, without Django, at the cost of two attribute reads."""

from __future__ import annotations

import json

from twisted.web import server
from twisted.web.resource import Resource


class Health(Resource):
    """GET and HEAD (twisted.web answers HEAD with GET's headers); any other method is 405."""

    isLeaf = True

    def __init__(self, bus):
        super().__init__()
        self._bus = bus
        #: the server's top service (set once it exists): not running = stopping
        self.service = None

    def stopping(self) -> bool:
        return self.service is not None and not self.service.running

    def healthy(self) -> bool:
        return bool(self._bus.reachable) and not self.stopping()

    def render_GET(self, request: server.Request) -> bytes:
        redis, stopping = bool(self._bus.reachable), self.stopping()
        healthy = redis and not stopping
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body = {"status": "ok" if healthy else "unavailable", "redis": redis, "stopping": stopping}
        return json.dumps(body, separators=(",", ":")).encode("ascii") + b"\n"

    def render_HEAD(self, request: server.Request) -> bytes:
        """GET's status and headers, no body (which twisted.web would log a warning about)."""
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
