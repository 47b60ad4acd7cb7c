"""Helpers for your project's tests: the real server for your settings on a
free port with a private Redis, websocket clients (anonymous or logged in),
publishing, and waiting for messages with a timeout.

- ``Ws4RedisLiveServerTestCase``: a ``TransactionTestCase`` (like Django's
  ``LiveServerTestCase``) with one server per test class.
- ``ws4redis_live_server``: the same as a pytest fixture (one server per test);
  ``pytest_plugins = ["twisted_ws4redis.testing"]`` in your conftest.
- ``LiveServer``: the server itself, a context manager, for other set-ups.

Design: the server runs **in the test process**, on a reactor kept running in
a daemon thread (``server.reactor_thread``: a reactor runs only once per
process, so each server is a service started and stopped on it). The alternative, a
subprocess (Channels' ``ChannelsLiveServerTestCase`` runs Daphne in one), sees
only what another process can see: no in-memory SQLite test database (Channels
refuses those), no ``override_settings``. In-process, the server's Django work
(handshakes, views, hooks) reads the test database and the test's settings
directly: what a test creates and commits is visible to it. As Django's
``LiveServerTestCase`` does, an in-memory SQLite test database is shared by
handing the test thread's connection to the server's worker threads: with a
connection each, SQLite's shared cache fails a read with "database table is
locked" while the test holds a write transaction. The price: the project's
tests must not run a reactor of their own (trial, pytest-twisted) in the
same process.

The server's settings are read when it starts (as ``twistd ws4redis`` does):
override them for a whole test class (``@override_settings`` on the class) or
start a ``LiveServer`` inside the override. While a server runs,
``RedisPublisher`` in the test process publishes to its private Redis.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from importlib import import_module
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

from django.test import TransactionTestCase
from django.test.utils import modify_settings
from django.utils.functional import classproperty
from twisted.application.internet import StreamServerEndpointService

from . import conf
from .server.embedded import EmbeddedRedis
from .server.reactor_thread import call_in_reactor, daemon_thread, running_reactor

if TYPE_CHECKING:
    import threading

    from django.contrib.auth.base_user import AbstractBaseUser
    from django.http import HttpRequest
    from websockets.sync.client import ClientConnection

    from .redis_address import RedisAddress
    from .server.service import Ws4RedisService

__all__ = [
    "LiveServer",
    "WebSocketClient",
    "Ws4RedisLiveServerTestCase",
    "force_login",
    "session_cookie",
    "ws4redis_live_server",
]

#: Seconds a client waits, unless told otherwise (for the handshake, a message).
TIMEOUT = 5.0


def force_login(request: HttpRequest, user: AbstractBaseUser) -> None:
    """Log ``user`` in on ``request`` (in its session, else a new one of
    SESSION_ENGINE) and save the session, as ``django.test.Client.force_login``
    does: Django's ``login()`` with the first configured backend that can get
    users, so ``user_logged_in`` receivers run (ws4redis keeps the group
    names in the session then)."""
    from django.conf import settings
    from django.contrib.auth import load_backend, login

    backend = next(path for path in settings.AUTHENTICATION_BACKENDS if hasattr(load_backend(path), "get_user"))
    if getattr(request, "session", None) is None:
        request.session = import_module(settings.SESSION_ENGINE).SessionStore()
    login(request, user, backend)  # type: ignore[arg-type]  # any AUTH_USER_MODEL; the stubs know only User
    request.session.save()


def session_cookie(user: AbstractBaseUser) -> str:
    """A ``Cookie`` header value for a new session in which ``user`` is
    logged in (see ``force_login``)."""
    from django.conf import settings
    from django.http import HttpRequest

    request = HttpRequest()
    force_login(request, user)
    cookie = SimpleCookie()
    key = request.session.session_key
    if key is None:  # save() gave the session its key
        raise RuntimeError("the session has no key")
    cookie[settings.SESSION_COOKIE_NAME] = key
    return cookie.output(header="", attrs=[]).strip()


class WebSocketClient:
    """A websocket client (``websockets``' sync client) that reads with a
    timeout and fails with a clear ``AssertionError``. ``WS4REDIS_HEARTBEAT``
    messages are skipped. A context manager; ``connection`` is the
    ``websockets.sync.client.ClientConnection``."""

    def __init__(self, connection: ClientConnection, url: str, heartbeat: bytes | None, closing: contextlib.ExitStack):
        self.connection = connection
        self.url = url
        self._closing = closing
        self._heartbeat = heartbeat.decode() if heartbeat else None

    def receive(self, timeout: float = TIMEOUT) -> str | bytes:
        """The next message (``str`` for a text frame, ``bytes`` for a binary one)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.connection.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"no message on {self.url} within {timeout} s") from None
            if message != self._heartbeat:
                return message

    def wait_for(self, expected: str | bytes, timeout: float = TIMEOUT) -> list[str | bytes]:
        """Read until ``expected`` arrives; returns every message read, the last
        one ``expected``. Fails listing what came instead."""
        deadline = time.monotonic() + timeout
        seen: list[str | bytes] = []
        while True:
            try:
                seen.append(self.receive(max(0.0, deadline - time.monotonic())))
            except AssertionError:
                raise AssertionError(
                    f"{expected!r} did not arrive on {self.url} within {timeout} s; received {seen!r}"
                ) from None
            if seen[-1] == expected:
                return seen

    def send(self, message: str | bytes) -> None:
        self.connection.send(message)

    def close(self) -> None:
        self._closing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LiveServer:
    """The server (websockets and the project's WSGI application on one port)
    for the current Django settings (``host`` added to ALLOWED_HOSTS while it
    runs), on ``host`` at a free port, in this
    process, with a private redis-server (or ``redis_url``), Django's work on
    ``threads`` threads. ``start()`` and ``stop()`` block; use it as
    ``with LiveServer() as server: ...``."""

    def __init__(
        self, *, host: str = "127.0.0.1", redis_url: str | None = None, static: bool = False, threads: int = 4
    ):
        self.host = host
        self.port: int | None = None
        self.redis_url = redis_url
        self.static = static
        self.threads = threads
        self.redis: EmbeddedRedis | None = None
        self._service: Ws4RedisService | None = None
        self._shared_connections: list = []
        self._previous_override: RedisAddress | None = None
        self._hosts: modify_settings | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        from .server.service import ServerConfig, ThreadPoolService, make_service

        if self._service is not None:
            raise RuntimeError("this LiveServer is running already")
        running_reactor()
        # Before the settings are read: the server's host check allows this host.
        self._hosts = modify_settings(ALLOWED_HOSTS={"append": self.host})
        self._hosts.enable()
        redis_url = self.redis_url
        if redis_url is None:
            self.redis = EmbeddedRedis()
            self.redis.start()
            redis_url = f"unix://{self.redis.socket_path}"
        # make_service points this process' RedisPublisher at the server's Redis; stop() undoes it.
        self._previous_override = conf._redis_override
        try:
            config = ServerConfig(
                endpoints=[f"tcp:0:interface={self.host}"],
                redis=redis_url,
                static=self.static,
                threads=self.threads,
                grace=1.0,
            )
            service = self._service = make_service(config, running_reactor())
            pool = next(child for child in service if isinstance(child, ThreadPoolService)).pool
            pool.threadFactory = self._thread_factory()  # type: ignore[assignment]  # a Thread factory, as ThreadPool calls it
            self.port = call_in_reactor(self._listen, service).getHost().port
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _listen(service: Ws4RedisService) -> Any:
        """On the reactor: start everything; a Deferred of the listening port."""
        service.privilegedStartService()
        service.startService()
        listener = next(child for child in service if isinstance(child, StreamServerEndpointService))
        return listener._waitingForPort  # the endpoint's listen() Deferred

    def _thread_factory(self) -> Callable[..., threading.Thread]:
        """Worker threads that use the test thread's connections to in-memory
        SQLite databases (as Django's LiveServerThread does), as daemons."""
        from django.db import connections

        self._shared_connections = [
            connection
            for connection in connections.all()
            if connection.vendor == "sqlite" and connection.is_in_memory_db()  # type: ignore[attr-defined]  # sqlite's
        ]
        for connection in self._shared_connections:
            connection.inc_thread_sharing()

        def factory(*args: Any, target: Callable[[], object], **kwargs: Any) -> threading.Thread:
            def run() -> None:
                for connection in self._shared_connections:
                    connections[connection.alias] = connection
                try:
                    target()
                finally:
                    # A database may not be dropped while a connection to it is open.
                    connections.close_all()

            return daemon_thread(*args, target=run, **kwargs)

        return factory

    def stop(self) -> None:
        """Close the websockets, stop the server and its Redis."""
        service, self._service = self._service, None
        if service is not None and service.running:
            call_in_reactor(service.stopService)
        for connection in self._shared_connections:
            connection.dec_thread_sharing()
        self._shared_connections = []
        conf.set_redis_override(self._previous_override)
        if self._hosts is not None:
            self._hosts.disable()
            self._hosts = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- use -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port``, as ``LiveServerTestCase.live_server_url``."""
        return f"http://{self.host}:{self.port}"

    def ws_url(self, facility: str, *flags: str) -> str:
        """``ws://host:port`` + WEBSOCKET_URL + facility, with ``flags`` such as
        ``"subscribe-user"`` as the query."""
        path = conf.get_settings().websocket_url + quote(facility)
        return f"ws://{self.host}:{self.port}{path}" + (f"?{'&'.join(flags)}" if flags else "")

    def connect(
        self,
        facility: str,
        *flags: str,
        user: AbstractBaseUser | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> WebSocketClient:
        """Open a websocket on ``facility`` with ``flags``, as ``user`` (a new
        session, see ``session_cookie``) or anonymously, and return once the
        server has subscribed it and sent its kept messages, so that anything
        published afterwards reaches it. A refused handshake raises
        ``websockets.exceptions.InvalidStatus`` (its ``response.status_code``)."""
        try:
            from websockets.sync.client import connect
        except ImportError as exc:
            raise ImportError(
                "twisted_ws4redis.testing's websocket client needs the 'websockets' package: "
                "install the extra 'testing' (pip install 'twisted_ws4redis[testing]')"
            ) from exc

        headers = dict(headers or {})
        if user is not None:
            headers["Cookie"] = "; ".join(filter(None, [headers.get("Cookie"), session_cookie(user)]))
        url = self.ws_url(facility, *flags)
        # Entered as a context manager, as websockets (17.1) wants it used.
        with contextlib.ExitStack() as closing:
            connection = closing.enter_context(connect(url, additional_headers=headers, open_timeout=timeout))
            self._wait_live(connection.socket.getsockname()[1], timeout)
            return WebSocketClient(connection, url, conf.get_settings().heartbeat, closing.pop_all())

    def _wait_live(self, client_port: int, timeout: float) -> None:
        if self._service is None:
            raise RuntimeError("this LiveServer is not running")
        factory = self._service.factory

        def live() -> bool:
            # _ready: subscribed, kept messages sent (WebSocketProtocol._go_live).
            return any(
                getattr(protocol, "_ready", False)
                for protocol in factory.connections
                if protocol.transport.getPeer().port == client_port  # type: ignore[union-attr]  # connected, TCP
            )

        deadline = time.monotonic() + timeout
        while not call_in_reactor(live):
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not subscribe the websocket within {timeout} s")
            time.sleep(0.01)

    def publish(self, message: str | bytes, *, facility: str, expire: int | None = None, **audience: Any) -> int:
        """``RedisPublisher(facility=facility, **audience).publish_message(...)``
        (``audience``: ``broadcast``, ``users``, ``groups``, ``sessions``,
        ``request``); returns how many websockets' servers received it."""
        from .publisher import RedisPublisher
        from .redis_store import RedisMessage

        return RedisPublisher(facility=facility, **audience).publish_message(RedisMessage(message), expire)


