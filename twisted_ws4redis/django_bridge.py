"""Django work for the websocket door, on the service's thread pool.

The handshake becomes a real Django ``WSGIRequest`` (path, query, cookies,
headers, REMOTE_ADDR), so session engines, auth backends and the hooks see what
they see in a view. Nothing here runs on the reactor thread, except
``authorize`` for a handshake that ``reads_nothing`` says it decides without
any read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from django.apps import apps
from django.conf import settings as django_settings
from django.core.exceptions import PermissionDenied
from django.core.handlers.wsgi import WSGIRequest
from django.db import close_old_connections
from django.http import HttpRequest
from twisted.internet import threads

from . import audience
from .conf import Settings
from .receivers import store_groups_in_session
from .subscriber import RedisSubscriber


@dataclass(frozen=True)
class Handshake:
    """What the reactor knows about a websocket request, in plain values."""

    path: str  # as sent, percent-encoded
    query: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, latin-1 values
    remote_addr: str = ""
    remote_port: int = 0
    server_port: int = 0
    secure: bool = False

    def environ(self) -> dict[str, Any]:
        """A PEP 3333 environ for this request."""
        host = self.headers.get("host", "")
        environ = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(self.path).decode("latin-1"),
            "QUERY_STRING": self.query,
            "SERVER_NAME": host.rsplit(":", 1)[0] if host and not host.endswith("]") else host or "localhost",
            "SERVER_PORT": str(self.server_port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": self.remote_addr,
            "REMOTE_PORT": str(self.remote_port),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.secure else "http",
            "wsgi.input": BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ[f"HTTP_{key}"] = value
        return environ


def process_request(request: HttpRequest) -> None:
    """The default authentication: the session from its cookie and the user
    from the session. Both are loaded here, in the thread, so that later
    reads (``is_authenticated``, group names) never touch the database.
    Whether the cookie named a real session is noted as it loads, so that
    naming the session channel needs no second read."""
    engine = import_module(django_settings.SESSION_ENGINE)
    key = request.COOKIES.get(django_settings.SESSION_COOKIE_NAME)
    request.session = engine.SessionStore(key)
    request.session.keys()
    audience.loaded_as(request.session, key)
    if apps.is_installed("django.contrib.auth"):
        from django.contrib.auth import get_user

        request.user = get_user(request)
    else:
        request.user = None  # type: ignore[assignment]  # no django.contrib.auth: no user at all


def process_request_with_current_groups(request: WSGIRequest) -> None:
    """``process_request``, then the user's group names read from the database
    now instead of those stored in the session at login, so that a user
    removed from a group loses its channels at the next handshake, not at the
    next login. One more query per handshake of a logged-in user (on the
    thread pool, like all of this). Set ``WS4REDIS_PROCESS_REQUEST`` to
    ``"twisted_ws4redis.django_bridge.process_request_with_current_groups"``.
    The names replace the snapshot in this request's session only: a
    websocket never saves its session."""
    process_request(request)
    if getattr(request.user, "is_authenticated", False):
        store_groups_in_session(None, request, request.user)


@dataclass
class Accepted:
    request: WSGIRequest
    subscriber: Any
    echo: bool
    #: digest of the session authenticated with (None: no session), so that
    #: its websockets can be closed when it ends
    session_digest: str | None = None
    #: ws4redis.v2 only: the URL's allowed flags, each with its channels
    #: ({"subscribe-broadcast": [...], ...})
    flags: dict[str, list[str]] = field(default_factory=dict)
    #: the user's name for presence (None: anonymous)
    username: str | None = None


def _flag_channels(request: WSGIRequest, flag: str, settings: Settings, bus: Any) -> list[str]:
    """The Redis channels of one allowed flag, named by WS4REDIS_SUBSCRIBER."""
    subscriber = settings.subscriber(bus)
    subscriber.set_pubsub_channels(request, [flag])
    return subscriber.subscribed if flag.startswith("subscribe-") else subscriber.publishers


def reads_nothing(handshake: Handshake, settings: Settings) -> bool:
    """Whether ``authorize`` reads nothing (no database, session store or
    cache) for ``handshake``, so that the reactor may run it rather than make
    a thread round trip: the default authentication and subscriber, no
    WS4REDIS_ALLOWED_CHANNELS, one of Django's own session engines, and no
    session cookie. The session is then empty without a read (Django's engines
    load nothing for a session without a key) and the user anonymous without a
    query (tests/test_threads.py pins both). A cookie that merely mentions the
    session cookie's name goes to the thread pool too: the check errs on the
    side of a thread."""
    if settings.process_request is not None or settings.allowed_channels is not None:
        return False
    if settings.subscriber is not RedisSubscriber:
        return False
    if not django_settings.SESSION_ENGINE.startswith("django.contrib.sessions.backends."):
        return False  # a project's own engine may read even without a key
    cookie = handshake.headers.get("cookie")
    return not cookie or django_settings.SESSION_COOKIE_NAME not in cookie


def authorize(handshake: Handshake, facility: str, settings: Settings, bus: Any, v2: bool = False) -> Accepted:
    """Everything Django decides about one websocket, in ws4redis' order:
    authenticate, parse the flags, ask WS4REDIS_ALLOWED_CHANNELS, name the
    Redis channels (for ``v2``, flag by flag). ``PermissionDenied`` from a
    hook refuses the handshake."""
    request = WSGIRequest(handshake.environ())
    request.facility = facility  # type: ignore[attr-defined]  # ws4redis' own attribute for the hooks
    (settings.process_request or process_request)(request)
    flags, echo = audience.parse_flags(handshake.query, settings.subscriber.recognised_flags())
    if settings.allowed_channels is not None:
        flags = list(settings.allowed_channels(request, flags))
    subscriber = settings.subscriber(bus)
    subscriber.set_pubsub_channels(request, flags)
    key = audience.genuine_session_key(getattr(request, "session", None))
    user = getattr(request, "user", None)
    accepted = Accepted(
        request,
        subscriber,
        echo,
        audience.session_digest(key) if key else None,
        username=user.get_username() if user is not None and getattr(user, "is_authenticated", False) else None,
    )
    if v2:
        accepted.flags = {flag: _flag_channels(request, flag, settings, bus) for flag in flags}
    return accepted


def authorize_op(
    request: WSGIRequest, facility: str, flag: str, settings: Settings, bus: Any, presence: bool = False
) -> list[str]:
    """A ws4redis.v2 subscribe or publish, decided as the URL's flags are:
    WS4REDIS_ALLOWED_CHANNELS asked with ``request.facility`` set to
    ``facility`` and the one flag; the channels it names. A flag the
    subscriber does not recognise, or that the hook drops, raises
    ``PermissionDenied``. With ``presence`` the hook is asked for the flag
    ``"presence"`` too (who else is connected is not for everybody)."""
    if flag not in settings.subscriber.recognised_flags():
        raise PermissionDenied(f"{flag} is not offered here")
    request.facility = facility  # type: ignore[attr-defined]  # as in authorize()
    if settings.allowed_channels is not None:
        for asked in [flag, "presence"] if presence else [flag]:
            if asked not in settings.allowed_channels(request, [asked]):
                raise PermissionDenied(f"{asked} is not allowed for this facility")
    return _flag_channels(request, flag, settings, bus)


def _in_django(function: Callable, *args: Any) -> Any:
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


def defer_to_django(reactor, pool, function: Callable, *args: Any):
    """Run ``function(*args)`` on ``pool`` with Django's connection hygiene
    around it; a Deferred of its result."""
    return threads.deferToThreadPool(reactor, pool, _in_django, function, *args)
