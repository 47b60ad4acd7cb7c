"""Prometheus metrics (``--metrics=ENDPOINT``): ``GET /metrics`` and ``GET /health``.

The server counts with plain integers on the objects that do the work (the
factory's ``Stats``, the bus, the presence), and a collector reads them
when Prometheus scrapes. A counter of prometheus_client, with its lock, on
every delivery would double what a delivery costs (~0.26 µs); the bus adds
a burst's deliveries once, not once per socket. A scrape costs the same
whatever the number of websockets: nothing here iterates over them.

Labels stay bounded whatever clients do: a facility (chosen by the client)
is counted under the first pattern of WS4REDIS_METRICS_FACILITIES that
matches it whole, else ``other``; close codes and refusal reasons come from
fixed sets.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from typing import cast

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.web.resource import Resource

from .descriptors import ConnectionBudget
from .resource import Root, Site

#: The label of a facility that no pattern of WS4REDIS_METRICS_FACILITIES matches.
OTHER = "other"

#: Why a handshake was refused, the ``reason`` label's values.
REFUSALS = (
    "max_connections",  # 503: WS4REDIS_MAX_CONNECTIONS or the descriptors' cap
    "redis_unavailable",  # 503: Redis is unreachable from this server
    "bad_request",  # 400: not a valid websocket handshake (HTTP version, headers, Autobahn's checks)
    "facility",  # 400: the facility is not valid UTF-8 or does not match WS4REDIS_FACILITY_PATTERN
    "host",  # 400: the Host is not one of ALLOWED_HOSTS
    "origin",  # 403: WS4REDIS_ALLOWED_ORIGINS
    "forbidden",  # 403: the allowed-channels or process-request hook refused (PermissionDenied)
    "session_ended",  # 403: the session was logged out
    "timeout",  # 408, or the opening handshake's deadline passed
    "error",  # 500: a hook raised something else
    "other",  # any other code
)
#: The reason of a refusal that names none, by HTTP status.
#: 405 and 426 are Autobahn's answers to a request that is no websocket handshake (a POST, no Upgrade).
_REFUSAL_BY_STATUS = {
    400: "bad_request",
    403: "forbidden",
    405: "bad_request",
    408: "timeout",
    426: "bad_request",
    500: "error",
    503: "max_connections",
}

#: Close codes counted under their own number; any other is ``other``.
CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 4401})

#: Seconds: the upper bounds of the handshake latency histogram's buckets (+Inf follows).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def refusal_reason(reason: str | None, status: int) -> str:
    """``reason`` if it is one of REFUSALS, else the one ``status`` stands for."""
    if reason in REFUSALS:
        return reason
    return _REFUSAL_BY_STATUS.get(status, "other")


class Stats:
    """The websocket door's counters: plain integers, read at scrape time."""

    __slots__ = (
        "_patterns",
        "bytes_in",
        "closed",
        "latency_counts",
        "latency_sum",
        "messages_in",
        "open",
        "opened",
        "refused",
    )

    def __init__(self, patterns: tuple[re.Pattern, ...] = ()):
        self._patterns = patterns
        #: label -> open websockets (every label is there from the start: no series appears late)
        self.open: dict[str, int] = dict.fromkeys([pattern.pattern for pattern in patterns] + [OTHER], 0)
        self.opened = 0
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        #: close code (or "other") -> websockets closed with it
        self.closed: dict[str, int] = {}
        self.messages_in = 0
        self.bytes_in = 0
        #: handshakes per bucket of LATENCY_BUCKETS (the last: slower than all)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def facility_label(self, facility: str) -> str:
        for pattern in self._patterns:
            if pattern.fullmatch(facility):
                return pattern.pattern
        return OTHER

    def websocket_opened(self, facility: str, seconds: float) -> None:
        """A handshake succeeded after ``seconds`` (from the websocket door's takeover)."""
        label = self.facility_label(facility)
        self.open[label] += 1
        self.opened += 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def websocket_closed(self, facility: str, code: int | None, clean: bool) -> None:
        """An open websocket closed with the code of the peer's close frame
        (None: the frame had none, 1005), or without a close handshake (1006)."""
        self.open[self.facility_label(facility)] -= 1
        if not clean:
            code = 1006
        elif code is None:
            code = 1005
        key = str(code) if code in CLOSE_CODES else OTHER
        self.closed[key] = self.closed.get(key, 0) + 1

    def handshake_refused(self, reason: str) -> None:
        self.refused[reason] += 1


