"""``RedisPublisher``: send a message to websockets from any Django code
(views, commands, task workers), in any process that can reach Redis."""
from __future__ import annotations

import threading

import redis

from . import audience as wire
from .conf import redis_address
from .redis_store import RedisStore, reaching_redis

_pools: dict = {}
_pools_lock = threading.Lock()


def _connection() -> redis.Redis:
    """A client on this process' pool for the current Redis address."""
    address = redis_address()
    with _pools_lock:
        pool = _pools.get(address)
        if pool is None:
            pool = _pools[address] = redis.ConnectionPool(**address.redis_py_kwargs())
    return redis.Redis(connection_pool=pool)


class RedisPublisher(RedisStore):
    """``RedisPublisher(facility='foo', broadcast=True, users=['john'], groups=[SELF],
    sessions=[...], request=request).publish_message(RedisMessage('hello'))``"""

    def __init__(self, **kwargs):
        super().__init__(_connection())
        self._publishers = self._get_message_channels(**kwargs)

    def fetch_message(self, request, facility: str, audience: str = "any") -> bytes | None:
        """The persisted message a websocket of ``request`` would get for ``facility``.
        ``audience`` is 'session', 'user', 'group', 'broadcast' or 'any' (searched
        in that order, the first one found wins)."""
        if audience not in ("any",) + wire.AUDIENCES:
            raise ValueError(f"audience must be one of {('any',) + wire.AUDIENCES}, got {audience!r}")
        order = ("session", "user", "group", "broadcast") if audience == "any" else (audience,)
        prefix = self.get_prefix()
        for name in order:
            if name == "broadcast":
                channels = [wire.channel_name(prefix, "broadcast", facility)]
            else:
                channels = [wire.channel_name(prefix, name, facility, member)
                            for member in wire.resolve_self(name, request)]
            for channel in channels:
                with reaching_redis():
                    message = self._connection.get(channel)
                if message:
                    return message
        return None
