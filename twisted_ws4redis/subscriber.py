"""``RedisSubscriber``: one websocket's channels. Replaceable through
WS4REDIS_SUBSCRIBER, as in ws4redis: a subclass may change the recognised
flags (``subscription_channels``/``publish_channels``) or how they map to Redis
channels (``set_pubsub_channels``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from . import audience
from .conf import get_settings

if TYPE_CHECKING:  # the bus is the server's; a settings check imports this module without it
    from .server.pubsub import Listener, RedisBus


class RedisSubscriber:
    subscription_channels = ("subscribe-session", "subscribe-group", "subscribe-user", "subscribe-broadcast")
    publish_channels = ("publish-session", "publish-group", "publish-user", "publish-broadcast")

    def __init__(self, connection: RedisBus):
        self._bus = connection
        self._listener: Listener | None = None
        #: Redis channel names this websocket receives from / publishes to.
        self.subscribed: list[str] = []
        self.publishers: list[str] = []

    @classmethod
    def recognised_flags(cls) -> tuple[str, ...]:
        return tuple(cls.subscription_channels) + tuple(cls.publish_channels)

    def set_pubsub_channels(self, request: Any, channels: Iterable[str]) -> None:
        """Turn the allowed flags into Redis channel names. Runs in a Django
        thread (it may read the session), never on the reactor."""
        channels = list(channels)
        facility = request.facility
        prefix = get_settings().prefix
        self.subscribed = audience.message_channels(
            prefix, facility, request=request, **audience.requested_audiences(channels, "subscribe")
        )
        self.publishers = audience.message_channels(
            prefix, facility, request=request, **audience.requested_audiences(channels, "publish")
        )

    def subscribe(self, listener: Listener) -> defer.Deferred:
        """Start delivering; fires once Redis confirmed every subscription."""
        self._listener = listener
        return defer.gatherResults([self._bus.listen(channel, listener) for channel in self.subscribed])

    def fetch_persisted_messages(self) -> defer.Deferred:
        """The persisted messages of the subscribed channels, in channel order."""
        d = self._bus.fetch(self.subscribed)
        return d.addCallback(lambda values: [value for value in values if value])

    def publish_message(self, message: bytes, expire: int | None = None) -> defer.Deferred:
        expire = get_settings().expire if expire is None else expire
        return self._bus.publish(self.publishers, message, expire)

    def release(self) -> None:
        if self._listener is not None:
            for channel in self.subscribed:
                self._bus.unlisten(channel, self._listener)
            self._listener = None
