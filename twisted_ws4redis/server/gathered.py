"""``--metrics`` with ``--workers``: the supervisor serves the endpoint.

Each worker serves its own metrics (metrics.py) on a UNIX socket in a
directory only this user can enter; at every scrape the supervisor asks
each of its workers, adds a ``worker`` label (the worker's slot) to what
each answers and serves the lot, with its own ``ws4redis_workers_ready``.
Its ``/health`` answers 200 while it is not stopping and at least one
worker answers 200 to its own."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from zope.interface import implementer

log = Logger()

#: Seconds a worker has to answer the supervisor's scrape or health check.
WORKER_TIMEOUT = 5.0


class WorkerSockets:
    """The private directory of the workers' metrics sockets; one socket per
    worker process (a roll's new worker and the old one share a slot)."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="ws4redis-metrics-")
        self._spawned = 0

    def next_path(self, slot: int) -> str:
        self._spawned += 1
        return os.path.join(self.directory, f"worker-{slot}-{self._spawned}.sock")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@implementer(IAgentEndpointFactory)
class _ToSocket:
    """An agent's endpoints: the URI's path on the socket given as its host."""

    def __init__(self, reactor, paths: dict[bytes, str]):
        self._reactor = reactor
        self._paths = paths

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self._reactor, self._paths[uri.host], timeout=WORKER_TIMEOUT)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line per worker and scrape


def _ask(reactor, socket_path: str, path: bytes) -> defer.Deferred:
    """(status, body) of GET ``path`` on a worker's metrics socket."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietFactory
    agent = Agent.usingEndpointFactory(reactor, _ToSocket(reactor, {b"worker": socket_path}), pool=pool)
    d = agent.request(b"GET", b"http://worker" + path)
    d.addCallback(lambda response: readBody(response).addCallback(lambda body: (response.code, body)))
    return d.addTimeout(WORKER_TIMEOUT, reactor)


def relabelled(answers: Iterable[tuple[int, str]]) -> list[Metric]:
    """The families of every worker's exposition, each sample with the worker's slot as a label."""
    families: dict[str, Metric] = {}
    for slot, text in answers:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                merged.add_sample(sample.name, {"worker": str(slot), **sample.labels}, sample.value)
    return list(families.values())


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


class _Gathering(Resource):
    isLeaf = True

    def __init__(self, supervisor):
        super().__init__()
        self._supervisor = supervisor

    def _ready(self) -> list:
        """The workers serving a slot now, ready, with a metrics socket."""
        return [
            worker
            for _, worker in sorted(self._supervisor.workers.items())
            if worker.ready and worker.exit is None and worker.metrics_socket
        ]

    def _each(self, path: bytes) -> defer.Deferred:
        """Fires with [(worker, (status, body) or None)] of every ready worker."""
        workers = self._ready()
        reactor = self._supervisor.reactor

        def failed(failure, worker):
            log.warn(
                "Worker {slot} did not answer {path}: {error}",
                slot=worker.slot,
                path=path.decode(),
                error=failure.getErrorMessage(),
            )

        asked = [_ask(reactor, worker.metrics_socket, path).addErrback(failed, worker) for worker in workers]
        return defer.gatherResults(asked).addCallback(lambda answers: list(zip(workers, answers, strict=True)))

    def _answer(
        self, request: server.Request, gone: Callable[[], bool], status: int, content_type: bytes, body: bytes
    ) -> None:
        """The response, unless the client has gone meanwhile (``gone``, from ``_watch``)."""
        if request.finished or gone():
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


def _watch(request: server.Request) -> Callable[[], bool]:
    """Whether ``request``'s client has gone (nothing may be written to it then)."""
    lost: list[bool] = []
    request.notifyFinish().addErrback(lambda _: lost.append(True))
    return lambda: bool(lost)


class GatheredMetrics(_Gathering):
    """``/metrics`` of the supervisor: every worker's, labelled ``worker``."""

    def render_GET(self, request: server.Request):
        gone = _watch(request)

        def gathered(answers) -> None:
            texts = [
                (worker.slot, answer[1].decode("utf-8"))
                for worker, answer in answers
                if answer is not None and answer[0] == 200
            ]
            ready = GaugeMetricFamily(
                "ws4redis_workers_ready", "Workers of the supervisor that are ready and answered this scrape."
            )
            ready.add_metric([], len(texts))
            configured = GaugeMetricFamily("ws4redis_workers", "Workers the supervisor runs (--workers).")
            configured.add_metric([], self._supervisor.count)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Fixed([ready, configured, *relabelled(texts)]))
            self._answer(request, gone, 200, CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(registry))

        self._each(b"/metrics").addCallback(gathered).addErrback(
            lambda failure: log.failure("Gathering the workers' metrics failed", failure)
        )
        return server.NOT_DONE_YET


class GatheredHealth(_Gathering):
    """``/health`` of the supervisor: 200 while it is not stopping and a worker is healthy."""

    def render_GET(self, request: server.Request):
        gone = _watch(request)

        def gathered(answers) -> None:
            healthy = sum(1 for _, answer in answers if answer is not None and answer[0] == 200)
            stopping = self._supervisor.stopping
            ok = healthy > 0 and not stopping
            answer = {"status": "ok" if ok else "unavailable", "workers_healthy": healthy, "stopping": stopping}
            body = json.dumps(answer, separators=(",", ":")).encode("ascii") + b"\n"
            self._answer(request, gone, 200 if ok else 503, b"application/json", body)

        if self._supervisor.stopping:
            gathered([])
            return server.NOT_DONE_YET
        self._each(b"/health").addCallback(gathered).addErrback(
            lambda failure: log.failure("Asking the workers' health failed", failure)
        )
        return server.NOT_DONE_YET


def supervisor_site(supervisor) -> server.Site:
    from .. import conf
    from .descriptors import ConnectionBudget
    from .metrics import endpoint_site

    settings = conf.get_settings()
    children = {b"metrics": GatheredMetrics(supervisor), b"health": GatheredHealth(supervisor)}
    # The supervisor's only clients: its budget is not capped (no limit applied).
    return endpoint_site(children, settings, ConnectionBudget(settings.reserved_descriptors, None))
