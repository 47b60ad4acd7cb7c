"""Every setting twisted_ws4redis reads, with its default, validated in one place.

The names and defaults are those of ws4redis, so an existing project keeps its
settings. ``validate()`` finds every bad value, each a ``SettingError`` naming
the setting and carrying its system check id; ``get_settings()`` raises the
first (the server calls it at start-up so that a mistake stops it there) and
the system checks (checks.py: ``manage.py check``, ``twistd ws4redis``) report
them all.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from . import logsafe
from .origin import OriginPolicy
from .redis_address import RedisAddress

if TYPE_CHECKING:
    from .subscriber import RedisSubscriber

#: Django settings the origin check reads.
_ORIGIN_SETTINGS = ("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "DEBUG", "USE_X_FORWARDED_HOST")

#: ws4redis' own default subscriber path, accepted as an alias of ours.
_REFERENCE_SUBSCRIBER = "ws4redis.subscriber.RedisSubscriber"

#: Every setting's name starts so, but WEBSOCKET_URL (ws4redis' name).
_PREFIX = "WS4REDIS_"

#: The most characters of a bad setting's message (a value may be long).
_MESSAGE_LENGTH = 2000

_HOOK_HINT = "Give the callable itself or its dotted path, such as 'mysite.websockets.{}'."


@dataclass(frozen=True)
class Settings:
    websocket_url: str
    connection: RedisAddress
    prefix: str
    expire: int
    subscriber: type[RedisSubscriber]
    heartbeat: bytes | None
    allowed_channels: Callable | None
    process_request: Callable | None
    max_message_size: int
    origins: OriginPolicy
    facility_pattern: re.Pattern
    handshake_timeout: float
    max_header_size: int
    max_publish_rate: float | None
    max_buffered_bytes: int
    auto_ping_interval: float | None
    auto_ping_timeout: float
    max_body_size: int
    body_timeout: float
    body_min_rate: float
    max_connections: int | None
    reserved_descriptors: int
    tls_ciphers: str
    max_frame_rate: float | None
    max_fragments: int | None
    history_size: int
    history_ttl: int
    max_subscriptions: int
    presence: bool
    presence_ttl: int
    message_signal: bool
    token_max_age: int
    cluster_plain_publish: bool
    health_url: str | None
    metrics_facilities: tuple[re.Pattern, ...]


class SettingError(ImproperlyConfigured):
    """A bad value of one setting. The message names the setting and the value;
    ``check_id`` is the system check that reports it (``manage.py check``)."""

    def __init__(self, check_id: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.check_id = check_id
        self.message = message
        self.hint = hint


# -- validators: (setting name, raw value) -> the value Settings holds, or ImproperlyConfigured --


def _url_path(name: str, value: Any) -> str:
    if not (isinstance(value, str) and value.startswith("/") and value.endswith("/")):
        raise ImproperlyConfigured(f"{name} must be a path starting and ending with '/', got {value!r}")
    return value


def _connection(name: str, value: Any) -> RedisAddress:
    # The messages name the key at fault, never the whole value (it may hold a password).
    try:
        return RedisAddress.from_dict(value, name)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def _prefix(name: str, value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise ImproperlyConfigured(f"{name} must be a string or None, got {value!r}")
    return f"{value}:" if value else ""


def _count(name: str, value: Any, unit: str = "seconds") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(f"{name} must be a non-negative integer ({unit}), got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"{name} must be True or False, got {value!r}")
    return value


def _subscriber(name: str, value: Any) -> type:
    path = DEFAULTS[name] if value == _REFERENCE_SUBSCRIBER else value
    try:
        subscriber = import_string(path) if isinstance(path, str) else path
    except ImportError as exc:
        raise ImproperlyConfigured(f"{name}: cannot import {path!r}: {exc}") from None
    from .subscriber import RedisSubscriber

    if not (isinstance(subscriber, type) and issubclass(subscriber, RedisSubscriber)):
        raise ImproperlyConfigured(
            f"{name} must name a subclass of twisted_ws4redis.subscriber.RedisSubscriber, got {path!r}"
        )
    return subscriber


def _heartbeat(name: str, value: Any) -> bytes | None:
    if value is not None and not (isinstance(value, str) and value):
        raise ImproperlyConfigured(f"{name} must be a non-empty string or None, got {value!r}")
    return value.encode() if value else None


def _callable(name: str, value: Any) -> Callable | None:
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        try:
            hook = import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(f"{name}: cannot import {value!r}: {exc}") from None
        if not callable(hook):
            raise ImproperlyConfigured(f"{name}: {value!r} is not a callable")
        return hook
    raise ImproperlyConfigured(f"{name} must be a callable or a dotted path, got {value!r}")


def _number(name: str, value: Any, *, integer: bool = False, optional: bool = False, unit: str = "") -> Any:
    """A positive number (or None when ``optional``)."""
    if value is None and optional:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ImproperlyConfigured(
            f"{name} must be {what}{f' ({unit})' if unit else ''}{' or None' if optional else ''}, got {value!r}"
        )
    return value


def _origins(name: str, value: Any) -> OriginPolicy:
    trusted = [] if value is None else value
    if not isinstance(trusted, (list, tuple, set, frozenset)) or not all(isinstance(item, str) for item in trusted):
        raise ImproperlyConfigured(
            f"{name} must be a list of origins such as 'https://example.com' (or ['*'] for any), got {value!r}"
        )
    return OriginPolicy(
        list(trusted) + list(getattr(django_settings, "CSRF_TRUSTED_ORIGINS", [])),
        getattr(django_settings, "ALLOWED_HOSTS", []),
        bool(getattr(django_settings, "DEBUG", False)),
        bool(getattr(django_settings, "USE_X_FORWARDED_HOST", False)),
    )


def _pattern(name: str, value: Any) -> re.Pattern:
    try:
        return re.compile(value)
    except (re.error, TypeError) as exc:
        raise ImproperlyConfigured(f"{name} {value!r} is not a regular expression: {exc}") from None


#: A path the health check may answer on: printable ASCII, no query or fragment.
_HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
#: The most patterns WS4REDIS_METRICS_FACILITIES may hold: each is a label value of a metric.
_MOST_FACILITY_LABELS = 100


def _health_url(name: str, value: Any) -> str | None:
    """None, or a path outside WEBSOCKET_URL (a facility may be called "health")."""
    if value is None:
        return None
    if not (isinstance(value, str) and _HEALTH_PATH.fullmatch(value)):
        raise ImproperlyConfigured(
            f"{name} must be None or a path starting with '/' (printable ASCII, no query), got {value!r}"
        )
    websocket_url = _raw("WEBSOCKET_URL")
    if isinstance(websocket_url, str) and websocket_url and value.startswith(websocket_url):
        raise ImproperlyConfigured(
            f"{name} {value!r} lies under WEBSOCKET_URL {websocket_url!r}, where it would name a facility"
        )
    return value


def _facility_patterns(name: str, value: Any) -> tuple[re.Pattern, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > _MOST_FACILITY_LABELS:
        raise ImproperlyConfigured(
            f"{name} must be a list of at most {_MOST_FACILITY_LABELS} regular expressions, got {value!r}"
        )
    patterns = []
    for item in value:
        if not isinstance(item, str):
            raise ImproperlyConfigured(f"{name} must hold regular expressions as strings, got {item!r}")
        patterns.append(_pattern(name, item))
    return tuple(patterns)


def _cipher_string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f"{name} must be an OpenSSL cipher string, got {value!r}")
    return value


def _ciphers_openssl_knows(name: str, value: str) -> None:
    # Importing OpenSSL and Twisted would cost a Django process that only publishes
    # about 0.4 s: this runs in the system checks (manage.py check, twistd start),
    # not in every get_settings().
    from .server.tls import acceptable_ciphers

    acceptable_ciphers(value)


@dataclass(frozen=True)
class Rule:
    """How one setting is read: its default, the system check id reporting a bad
    value, the ``Settings`` field it fills and the validator that fills it.
    ``deep`` validates further where that is too costly for every process (it
    gets the validated value); the system checks run it. ``doc`` (reStructuredText)
    and ``example`` (a value as written in settings.py) are the settings
    reference of the documentation, generated from here."""

    default: Any
    check_id: str
    field: str
    validate: Callable[[str, Any], Any]
    hint: str | None = None
    deep: Callable[[str, Any], None] | None = None
    doc: str = ""
    example: str = ""


def _positive(
    check_id: str,
    field: str,
    default: Any,
    unit: str,
    *,
    integer: bool = False,
    optional: bool = False,
    hint: str | None = None,
    doc: str = "",
    example: str = "",
) -> Rule:
    return Rule(
        default,
        check_id,
        field,
        functools.partial(_number, integer=integer, optional=optional, unit=unit),
        hint,
        doc=doc,
        example=example,
    )


#: Every setting twisted_ws4redis reads. The check ids are stable: never renumber them.
RULES: dict[str, Rule] = {
    "WEBSOCKET_URL": Rule(
        "/ws/",
        "twisted_ws4redis.E001",
        "websocket_url",
        _url_path,
        "For example '/ws/'.",
        doc="Path prefix of websocket URLs: ``ws://host/ws/<facility>?flags``.",
        example="'/websockets/'",
    ),
    "WS4REDIS_CONNECTION": Rule(
        {"host": "localhost", "port": 6379, "db": 0, "password": None},
        "twisted_ws4redis.E002",
        "connection",
        _connection,
        "A dict of redis-py's keys, such as {'host': 'localhost', 'port': 6379, 'db': 0}.",
        doc="""The Redis of the server and of every publisher. redis-py style keys: ``host``, ``port``, ``db``,
