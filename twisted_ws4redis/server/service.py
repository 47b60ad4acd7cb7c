"""The server: endpoints, thread pool, Redis clients, and the one site that
serves websockets and Django side by side. ``make_service`` is what both the
twistd plugin and the management commands (``runserver``, ``runws4redis``) run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.wsgi import WSGIResource

from .. import audience, conf
from ..redis_address import RedisAddress
from .cluster import ClusterBus
from .control import NodeControl
from .descriptors import raise_open_files_limit
from .embedded import EmbeddedRedis, EmbeddedRedisService
from .health import Health
from .logbridge import forward_to_stdlib, forward_to_twisted
from .outbox import buffered_bytes
from .presence import NodePresence
from .protocol import WebSocketFactory, wait_until
from .pubsub import RedisBus
from .reactor_thread import daemon_thread
from .resource import Root, Site, WebSocketDoor
from .sharedports import AdoptedEndpoint
from .tls import harden

log = Logger()


@dataclass
class ServerConfig:
    """What the command line chooses; the rest comes from Django's settings."""

    endpoints: list[str] = field(default_factory=lambda: ["tcp:8000"])
    wsgi: str | None = None  # dotted path; None: settings.WSGI_APPLICATION
    application: Callable | None = None  # a WSGI application itself (runserver's handler), instead of ``wsgi``
    serve_wsgi: bool = True
    threads: int = 10
    redis: str | None = None  # redis:// or unix:// URL, or "embedded"; None: WS4REDIS_CONNECTION
    static: bool = False
    grace: float = 10.0  # seconds a stop waits for HTTP requests being answered
    workers: int | None = None  # worker processes under a supervisor (supervisor.py); None: this process serves
    inherited: list[int] = field(default_factory=list)  # a worker's: the listening descriptor of each endpoint
    metrics: str | None = None  # endpoint of /metrics and /health (metrics.py); None: none


@contextmanager
def listening(where: object, exit_on_error: bool) -> Iterator[None]:
    """Around the binding of ``where``: with ``exit_on_error`` (the
    foreground: twistd -n, runws4redis) a port that cannot be bound ends the
    process with one line; otherwise the exception goes on (a daemonizing
    twistd reports it to the process that launched it)."""
    try:
        yield
    except (CannotListenError, OSError, OverflowError) as exc:
        if not exit_on_error:
            raise
        raise SystemExit(f"ws4redis: cannot listen on {where}: {exc}") from None


class ThreadPoolService(Service):
    """Owns the pool that runs all Django work (WSGI requests and handshakes)."""

    def __init__(self, pool: ThreadPool):
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        # Joining the workers here would block the reactor, which a request
        # still running needs to write its response: a deadlock.
        return threads.deferToThread(self.pool.stop)


class Ws4RedisService(MultiService):
    """Stops in a useful order: stop listening, close the websockets (1001),
    let the HTTP requests being answered finish (up to ``grace`` seconds),
    disconnect Redis, stop the threads, stop an embedded Redis."""

    def __init__(self, factory: WebSocketFactory, root: Root, reactor, grace: float):
        super().__init__()
        self.factory = factory
        self.root = root
        self.reactor = reactor
        self.grace = grace

    #: In the foreground (twistd -n, runws4redis) an endpoint that cannot be
    #: bound ends the process with one line. A daemonizing twistd needs the
    #: exception itself: it reports it to the process that launched it.
    exit_on_listen_error = False

    def privilegedStartService(self) -> None:
        # Before the first descriptor of a client: the caps follow the limit.
        try:
            self.factory.budget.apply(raise_open_files_limit())
        except ImproperlyConfigured as exc:
            raise SystemExit(f"ws4redis: {exc}") from None
        # The endpoints are bound here, before the reactor runs, before
        # privileges are dropped and before any thread or redis-server starts.
        for child in self:
            with listening(getattr(child, "description", child), self.exit_on_listen_error):
                child.privilegedStartService()

    @defer.inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        children = list(self)
        # The metrics endpoint answers (its /health: 503) until the end.
        listeners = [
            s for s in children if isinstance(s, StreamServerEndpointService) and not getattr(s, "metrics", False)
        ]
        yield defer.gatherResults([defer.maybeDeferred(s.stopService) for s in listeners], consumeErrors=True)
        yield self.factory.close_all()
        # Their connections, to see their last bytes written before the reactor
        # stops (it closes every socket then, dropping what is still buffered).
        answering = [request.channel.transport for request in self.root.in_flight]
        if answering:
            log.info("Waiting up to {grace} s for {count} HTTP request(s)", grace=self.grace, count=len(answering))
            finished = yield wait_until(self.reactor, lambda: not self.root.in_flight, self.grace)
            if not finished:
                log.warn(
                    "Stopping with {count} HTTP request(s) unfinished after {grace} s",
                    count=len(self.root.in_flight),
                    grace=self.grace,
                )
        for child in reversed([s for s in children if s not in listeners]):
            yield defer.maybeDeferred(child.stopService)
        # Once the threads are done, every response is complete: let it reach the kernel.
        yield wait_until(
            self.reactor,
            lambda: (
                not any(
                    transport is not None and transport.connected and buffered_bytes(transport)  # type: ignore[attr-defined]  # TCP
                    for transport in answering
                )
            ),
            2.0,
        )
        # twistd re-raises the signal that stopped the reactor once it is down,
        # so the exit status says "killed by SIGTERM". A completed graceful stop
        # is a success: exit 0, as process supervisors expect.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None


