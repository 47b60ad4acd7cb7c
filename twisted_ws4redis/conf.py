"""Every setting twisted_ws4redis reads, with its default, validated in one place.

The names and defaults are those of ws4redis, so an existing project keeps its
settings. ``get_settings()`` raises ``ImproperlyConfigured`` naming the bad
setting; the server calls it at start-up so that a mistake stops it there.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

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
    # Not in ws4redis: a bound on what one client may send in one message.
    "WS4REDIS_MAX_MESSAGE_SIZE": 1024 * 1024,
}

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

    max_size = _raw("WS4REDIS_MAX_MESSAGE_SIZE")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0:
        raise ImproperlyConfigured(f"WS4REDIS_MAX_MESSAGE_SIZE must be a positive integer (bytes), got {max_size!r}")

    return Settings(
        websocket_url=url,
        connection=connection,
        prefix=f"{prefix}:" if prefix else "",
        expire=expire,
        subscriber=subscriber,
        heartbeat=heartbeat.encode() if heartbeat else None,
        allowed_channels=_callable("WS4REDIS_ALLOWED_CHANNELS"),
        process_request=_callable("WS4REDIS_PROCESS_REQUEST"),
        max_message_size=max_size,
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
    if setting in DEFAULTS:
        get_settings.cache_clear()


setting_changed.connect(_settings_changed)