class ServerCollector(Collector):
    """Every ws4redis_ metric of one server, read from its objects at scrape time."""

    def __init__(self, factory, pool, health):
        self._factory = factory
        self._pool = pool
        self._health = health

    def collect(self) -> Iterator:
        factory = self._factory
        stats: Stats = factory.stats
        bus = factory.bus

        gauge = GaugeMetricFamily(
            "ws4redis_websockets_open",
            "Open websockets, by facility pattern (WS4REDIS_METRICS_FACILITIES).",
            labels=["facility"],
        )
        for label, count in stats.open.items():
            gauge.add_metric([label], count)
        yield gauge

        handshakes = CounterMetricFamily(
            "ws4redis_handshakes",
            "Websocket opening handshakes, by outcome and refusal reason.",
            labels=["outcome", "reason"],
        )
        handshakes.add_metric(["accepted", ""], stats.opened)
        for reason, count in stats.refused.items():
            handshakes.add_metric(["refused", reason], count)
        yield handshakes

        latency = HistogramMetricFamily(
            "ws4redis_handshake_seconds",
            "Seconds from the websocket handshake's request to the open websocket (Django's decision included).",
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_counts, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        latency.add_metric([], buckets, stats.latency_sum)
        yield latency

        closes = CounterMetricFamily(
            "ws4redis_websocket_closes",
            "Websockets closed after they opened, by close code (1006: no close handshake).",
            labels=["code"],
        )
        for code, count in sorted(stats.closed.items()):
            closes.add_metric([code], count)
        yield closes

        yield CounterMetricFamily(
            "ws4redis_messages_received",
            "Messages received from websockets (text and binary).",
            value=stats.messages_in,
        )
        yield CounterMetricFamily(
            "ws4redis_received_bytes",
            "Payload bytes of the messages received from websockets.",
            value=stats.bytes_in,
        )
        yield CounterMetricFamily(
            "ws4redis_messages_delivered",
            "Messages from Redis handed to websockets (one per listening websocket), persisted ones included.",
            value=bus.delivered,
        )
        yield CounterMetricFamily(
            "ws4redis_delivered_bytes",
            "Payload bytes of the messages handed to websockets.",
            value=bus.delivered_bytes,
        )
        yield CounterMetricFamily(
            "ws4redis_redis_messages",
            "Messages the Redis subscriber connection received for websockets.",
            value=bus.received,
        )

        yield GaugeMetricFamily(
            "ws4redis_redis_up",
            "1 while Redis is reachable from this server (new websockets can subscribe).",
            value=1 if bus.reachable else 0,
        )
        yield CounterMetricFamily(
            "ws4redis_redis_reconnects",
            "New subscriber connections to Redis after the first one (per shard).",
            value=bus.reconnects,
        )
        yield GaugeMetricFamily(
            "ws4redis_subscriptions", "Redis channels subscribed for websockets.", value=bus.channel_count
        )

        pool = self._pool
        yield GaugeMetricFamily(
            "ws4redis_threads_busy",
            "Threads of the Django pool running a job (WSGI requests, handshakes).",
            value=len(pool.working),
        )
        yield GaugeMetricFamily("ws4redis_threads_max", "The Django pool's most threads (--threads).", value=pool.max)
        yield GaugeMetricFamily(
            "ws4redis_threads_queued", "Jobs waiting for a thread of the Django pool.", value=pool.q.qsize()
        )

        yield GaugeMetricFamily(
            "ws4redis_healthy",
            "1 while the health check answers 200 (Redis reachable, not stopping).",
            value=1 if self._health.healthy() else 0,
        )

        if factory.settings.history_size:
            yield CounterMetricFamily(
                "ws4redis_history_publishes",
                "Publications recorded in the history (one per channel).",
                value=bus.history_publishes,
            )
            yield CounterMetricFamily(
                "ws4redis_history_recoveries",
                "Reads of the history after a message id (catch-up, ws4redis.v2).",
                value=bus.recoveries,
            )
        presence = factory.presence
        if presence is not None:
            changes = CounterMetricFamily(
                "ws4redis_presence_changes",
                "Joins and leaves of facilities counted for presence.",
                labels=["change"],
            )
            changes.add_metric(["join"], presence.joins)
            changes.add_metric(["leave"], presence.leaves)
            yield changes
            writes = CounterMetricFamily(
                "ws4redis_presence_writes", "Presence writes to Redis, by result.", labels=["result"]
            )
            writes.add_metric(["ok"], presence.writes_ok)
            writes.add_metric(["failed"], presence.writes_failed)
            yield writes


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def metrics_site(factory, pool, health: Resource):
    """The metrics endpoint's site: ``/metrics`` (this server's registry) and ``/health``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(factory, pool, health))
    site = endpoint_site({b"metrics": MetricsPage(registry), b"health": health}, factory.settings, factory.budget)
    return site, registry


class MetricsPage(Resource):
    """The exposition of ``registry``, made on the reactor: the collector reads
    the counters where they change, never from another thread (prometheus_client's
    own Twisted resource runs it in the reactor's thread pool)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self._registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


class _EndpointRoot(Resource):
    """The metrics endpoint's root, for the server's hardened site: no websocket door here."""

    def is_websocket(self, target: bytes) -> bool:
        return False

    def is_health(self, path: bytes) -> bool:
        return False


class EndpointSite(Site):
    """The server's site (resource.py: the same bounds on a request's head, no
    body at all) without an access log line per scrape or health check."""

    def log(self, request) -> None:
        pass


def endpoint_site(children: Mapping[bytes, Resource], settings, budget: ConnectionBudget) -> EndpointSite:
    """The site of a metrics endpoint serving ``children``; its connections count in ``budget``."""
    root = _EndpointRoot()
    for name, child in children.items():
        root.putChild(name, child)
    return EndpointSite(
        cast("Root", root),  # what the site's channel asks of its resource: is_websocket()
        head_timeout=settings.handshake_timeout,
        max_head_size=settings.max_header_size,
        max_body_size=0,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
        budget=budget,
    )
