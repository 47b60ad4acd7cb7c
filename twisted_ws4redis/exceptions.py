"""ws4redis' exception names, for code that imports them, and ours."""

import socket

import redis
from django.http import BadHeaderError


class RedisUnavailable(redis.exceptions.ConnectionError):
    """Raised by ``RedisPublisher`` when Redis cannot be reached or does not
    answer within WS4REDIS_CONNECTION's ``socket_connect_timeout`` /
    ``socket_timeout``. The message was not published; publishing again works
    once Redis is back. (A ``redis.ConnectionError``, so existing handlers
    still catch it.)"""


class WebSocketError(socket.error):
    pass


class FrameTooLargeException(WebSocketError):
    pass


class HandshakeError(BadHeaderError):
    pass


class UpgradeRequiredError(HandshakeError):
    pass