def load_wsgi_application(dotted_path: str | None):
    from django.core.servers.basehttp import get_internal_wsgi_application
    from django.utils.module_loading import import_string

    if dotted_path:
        try:
            return import_string(dotted_path)
        except ImportError as exc:
            raise ImproperlyConfigured(f"--wsgi: cannot import {dotted_path!r}: {exc}") from None
    return get_internal_wsgi_application()


def static_only(environ, start_response):
    """The WSGI application behind ``--static --no-wsgi``: what is not a static file is not found."""
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Only websockets and static files are served here.\n"]


def with_static_files(application):
    """Serve STATIC_URL from STATIC_ROOT (after collectstatic) or, without one,
    straight from the static files finders, in front of ``application``."""
    from whitenoise import WhiteNoise

    url = django_settings.STATIC_URL
    if not url or "://" in url or not url.startswith("/"):
        raise ImproperlyConfigured(f"--static needs a local STATIC_URL such as '/static/', got {url!r}")
    static = WhiteNoise(application, autorefresh=django_settings.DEBUG)
    root = getattr(django_settings, "STATIC_ROOT", None)
    if root:
        if not (os.path.isdir(root) and any(os.scandir(root))):
            log.warn(
                "--static: STATIC_ROOT {root} is empty or missing, so every static file is 404: "
                "run 'manage.py collectstatic' (or unset STATIC_ROOT to serve from the finders)",
                root=str(root),
            )
        static.add_files(str(root), prefix=url)
    else:
        from django.contrib.staticfiles import finders

        roots = [
            (storage.location, url + (getattr(storage, "prefix", None) or ""))
            for finder in finders.get_finders()
            for storage in getattr(finder, "storages", {}).values()
        ]
        # Django's finders let the first match win (STATICFILES_DIRS, then the
        # apps in INSTALLED_APPS order); WhiteNoise lets the last add_files() win.
        for location, prefix in reversed(roots):
            static.add_files(location, prefix=prefix)
    return static


def redis_address_for(choice: str | None) -> tuple[RedisAddress, EmbeddedRedis | None]:
    if choice == "embedded":
        embedded = EmbeddedRedis()
        return embedded.address, embedded
    if choice:
        return RedisAddress.from_url(choice), None
    return conf.get_settings().connection, None


