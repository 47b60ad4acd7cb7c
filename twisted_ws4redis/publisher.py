"""``RedisPublisher``: send a message to websockets from any Django code
(views, commands, task workers), in any process that can reach Redis."""
from __future__ import annotations

import threading

import redis

from . import audience as wire
from .conf import get_settings, redis_address
from .redis_store import RedisStore, reaching_redis

_clients: dict = {}
_clients_lock = threading.Lock()


def _connection() -> redis.Redis:
    """This process' client (and its pool) for the current Redis address."""
    address = redis_address()
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = address.redis_py_client()
    return client


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


def close_session_websockets(session_key: str) -> int:
    """Close, on every server process, the websockets opened with this session
    (close code 4401; ws4redis.js reconnects, as whoever the browser is now).
    Logout does this by itself; call it where your code ends a session another
    way (``session.flush()``, ``cycle_key()``, deleting expired sessions), before
    the key is gone. Returns how many server processes heard it; raises
    ``RedisUnavailable`` when Redis cannot be reached in time."""
    command = wire.close_session_command(session_key)
    with reaching_redis():
        return _connection().publish(wire.control_channel(get_settings().prefix), command)