class Ws4RedisLiveServerTestCase(TransactionTestCase):
    """``TransactionTestCase`` with the server running for the test class, as
    Django's ``LiveServerTestCase`` (``live_server_url``). ``self.connect(...)`` opens websockets closed after
    the test; ``self.publish(...)`` publishes to the server's Redis. Set
    ``serve_static = True`` to serve STATIC_URL as ``--static`` does."""

    host = "127.0.0.1"
    serve_static = False
    live_server: LiveServer

    @classproperty
    def live_server_url(cls) -> str:
        return cls.live_server.url

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.live_server = LiveServer(host=cls.host, static=cls.serve_static).start()
        cls.addClassCleanup(cls.live_server.stop)

    def connect(
        self,
        facility: str,
        *flags: str,
        user: AbstractBaseUser | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> WebSocketClient:
        """``LiveServer.connect``; the client is closed when the test ends."""
        client = self.live_server.connect(facility, *flags, user=user, headers=headers, timeout=timeout)
        self.addCleanup(client.close)
        return client

    def publish(self, message: str | bytes, *, facility: str, expire: int | None = None, **audience: Any) -> int:
        """``LiveServer.publish``."""
        return self.live_server.publish(message, facility=facility, expire=expire, **audience)


try:
    import pytest
except ImportError:  # pytest is optional: the fixture exists only where it runs
    pass
else:

    @pytest.fixture
    def ws4redis_live_server(request: Any) -> Iterator[LiveServer]:
        """A ``LiveServer`` for the test. With pytest-django, the test database
        is set up first; mark the test ``django_db(transaction=True)`` so that
        what it creates is visible to the server."""
        if request.config.pluginmanager.hasplugin("django"):
            request.getfixturevalue("django_db_setup")
        with LiveServer() as server:
            yield server