def make_service(config: ServerConfig, reactor=None) -> Ws4RedisService:
    """The whole server as one service; Django must be set up already. From
    here on the server's log also goes to Django's LOGGING (see logbridge),
    and a signal receiver that raised (signals.py) to the server's log."""
    forward_to_stdlib()
    if reactor is None:
        from twisted.internet import reactor
    settings = conf.get_settings()
    if config.grace < 0:
        raise ImproperlyConfigured(f"--grace must be a number of seconds, at least 0, got {config.grace}")
    if config.threads < 1:
        raise ImproperlyConfigured(f"--threads must be at least 1, got {config.threads}")
    address, embedded = redis_address_for(config.redis)
    if config.redis:
        conf.set_redis_override(address)

    pool = ThreadPool(minthreads=1, maxthreads=config.threads, name="ws4redis-django")
    # Daemons: a process that ends without stopping its pool (the autoreloader's
    # child, on a code change) is not kept alive by it.
    pool.threadFactory = daemon_thread  # type: ignore[assignment]  # a Thread factory, as ThreadPool calls it
    bus = (ClusterBus if address.cluster else RedisBus)(address, reactor)
    factory = WebSocketFactory(settings, bus, pool, reactor)
    bus.watch(audience.control_channel(settings.prefix), NodeControl(factory))
    wsgi = None
    if config.serve_wsgi or config.static:
        application = static_only if not config.serve_wsgi else config.application or load_wsgi_application(config.wsgi)
        if config.static:
            application = with_static_files(application)
        wsgi = WSGIResource(reactor, pool, application)
    health = Health(bus)
    root = Root(
        settings.websocket_url,
        WebSocketDoor(factory),
        wsgi,
        (settings.health_url, health) if settings.health_url else None,
    )
    site = Site(
        root,
        reactor=reactor,
        head_timeout=settings.handshake_timeout,
        max_head_size=settings.max_header_size,
        max_body_size=settings.max_body_size,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
        budget=factory.budget,
    )

    top = Ws4RedisService(factory, root, reactor, config.grace)
    health.service = top
    if config.metrics:
        # The first child: bound first, stopped last.
        metrics_listener(config.metrics, factory, pool, health, reactor).setServiceParent(top)
    if embedded is not None:
        EmbeddedRedisService(embedded, reactor).setServiceParent(top)
    ThreadPoolService(pool).setServiceParent(top)
    bus.setServiceParent(top)
    if settings.presence:
        # After the bus: stopped before it, its last leaves still reach Redis.
        factory.presence = NodePresence(bus, settings, reactor)
        factory.presence.setServiceParent(top)
    if settings.auto_ping_interval:
        pinger = TimerService(settings.auto_ping_interval, factory.ping_all)
        pinger.clock = reactor
        pinger.setServiceParent(top)
    if config.inherited and len(config.inherited) != len(config.endpoints):
        raise ImproperlyConfigured(
            f"{len(config.inherited)} inherited descriptor(s) for {len(config.endpoints)} endpoint(s)"
        )
    for index, description in enumerate(config.endpoints):
        try:
            endpoint = serverFromString(reactor, description)
        except Exception as exc:  # noqa: BLE001 a bad string, or files (ssl: keys, certificates) that cannot be used
            raise ImproperlyConfigured(f"--endpoint {description!r} is not a valid endpoint: {exc}") from None
        endpoint = harden(endpoint, settings.tls_ciphers)
        if config.inherited:
            endpoint = AdoptedEndpoint(endpoint, config.inherited[index], reactor)
        listener = StreamServerEndpointService(endpoint, site)
        listener.description = description  # type: ignore[attr-defined]  # for listening()'s message
        # A port that cannot be bound must stop the start-up, not just be logged.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
        log.info("Serving websockets under {url} on {endpoint}", url=settings.websocket_url, endpoint=description)
    # Once the WSGI application is loaded: that runs django.setup() again, and
    # LOGGING's dictConfig takes the handlers off django's child loggers.
    forward_to_twisted("django.dispatch", reactor)
    return top


def metrics_listener(description: str, factory, pool, health: Health, reactor) -> StreamServerEndpointService:
    """The ``--metrics`` endpoint's service (metrics.py)."""
    from .metrics import metrics_site

    try:
        endpoint = serverFromString(reactor, description)
    except Exception as exc:  # noqa: BLE001 (a bad string, or files it names that cannot be used)
        raise ImproperlyConfigured(f"--metrics {description!r} is not a valid endpoint: {exc}") from None
    site, _ = metrics_site(factory, pool, health)
    listener = StreamServerEndpointService(endpoint, site)
    listener.description = f"{description} (--metrics)"  # type: ignore[attr-defined]  # for listening()'s message
    listener.metrics = True  # type: ignore[attr-defined]  # stopped last (Ws4RedisService.stopService)
    listener._raiseSynchronously = True
    log.info("Serving metrics on {endpoint} (/metrics, /health)", endpoint=description)
    return listener


def run_in_foreground(service: Service, reactor=None, signal_handlers: bool = True, observer=None) -> None:
    """Start ``service``, bound already (``privilegedStartService()``), and run
    it until the reactor stops, logging to ``observer`` (default: text on
    stdout): the management commands' server, and a worker's (worker.py).
    ``signal_handlers=False`` where the reactor does not run in the main
    thread (under Django's autoreloader)."""
    if reactor is None:
        from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Resolving Redis' host name uses the reactor's own pool.
    reactor.getThreadPool().threadFactory = daemon_thread
    globalLogBeginner.beginLoggingTo([observer or textFileLogObserver(sys.stdout)])
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run(installSignalHandlers=signal_handlers)
