"""``RedisPublisher``: send a message to websockets from any Django code
(views, commands, task workers), in any process that can reach Redis, from a
thread (``publish_message``) or from an event loop (``apublish_message``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterable
from typing import Any
from weakref import WeakKeyDictionary

import redis

from . import audience as wire
from .conf import get_settings, redis_address
from .redis_address import RedisAddress, aclose_asyncio_client
from .redis_store import RedisMessage, RedisStore, is_cluster, publication_pipeline, publication_rounds, reaching_redis

_clients: dict = {}
_clients_lock = threading.Lock()

#: event loop -> {RedisAddress: (redis.asyncio client, the generator closing it)}:
#: asyncio connections belong to the loop that opened them.
_loop_clients: WeakKeyDictionary = WeakKeyDictionary()


def _connection() -> redis.Redis:
    """This process' client (and its pool) for the current Redis address."""
    address = redis_address()
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = address.redis_py_client()
    return client


async def _aconnection() -> redis.asyncio.Redis:
    """The running event loop's client (and its pool) for the current Redis
    address. Under WSGI, Django runs an async view through asgiref's
    ``async_to_sync``, which gives every call a new loop (``asyncio.run`` on a
    fresh thread): so each client is closed when its loop shuts down (a loop
    closed without ``shutdown_asyncgens()``, which ``asyncio.run`` calls, would
    keep its client)."""
    loop = asyncio.get_running_loop()
    address = redis_address()
    with _clients_lock:
        clients = _loop_clients.setdefault(loop, {})
        entry = clients.get(address)
        if entry is None:
            client = address.redis_py_asyncio_client()
            closer = _closed_with_loop(loop, address, client)
            clients[address] = (client, closer)
    if entry is not None:
        return entry[0]
    await closer.asend(None)
    return client


async def _closed_with_loop(
    loop: asyncio.AbstractEventLoop, address: RedisAddress, client: redis.asyncio.Redis
) -> AsyncGenerator[None]:
    """Waits at ``yield`` for as long as ``loop`` runs: a loop shutting down
    closes its async generators (``asyncio.run`` does, and so asgiref and the
    ASGI servers), which closes the client's connections on that loop."""
    try:
        yield
    finally:
        with _clients_lock:
            _loop_clients.get(loop, {}).pop(address, None)
        await aclose_asyncio_client(client)


def _mget(client: Any, keys: list[str]) -> Any:
    """MGET (awaitable from an asyncio client); on a cluster one MGET per slot
    (across slots it is CROSSSLOT), the values in ``keys``' order."""
    return client.mget_nonatomic(keys) if is_cluster(client) else client.mget(keys)


def _first_found(values: list) -> bytes | None:
    """MGET's replies in search order: the first message kept wins."""
    return next((value for value in values if value), None)


class RedisPublisher(RedisStore):
    """Publishes to the websockets of one audience on one facility:
    ``RedisPublisher(facility='foo', broadcast=True, users=['john'], groups=[SELF],
    sessions=[...], request=request).publish_message(RedisMessage('hello'))``, or
    ``await ....apublish_message(...)`` in async code. The audience is checked
    here; SELF is resolved when first needed (then in the caller's way: an async
    view's constructor must not read the database).

    :param request: the current request, which ``SELF`` stands for.
    :param facility: the facility (ws4redis' default, ``'{facility}'``, is a name too).
    :param broadcast: the sockets subscribed with ``subscribe-broadcast``.
    :param groups: group names, or ``SELF`` for the request's user's groups.
    :param users: user names, or ``SELF`` for the request's user.
    :param sessions: session keys, or ``SELF`` for the request's session.
    """

    def __init__(
        self,
        request: Any = None,
        facility: str = "{facility}",
        broadcast: bool = False,
        groups: Iterable = (),
        users: Iterable = (),
        sessions: Iterable = (),
    ):
        super().__init__(_connection())
        members = wire.audience_members(groups, users, sessions)
        self._audience = {
            "request": request,
            "facility": facility,
            "broadcast": broadcast,
            "groups": members["group"],
            "users": members["user"],
            "sessions": members["session"],
        }
        self._channels: list[str] | None = None

    @property
    def _publishers(self) -> list[str]:
        """The channel names (as ws4redis code reads them), SELF resolved on the
        caller's thread on first use."""
        if self._channels is None:
            self._channels = self._get_message_channels(**self._audience)
        return self._channels

    @_publishers.setter
    def _publishers(self, channels: list[str]) -> None:
        self._channels = channels

    async def _achannels(self) -> list[str]:
        if self._channels is None:
            self._channels = await wire.aresolved(wire.channel_steps(self.get_prefix(), **self._audience))
        return self._channels

    async def apublish_message(self, message: RedisMessage, expire: int | None = None) -> int:
        """``publish_message`` without blocking the event loop (redis.asyncio,
        one pool per loop; SELF read with Django's async APIs): the same
        commands, return value and ``RedisUnavailable``."""
        client = await _aconnection()
        sharded = is_cluster(client)
        rounds = publication_rounds(await self._achannels())
        channels, send_script = next(rounds)
        with reaching_redis():
            while True:
                pipe = publication_pipeline(client)
                self._queue_publication(pipe, channels, message, expire, send_script, sharded)
                try:
                    channels, send_script = rounds.send(await pipe.execute(raise_on_error=False))
                except StopIteration as done:
                    return done.value

    def fetch_message(self, request: Any, facility: str, audience: str = "any") -> bytes | None:
        """The persisted message a websocket of ``request`` would get for ``facility``.
        ``audience`` is 'session', 'user', 'group', 'broadcast' or 'any' (searched
        in that order, the first one found wins)."""
        channels = wire.resolved(wire.fetch_steps(self.get_prefix(), facility, request, audience))
        if not channels:
            return None
        with reaching_redis():
            return _first_found(_mget(self._connection, channels))

    async def afetch_message(self, request: Any, facility: str, audience: str = "any") -> bytes | None:
        """``fetch_message`` without blocking the event loop."""
        channels = await wire.aresolved(wire.fetch_steps(self.get_prefix(), facility, request, audience))
        if not channels:
            return None
        client = await _aconnection()
        with reaching_redis():
            return _first_found(await _mget(client, channels))


def close_session_websockets(session_key: str) -> int:
    """Close, on every server process, the websockets opened with this session
    (close code 4401; ws4redis.js reconnects, as whoever the browser is now).
    Logout does this by itself; call it where your code ends a session another
    way (``session.flush()``, ``cycle_key()``, deleting expired sessions), before
    the key is gone. Returns how many server processes heard it; raises
    ``RedisUnavailable`` when Redis cannot be reached in time."""
    command = wire.close_session_command(session_key)
    client = _connection()
    with reaching_redis():
        # On a cluster every server subscribes the control channel on its shard (SSUBSCRIBE).
        return client.execute_command(
            "SPUBLISH" if is_cluster(client) else "PUBLISH", wire.control_channel(get_settings().prefix), command
        )
