"""``--metrics`` with ``--workers``: the supervisor serves the endpoint.

Each worker serves its own metrics (metrics.py) on a UNIX socket in a
directory only this user can enter; at every scrape the supervisor asks
each of its workers, adds a ``worker`` label (the worker's slot) to what
each answers and serves the lot, with its own ``ws4redis_workers_ready``.
Its ``/health`` answers 200 while it is not stopping and at least one
worker answers 200 to its own."""

from __future__ import annotations

import contextlib
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
from twisted.python import failure
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from zope.interface import implementer

log = Logger()

#: Seconds a worker has to answer the supervisor's scrape.
WORKER_TIMEOUT = 5.0

#: Seconds a worker has to answer the supervisor's health check: well within a
#: load balancer's own (HAProxy's ``inter 2s``), so that one hung worker does
#: not make the whole node's check time out.
HEALTH_TIMEOUT = 1.0


class WorkerSockets:
    """The private directory of the workers' metrics sockets; one socket per
    worker process (a roll's new worker and the old one share a slot)."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="ws4redis-metrics-")
        self._spawned = 0

    def next_path(self, slot: int) -> str:
        self._spawned += 1
        return os.path.join(self.directory, f"worker-{slot}-{self._spawned}.sock")

    def discard(self, path: str) -> None:
        """A worker's socket and its lock file, once the worker has ended."""
        for name in (path, f"{path}.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@implementer(IAgentEndpointFactory)
class _ToSocket:
    """An agent's endpoints: the URI's path on the socket given as its host."""

    def __init__(self, reactor, paths: dict[bytes, str], timeout: float):
        self._reactor = reactor
        self._paths = paths
        self._timeout = timeout

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self._reactor, self._paths[uri.host], timeout=self._timeout)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line per worker and scrape


def _ask(reactor, socket_path: str, path: bytes, timeout: float) -> defer.Deferred:
    """(status, body) of GET ``path`` on a worker's metrics socket, within ``timeout`` seconds."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietFactory
    agent = Agent.usingEndpointFactory(reactor, _ToSocket(reactor, {b"worker": socket_path}, timeout), pool=pool)
    d = agent.request(b"GET", b"http://worker" + path)
    d.addCallback(lambda response: readBody(response).addCallback(lambda body: (response.code, body)))
    return d.addTimeout(timeout, reactor)


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
    #: Seconds each worker has to answer.
    timeout = WORKER_TIMEOUT

    def __init__(self, supervisor):
        super().__init__()
        self._supervisor = supervisor
        #: The requests waiting for the gathering under way, if one is.
        self._waiting: list[defer.Deferred] | None = None

    def _ready(self) -> list:
        """The workers serving a slot now, ready, with a metrics socket."""
        return [
            worker
            for _, worker in sorted(self._supervisor.workers.items())
            if worker.ready and worker.exit is None and worker.metrics_socket
        ]

    def _shared(self, path: bytes) -> defer.Deferred:
        """``_each(path)``, one gathering for every request that comes while it runs:
        a flood of scrapes asks each worker once at a time, not once per request."""
        mine: defer.Deferred = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(mine)
            return mine
        waiting = self._waiting = [mine]

        def fan_out(result):
            self._waiting = None
            for each in waiting:
                if isinstance(result, failure.Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        self._each(path).addBoth(fan_out)
        return mine

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

        asked = [
            _ask(reactor, worker.metrics_socket, path, self.timeout).addErrback(failed, worker) for worker in workers
        ]
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

    def _failed(self, request: server.Request, gone: Callable[[], bool], what: str):
        """An errback: the failure logged and the request answered 500 (never left hanging)."""

        def failed(reason: failure.Failure) -> None:
            log.failure(what, reason)
            self._answer(request, gone, 500, b"text/plain; charset=utf-8", b"Internal Server Error\n")

        return failed


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

        self._shared(b"/metrics").addCallback(gathered).addErrback(
            self._failed(request, gone, "Gathering the workers' metrics failed")
        )
        return server.NOT_DONE_YET


class GatheredHealth(_Gathering):
    """``/health`` of the supervisor: 200 while it is not stopping and a worker is healthy."""

    timeout = HEALTH_TIMEOUT

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
        self._shared(b"/health").addCallback(gathered).addErrback(
            self._failed(request, gone, "Asking the workers' health failed")
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
