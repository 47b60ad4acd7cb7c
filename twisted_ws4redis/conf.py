"""Every setting twisted_ws4redis reads, with its default, validated in one place.

The names and defaults are those of ws4redis, so an existing project keeps its
settings. ``get_settings()`` raises ``ImproperlyConfigured`` naming the bad
setting; the server calls it at start-up so that a mistake stops it there.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .origin import OriginPolicy
from .redis_address import RedisAddress

DEFAULTS: dict[str, Any] = {
    "WEBSOCKET_URL": "/ws/",
    "WS4REDIS_CONNECTION": {"host": "localhost", "port": 6379, "db": 0, "password": None},
    "WS4REDIS_PREFIX": None,
    "WS4REDIS_EXPIRE": 3600,
    "WS4REDIS_SUBSCRIBER": "twisted_ws4redis.subscriber.RedisSubscriber",
    "WS4REDIS_HEARTBEAT": None,
    "WS4REDIS_ALLOWED_CHANNELS": None,
    "WS4REDIS_PROCESS_REQUEST": None,
    # Not in ws4redis: limits and checks against hostile or broken clients.
    "WS4REDIS_MAX_MESSAGE_SIZE": 1024 * 1024,
    "WS4REDIS_ALLOWED_ORIGINS": None,
    "WS4REDIS_FACILITY_PATTERN": r"[^:*?\[\]\\\x00-\x1f\x7f-\x9f]{0,128}",
    "WS4REDIS_HANDSHAKE_TIMEOUT": 30,
    "WS4REDIS_MAX_HEADER_SIZE": 16 * 1024,
    "WS4REDIS_MAX_PUBLISH_RATE": None,
    "WS4REDIS_MAX_BUFFERED_BYTES": 4 * 1024 * 1024,
    "WS4REDIS_AUTO_PING_INTERVAL": 30,
    "WS4REDIS_AUTO_PING_TIMEOUT": 30,
    "WS4REDIS_MAX_BODY_SIZE": 10 * 1024 * 1024,
    "WS4REDIS_BODY_TIMEOUT": 30,
    "WS4REDIS_BODY_MIN_RATE": 500,
    # Descriptors and TLS (see descriptors.py, tls.py).
    "WS4REDIS_MAX_CONNECTIONS": None,
    "WS4REDIS_RESERVED_DESCRIPTORS": 128,
    "WS4REDIS_TLS_CIPHERS": "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL",
    # Frames a client may send: every kind counts (a ping flood is a frame flood).
    "WS4REDIS_MAX_FRAME_RATE": 1000,
    "WS4REDIS_MAX_FRAGMENTS": 1000,
}

#: Django settings the origin check reads.
_ORIGIN_SETTINGS = ("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "DEBUG", "USE_X_FORWARDED_HOST")

#: ws4redis' own default subscriber path, accepted as an alias of ours.
_REFERENCE_SUBSCRIBER = "ws4redis.subscriber.RedisSubscriber"


@dataclass(frozen=True)
class Settings:
    websocket_url: str
    connection: RedisAddress
    prefix: str
    expire: int
    subscriber: type
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


def _raw(name: str) -> Any:
    return getattr(django_settings, name, DEFAULTS[name])


def _callable(name: str) -> Callable | None:
    value = _raw(name)
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        try:
            return import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(f"{name}: cannot import {value!r}: {exc}") from None
    raise ImproperlyConfigured(f"{name} must be a callable or a dotted path, got {value!r}")


def _number(name: str, *, integer: bool = False, optional: bool = False, unit: str = "") -> Any:
    """A positive number (or None when ``optional``), else a message naming the setting."""
    value = _raw(name)
    if value is None and optional:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ImproperlyConfigured(
            f"{name} must be {what}{f' ({unit})' if unit else ''}{' or None' if optional else ''}, got {value!r}")
    return value


def _origins() -> OriginPolicy:
    trusted = _raw("WS4REDIS_ALLOWED_ORIGINS")
    if trusted is None:
        trusted = []
    if isinstance(trusted, str) or not all(isinstance(origin, str) for origin in trusted):
        raise ImproperlyConfigured(
            f"WS4REDIS_ALLOWED_ORIGINS must be a list of origins such as 'https://example.com' "
            f"(or ['*'] for any), got {trusted!r}")
    return OriginPolicy(list(trusted) + list(getattr(django_settings, "CSRF_TRUSTED_ORIGINS", [])),
                        getattr(django_settings, "ALLOWED_HOSTS", []), bool(getattr(django_settings, "DEBUG", False)),
                        bool(getattr(django_settings, "USE_X_FORWARDED_HOST", False)))


def _facility_pattern() -> re.Pattern:
    pattern = _raw("WS4REDIS_FACILITY_PATTERN")
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise ImproperlyConfigured(f"WS4REDIS_FACILITY_PATTERN is not a regular expression: {exc}") from None


def _load() -> Settings:
    url = _raw("WEBSOCKET_URL")
    if not (isinstance(url, str) and url.startswith("/") and url.endswith("/")):
        raise ImproperlyConfigured(f"WEBSOCKET_URL must be a path starting and ending with '/', got {url!r}")

    try:
        connection = RedisAddress.from_dict(_raw("WS4REDIS_CONNECTION"))
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None

    prefix = _raw("WS4REDIS_PREFIX")
    if prefix is not None and not isinstance(prefix, str):
        raise ImproperlyConfigured(f"WS4REDIS_PREFIX must be a string or None, got {prefix!r}")

    expire = _raw("WS4REDIS_EXPIRE")
    if isinstance(expire, bool) or not isinstance(expire, int) or expire < 0:
        raise ImproperlyConfigured(f"WS4REDIS_EXPIRE must be a non-negative integer (seconds), got {expire!r}")

    subscriber_path = _raw("WS4REDIS_SUBSCRIBER")
    if subscriber_path == _REFERENCE_SUBSCRIBER:
        subscriber_path = DEFAULTS["WS4REDIS_SUBSCRIBER"]
    try:
        subscriber = import_string(subscriber_path) if isinstance(subscriber_path, str) else subscriber_path
    except ImportError as exc:
        raise ImproperlyConfigured(f"WS4REDIS_SUBSCRIBER: cannot import {subscriber_path!r}: {exc}") from None
    from .subscriber import RedisSubscriber

    if not (isinstance(subscriber, type) and issubclass(subscriber, RedisSubscriber)):
        raise ImproperlyConfigured(
            f"WS4REDIS_SUBSCRIBER must name a subclass of twisted_ws4redis.subscriber.RedisSubscriber, "
            f"got {subscriber_path!r}")

    heartbeat = _raw("WS4REDIS_HEARTBEAT")
    if heartbeat is not None and not (isinstance(heartbeat, str) and heartbeat):
        raise ImproperlyConfigured(f"WS4REDIS_HEARTBEAT must be a non-empty string or None, got {heartbeat!r}")

    return Settings(
        websocket_url=url,
        connection=connection,
        prefix=f"{prefix}:" if prefix else "",
        expire=expire,
        subscriber=subscriber,
        heartbeat=heartbeat.encode() if heartbeat else None,
        allowed_channels=_callable("WS4REDIS_ALLOWED_CHANNELS"),
        process_request=_callable("WS4REDIS_PROCESS_REQUEST"),
        max_message_size=_number("WS4REDIS_MAX_MESSAGE_SIZE", integer=True, unit="bytes"),
        origins=_origins(),
        facility_pattern=_facility_pattern(),
        handshake_timeout=_number("WS4REDIS_HANDSHAKE_TIMEOUT", unit="seconds"),
        max_header_size=_number("WS4REDIS_MAX_HEADER_SIZE", integer=True, unit="bytes"),
        max_publish_rate=_number("WS4REDIS_MAX_PUBLISH_RATE", optional=True, unit="messages per second"),
        max_buffered_bytes=_number("WS4REDIS_MAX_BUFFERED_BYTES", integer=True, unit="bytes"),
        auto_ping_interval=_number("WS4REDIS_AUTO_PING_INTERVAL", optional=True, unit="seconds"),
        auto_ping_timeout=_number("WS4REDIS_AUTO_PING_TIMEOUT", unit="seconds"),
        max_body_size=_number("WS4REDIS_MAX_BODY_SIZE", integer=True, unit="bytes"),
        body_timeout=_number("WS4REDIS_BODY_TIMEOUT", unit="seconds"),
        body_min_rate=_number("WS4REDIS_BODY_MIN_RATE", unit="bytes per second"),
        max_connections=_number("WS4REDIS_MAX_CONNECTIONS", integer=True, optional=True, unit="websockets"),
        reserved_descriptors=_number("WS4REDIS_RESERVED_DESCRIPTORS", integer=True, unit="descriptors"),
        # Checked against OpenSSL by tls.acceptable_ciphers, where an ssl: endpoint needs it.
        tls_ciphers=_raw("WS4REDIS_TLS_CIPHERS"),
        max_frame_rate=_number("WS4REDIS_MAX_FRAME_RATE", optional=True, unit="frames per second"),
        max_fragments=_number("WS4REDIS_MAX_FRAGMENTS", integer=True, optional=True, unit="frames per message"),
    )


@functools.cache
def get_settings() -> Settings:
    """The validated settings, read once (and again after a test overrides one)."""
    return _load()


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