``password``, ``username``, ``unix_socket_path``, ``ssl``, and ``socket_timeout`` / ``socket_connect_timeout``
(seconds, default 5: no Redis command waits longer). Through Sentinel: ``sentinels``
(``[('10.0.0.1', 26379), …]``), ``service_name`` (the master's name) and, if the Sentinels need one,
``sentinel_password``; ``host`` and ``port`` are then ignored. A Redis Cluster: ``startup_nodes``
(``[('10.0.0.1', 7000), '10.0.0.2:7000', …]``, some of its nodes: the others are learnt from them), with
``password``, ``username``, ``ssl`` and the timeouts if needed; not with ``host``, ``port``,
``unix_socket_path`` or Sentinel, and ``db`` must be 0 (:ref:`redis-cluster`). Other keys are refused.
``twistd ws4redis --redis=URL`` overrides it for one process.""",
        example="{'host': 'redis.internal', 'port': 6379, 'db': 1, 'password': 'secret'}",
    ),
    "WS4REDIS_PREFIX": Rule(
        None,
        "twisted_ws4redis.E003",
        "prefix",
        _prefix,
        doc="Prefix of every channel and key name (``demo`` gives ``demo:broadcast:foo``).",
        example="'demo'",
    ),
    "WS4REDIS_EXPIRE": Rule(
        3600,
        "twisted_ws4redis.E004",
        "expire",
        _count,
        "0 keeps no message.",
        doc="Seconds a published message is kept for websockets that connect later; ``0`` keeps nothing.",
        example="0",
    ),
    "WS4REDIS_SUBSCRIBER": Rule(
        "twisted_ws4redis.subscriber.RedisSubscriber",
        "twisted_ws4redis.E005",
        "subscriber",
        _subscriber,
        doc="""The per-websocket class; a subclass may change the recognised flags or how they map to
channels. ws4redis' default path is accepted as an alias.""",
        example="'mysite.websockets.Subscriber'",
    ),
    "WS4REDIS_HEARTBEAT": Rule(
        None,
        "twisted_ws4redis.E006",
        "heartbeat",
        _heartbeat,
        doc="""A magic string: the server sends it as soon as a websocket opens (before any kept message),
then whenever the websocket has been idle for about 4 seconds, and answers it when the client sends it; it is
never published. A client that reads raw frames should skip it (``ws4redis.js`` and the :doc:`testing` helpers
do).""",
        example="'--heartbeat--'",
    ),
    "WS4REDIS_ALLOWED_CHANNELS": Rule(
        None,
        "twisted_ws4redis.E007",
        "allowed_channels",
        _callable,
        _HOOK_HINT.format("allowed_channels"),
        doc="""Callable (or dotted path) ``f(request, channels)`` returning the flags to keep; raising
``PermissionDenied`` refuses the handshake with HTTP 403. Runs on a thread, so it may use the database
(:ref:`publishing-is-the-sites`).""",
        example="'mysite.websockets.allowed_channels'",
    ),
    "WS4REDIS_PROCESS_REQUEST": Rule(
        None,
        "twisted_ws4redis.E008",
        "process_request",
        _callable,
        _HOOK_HINT.format("process_request"),
        doc="""Callable (or dotted path) ``f(request)`` replacing the default authentication; it must set
``request.session`` and ``request.user`` (e.g. from a token: see :doc:`tokens`). Runs on a thread.
``'twisted_ws4redis.django_bridge.process_request_with_current_groups'`` is the default plus the user's groups
read from the database at each handshake (see :ref:`group names <group-names>`).""",
        example="'twisted_ws4redis.auth.process_request'",
    ),
    # Not in ws4redis: limits and checks against hostile or broken clients.
    "WS4REDIS_MAX_MESSAGE_SIZE": _positive(
        "twisted_ws4redis.E009",
        "max_message_size",
        1024 * 1024,
        "bytes",
        integer=True,
        doc="The largest message (and frame) a client may send, in bytes; a larger one closes its websocket with 1009.",
        example="65536",
    ),
    "WS4REDIS_ALLOWED_ORIGINS": Rule(
        None,
        "twisted_ws4redis.E010",
        "origins",
        _origins,
        doc="""Origins (``'https://example.com'``, ``'https://*.example.com'``) whose pages may open
websockets, besides the site itself; ``['*']`` accepts any page (:ref:`cross-site`).""",
        example="['https://example.com', 'https://*.example.com']",
    ),
    "WS4REDIS_FACILITY_PATTERN": Rule(
        r"[^:*?\[\]\\\x00-\x1f\x7f-\x9f]{0,128}",
        "twisted_ws4redis.E011",
        "facility_pattern",
        _pattern,
        doc="""Regular expression a facility must match in full, else HTTP 400: by default at most 128
characters, none of ``:``, Redis glob characters, backslash or control characters.""",
        example="r'[a-z0-9-]{1,64}'",
    ),
    "WS4REDIS_HANDSHAKE_TIMEOUT": _positive(
        "twisted_ws4redis.E012",
        "handshake_timeout",
        30,
        "seconds",
        doc="Seconds a client has to send its request line and headers (counted from the connection, or from "
        "the previous response), and again to complete the websocket handshake.",
        example="10",
    ),
    "WS4REDIS_MAX_HEADER_SIZE": _positive(
        "twisted_ws4redis.E013",
        "max_header_size",
        16 * 1024,
        "bytes",
        integer=True,
        doc="Bytes of request line plus headers; more gets HTTP 414 (request line) or 431 (headers).",
        example="8192",
    ),
    "WS4REDIS_MAX_PUBLISH_RATE": _positive(
        "twisted_ws4redis.E014",
        "max_publish_rate",
        None,
        "messages per second",
        optional=True,
        doc="Messages per second one websocket may publish (bursts up to one second's worth); past it the "
        "websocket is closed with 1008. ``None``: no cap.",
        example="10",
    ),
    "WS4REDIS_MAX_BUFFERED_BYTES": _positive(
        "twisted_ws4redis.E015",
        "max_buffered_bytes",
        4 * 1024 * 1024,
        "bytes",
        integer=True,
        doc="""Bytes that may wait in the server for a client that reads slowly; past it the websocket is
closed with 1008 and logged (``WSPOLICY``). Everything the server writes to a websocket counts: messages,
persisted messages, heartbeats, pongs, close frames. While more than 64 KiB wait (Twisted's write buffer size),
the server reads nothing from that client, so it cannot make the server answer more.""",
        example="1048576",
    ),
    "WS4REDIS_AUTO_PING_INTERVAL": _positive(
        "twisted_ws4redis.E016",
        "auto_ping_interval",
        30,
        "seconds",
        optional=True,
        doc="""Every so many seconds the server pings each websocket (browsers answer by themselves); one
whose pong has not come within ``WS4REDIS_AUTO_PING_TIMEOUT`` is dropped (``WSDEAD`` in the log), so dead peers
do not linger. ``None`` turns pings off.""",
        example="60",
    ),
    "WS4REDIS_AUTO_PING_TIMEOUT": _positive(
        "twisted_ws4redis.E017",
        "auto_ping_timeout",
        30,
        "seconds",
        doc="""Seconds a websocket has to answer the server's ping. Each ping carries fresh random bytes, and
only a pong that repeats them counts: unsolicited pongs do not keep a peer alive.""",
        example="10",
    ),
    "WS4REDIS_MAX_BODY_SIZE": _positive(
        "twisted_ws4redis.E018",
        "max_body_size",
        10 * 1024 * 1024,
        "bytes",
        integer=True,
        doc="""Bytes of a request body (10 MiB) the server accepts for Django; a larger ``Content-Length``
gets HTTP 413 before any of the body is read, a chunked body gets 413 when it passes the limit. The server reads
a whole body before Django runs (into memory up to 100 kB, else into an unlinked temporary file in ``TMPDIR``),
so this is what bounds the memory and disk one request costs. Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and
``FILE_UPLOAD_MAX_MEMORY_SIZE`` (2.5 MB each) act later, on the body already received: the first refuses a large
``request.body`` or form, the second only decides when an upload goes to a file; neither refuses a large file
upload. Raise this setting for sites that take larger uploads. A chunked body reaches Django with its
``CONTENT_LENGTH`` set (WSGI applications read no body without one).""",
        example="104857600",
    ),
    "WS4REDIS_BODY_TIMEOUT": _positive(
        "twisted_ws4redis.E019",
        "body_timeout",
        30,
        "seconds",
        doc="""A request body must be complete within this many seconds of the end of its headers, plus one
second for every ``WS4REDIS_BODY_MIN_RATE`` bytes received; otherwise HTTP 408 and the connection is closed. A
body trickled a byte at a time is cut off after about 30 s.""",
        example="60",
    ),
    "WS4REDIS_BODY_MIN_RATE": _positive(
        "twisted_ws4redis.E020",
        "body_min_rate",
        500,
        "bytes per second",
        doc="Bytes per second that earn a request body one more second past ``WS4REDIS_BODY_TIMEOUT``: an "
        "upload that keeps at least this rate is never cut off.",
        example="2000",
    ),
    # Descriptors and TLS (see server/descriptors.py, server/tls.py).
    "WS4REDIS_MAX_CONNECTIONS": _positive(
        "twisted_ws4redis.E021",
        "max_connections",
        None,
        "websockets",
        integer=True,
        optional=True,
        doc="""Websockets one process holds, open or in their handshake; one more handshake gets HTTP 503
(``Retry-After: 10``). ``None``: 7/8 of the client connections the open files limit allows (below), so pages
keep the rest: 784 under ``ulimit -n 1024``, about 57,000 under the systemd unit's ``LimitNOFILE=65536``. The
start-up log gives both numbers.""",
        example="10000",
    ),
    "WS4REDIS_RESERVED_DESCRIPTORS": _positive(
        "twisted_ws4redis.E022",
        "reserved_descriptors",
        128,
        "descriptors",
        integer=True,
        doc="""File descriptors kept for the process itself: Django's database connections (one per thread
and database), Redis, log and static files. Client connections (pages and websockets) may use the open files
limit minus these; one more is answered 503 and closed at once. Raise it with many ``--threads`` or
databases.""",
        example="512",
    ),
    "WS4REDIS_TLS_CIPHERS": Rule(
        "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL",
        "twisted_ws4redis.E023",
        "tls_ciphers",
        _cipher_string,
        "See 'openssl ciphers -v STRING' for what a string names.",
        deep=_ciphers_openssl_knows,
        doc="""OpenSSL cipher string for TLS 1.2 on ``ssl:`` endpoints: by default only forward-secret (ECDHE)
AEAD ciphers. TLS 1.0 and 1.1 are refused; TLS 1.3 uses OpenSSL's suites, all forward-secret AEAD. A string
naming no TLS 1.2 cipher stops the start with a message naming this setting. The example also admits CBC
ciphers, for old clients.""",
        example="'ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES256'",
    ),
    # Frames a client may send: every kind counts (a ping flood is a frame flood).
    "WS4REDIS_MAX_FRAME_RATE": _positive(
        "twisted_ws4redis.E024",
        "max_frame_rate",
        1000,
        "frames per second",
        optional=True,
        doc="""Frames per second a client may send, of every kind (pings, pongs and fragments too), in bursts
of up to one second's worth; past it the websocket is closed with 1008 (``WSPOLICY``). ``None``: no cap.""",
        example="100",
    ),
    "WS4REDIS_MAX_FRAGMENTS": _positive(
        "twisted_ws4redis.E025",
        "max_fragments",
        1000,
        "frames per message",
        integer=True,
        optional=True,
        doc="Frames one message may be split into; past it the websocket is closed with 1008 (``WSPOLICY``). "
        "``None``: no cap.",
        example="10",
    ),
    # History and the ws4redis.v2 protocol (see history.py, server/v2.py).
    "WS4REDIS_HISTORY_SIZE": Rule(
        0,
        "twisted_ws4redis.E026",
        "history_size",
        functools.partial(_count, unit="messages per channel"),
        "0 keeps no history.",
        doc="""Messages kept per channel, with their ids, so that a ``ws4redis.v2`` client can get back
exactly what it missed (:doc:`live`). ``0``: no history (what ws4redis did). Needs Redis 6.2 or later; with it
on, a channel carries an envelope that only twisted_ws4redis servers read (see :ref:`history-in-redis`).""",
        example="100",
    ),
    "WS4REDIS_HISTORY_TTL": _positive(
        "twisted_ws4redis.E027",
        "history_ttl",
        3600,
        "seconds",
        integer=True,
        doc="Seconds a channel's history is kept after its last message.",
        example="86400",
    ),
    "WS4REDIS_MAX_SUBSCRIPTIONS": _positive(
        "twisted_ws4redis.E028",
        "max_subscriptions",
        100,
        "subscriptions per websocket",
        integer=True,
        doc="Subscriptions one ``ws4redis.v2`` websocket may hold at once (those of its URL included); one "
        "more is answered with an error of code 429.",
        example="20",
    ),
    # Presence and server-side signals (see presence.py, server/presence.py, signals.py).
    "WS4REDIS_PRESENCE": Rule(
        False,
        "twisted_ws4redis.E029",
        "presence",
        _bool,
        doc="Record in Redis who is connected to each facility, on every node (:doc:`presence`).",
        example="True",
    ),
    "WS4REDIS_PRESENCE_TTL": _positive(
        "twisted_ws4redis.E030",
        "presence_ttl",
        30,
        "seconds",
        integer=True,
        doc="Seconds after which the presence entries of a node that stopped refreshing them (killed) no "
        "longer count; a node refreshes its own every third of it.",
        example="60",
    ),
    "WS4REDIS_MESSAGE_SIGNAL": Rule(
        False,
        "twisted_ws4redis.E031",
        "message_signal",
        _bool,
        "True sends websocket_message for every message (a thread hop each).",
        doc="""Send the ``websocket_message`` signal for every message a client sends (a thread hop each; see
:doc:`signals`); off, a ``ws4redis.v2`` ``send`` op is refused (400).""",
        example="True",
    ),
    # Token authentication (auth.py): make_token's default lifetime.
    "WS4REDIS_TOKEN_MAX_AGE": _positive(
        "twisted_ws4redis.E032",
        "token_max_age",
        300,
        "seconds",
        integer=True,
        hint="A token is checked only when a websocket opens, and one in a URL may reach an access log: a few "
        "minutes (300) is enough to fetch one and connect, and leaves a logged one stale soon.",
        doc="""Seconds a token from :func:`twisted_ws4redis.auth.make_token` is valid by default (see
:doc:`tokens`). A token is checked only when a websocket opens, so a few minutes are enough to fetch one and
connect; and a token that leaked (into a proxy's access log, say) is soon worth nothing.""",
        example="60",
    ),
    # Redis Cluster (server/cluster.py): also hear foreign publishers' plain PUBLISH.
    "WS4REDIS_CLUSTER_PLAIN_PUBLISH": Rule(
        False,
        "twisted_ws4redis.E033",
        "cluster_plain_publish",
        _bool,
        "True also subscribes every channel with plain SUBSCRIBE on one node.",
        doc="""On a Redis Cluster, also subscribe every channel with plain ``SUBSCRIBE`` on one node, so that a
foreign publisher's plain ``PUBLISH`` (a ws4redis 0.6 process, ``redis-cli``) reaches the websockets
(:ref:`redis-cluster`). Ignored on one Redis.""",
        example="True",
    ),
    # Health and metrics (server/health.py, server/metrics.py).
    "WS4REDIS_HEALTH_URL": Rule(
        None,
        "twisted_ws4redis.E034",
        "health_url",
        _health_url,
        "For example '/ws4redis/health'; None: off.",
        doc="""A path (outside ``WEBSOCKET_URL``, no query) where the main port answers load balancers' health
checks on the reactor, without Django: 200 while Redis is reachable and the server is not stopping, else 503
(:doc:`metrics`). ``None``: no health check there. A view of the project at the same path would never run
(``manage.py check`` warns: ``twisted_ws4redis.W012``).""",
        example="'/ws4redis/health'",
    ),
    "WS4REDIS_METRICS_FACILITIES": Rule(
        [],
        "twisted_ws4redis.E035",
        "metrics_facilities",
        _facility_patterns,
        "For example [r'chat-.*', r'news']: the open websockets of a facility are counted under the first "
        "pattern that matches it whole, else under 'other'.",
        doc="""Regular expressions (at most 100): ``--metrics`` counts the open websockets of a facility under the
first one that matches it whole, else under ``other``, so that a client's facility never becomes a label
itself (:doc:`metrics`).""",
        example="[r'chat-.*', r'news']",
    ),
}

DEFAULTS: dict[str, Any] = {name: rule.default for name, rule in RULES.items()}


def _raw(name: str) -> Any:
    return getattr(django_settings, name, DEFAULTS[name])


def validate(deep: bool = False) -> tuple[dict[str, Any], list[SettingError]]:
    """Every setting validated, ``Settings``' fields by name, and the problems
    of all the bad ones (not only the first: ``manage.py check`` lists them all).
    ``deep`` adds each rule's costlier checks (the system checks ask for them)."""
    fields, errors = {}, []
    for name, rule in RULES.items():
        try:
            fields[rule.field] = rule.validate(name, _raw(name))
            if deep and rule.deep is not None:
                rule.deep(name, fields[rule.field])
        except ImproperlyConfigured as exc:
            # Values are repr()s, but an ImportError quotes a dotted path as it is.
            errors.append(SettingError(rule.check_id, logsafe.text(exc, limit=_MESSAGE_LENGTH), rule.hint))
    return fields, errors


def unknown_settings() -> list[tuple[str, str | None]]:
    """``WS4REDIS_*`` settings this package does not read (typos, most likely),
    each with the closest name it reads, or None when none is close."""
    # Compared without the common prefix, which would make any two names look alike.
    known = {name.removeprefix(_PREFIX): name for name in RULES}
    found = []
    for name in sorted(dir(django_settings)):
        if name.startswith(_PREFIX) and name not in RULES:
            close = difflib.get_close_matches(name.removeprefix(_PREFIX), known, n=1)
            found.append((name, known[close[0]] if close else None))
    return found


@functools.cache
def get_settings() -> Settings:
    """The validated settings, read once (and again after a test overrides one);
    a bad one raises its SettingError."""
    fields, errors = validate()
    if errors:
        raise errors[0]
    return Settings(**fields)


_redis_override: RedisAddress | None = None


def set_redis_override(address: RedisAddress | None) -> None:
    """Make this process use ``address`` instead of WS4REDIS_CONNECTION
    (``twistd ws4redis --redis=…``, embedded Redis)."""
    global _redis_override
    _redis_override = address


def redis_address() -> RedisAddress:
    """The Redis this process talks to."""
    return _redis_override or get_settings().connection


def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting in DEFAULTS or setting in _ORIGIN_SETTINGS:
        get_settings.cache_clear()


setting_changed.connect(_settings_changed)
