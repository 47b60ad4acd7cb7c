"""ws4redis' message and store types, kept under their old names.

``RedisStore`` is the side used by Django code (redis-py; its asyncio twin
is in ``publisher``); the websockets use the non-blocking clients in
``server.pubsub``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from . import audience, history
from .audience import SELF  # noqa: F401  (public: ``from ...redis_store import SELF``)
from .conf import get_settings
from .exceptions import RedisUnavailable


@contextmanager
def reaching_redis() -> Iterator[None]:
    """Turn redis-py's connection failures and timeouts into ``RedisUnavailable``."""
    try:
        yield
    except (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        # a cluster's, while a master fails over: CLUSTERDOWN, no node for a slot
        redis.exceptions.ClusterError,
        redis.exceptions.SlotNotCoveredError,
    ) as exc:
        raise RedisUnavailable(f"Redis is unavailable: {exc}") from exc


def is_cluster(client: Any) -> bool:
    """Whether a redis-py client (blocking or asyncio) is a Redis Cluster's."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def publication_pipeline(client: Any) -> Any:
    """A pipeline for one publication: a transaction on one Redis; on a
    cluster a plain pipeline, which redis-py splits per node (a transaction
    there must stay in one slot, and a publication's channels are in many),
    but for the blocking client one command at a time (``_OneByOne``)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        return _OneByOne(client)
    return client.pipeline(transaction=not is_cluster(client))


class _OneByOne:
    """A pipeline's ``execute_command``/``execute`` sending each command on
    its own. redis-py 8.1's blocking cluster pipeline asks its default node
    for the keys of an EVALSHA (COMMAND GETKEYS) and, that node dead, fails
    every later publication, even once its replica took over; the client's
    own commands find the slot locally and follow the failover."""

    def __init__(self, client: Any):
        self._client = client
        self._commands: list[tuple] = []

    def execute_command(self, *args: Any) -> None:
        self._commands.append(args)

    def execute(self, raise_on_error: bool = True) -> list:
        replies = []
        for args in self._commands:
            try:
                replies.append(self._client.execute_command(*args))
            except redis.exceptions.ResponseError as exc:  # as a pipeline gives them (NOSCRIPT)
                if raise_on_error:
                    raise
                replies.append(exc)
        return replies


def publication_rounds(channels: list[str]) -> Generator[tuple[list[str], bool], list, int]:
    """One publication's round trips, the same for a blocking and an asyncio
    caller: yields which channels to queue and whether to send the history's
    script itself rather than its digest, and is sent the replies of that
    pipeline. The digest goes first; the channels whose script Redis did not
    know (NOSCRIPT: a restart, SCRIPT FLUSH, or on a cluster a node that never
    ran it) are sent again, with the script, and only those: the others have
    published already (on one Redis all or none of them fail). Returns how
    many subscribers it reached: the sum of PUBLISH's counts (SETEX answers
    True, the history script {count, id}); the first error among the
    replies is raised."""
    replies = list((yield channels, False))
    # A NOSCRIPT comes only with the history on: one command per channel.
    missing = [index for index, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
    if missing:
        again = yield [channels[index] for index in missing], True
        for index, reply in zip(missing, again, strict=False):
            replies[index] = reply
    total = 0
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            total += reply[0]
        elif not isinstance(reply, bool):
            total += reply
    return total


class RedisMessage(bytes):
    """A message as bytes. ``str`` is UTF-8 encoded; a Redis pub/sub reply
    ``[b'message', channel, data]`` gives ``data``. Like ws4redis, the constructor
    returns ``None`` for the heartbeat, an empty value and anything else."""

    def __new__(cls, value: Any):
        if isinstance(value, list) and len(value) >= 3 and value[0] in (b"message", "message"):
            value = value[2]
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)) or not value:
            return None
        if value == get_settings().heartbeat:
            return None
        return super().__new__(cls, value)


class RedisStore:
    """Publishes to the channels chosen with ``_get_message_channels`` over a
    blocking redis-py connection."""

    def __init__(self, connection):
        self._connection = connection
        self._publishers: list[str] = []
        self._expire = get_settings().expire

    @staticmethod
    def get_prefix() -> str:
        return get_settings().prefix

    def _get_message_channels(
        self, request=None, facility: str = "{facility}", broadcast: bool = False, groups=(), users=(), sessions=()
    ) -> list[str]:
        return audience.message_channels(
            self.get_prefix(),
            facility,
            request=request,
            broadcast=broadcast,
            groups=groups,
            users=users,
            sessions=sessions,
        )

    def publish_message(self, message: RedisMessage, expire: int | None = None) -> int:
        """PUBLISH ``message`` on every channel and, when ``expire`` (default
        WS4REDIS_EXPIRE) is positive, keep it there for that many seconds for
        websockets that connect later; with WS4REDIS_HISTORY_SIZE on, record it
        in each channel's history too (history.py). One round trip. Returns
        how many websockets' servers received it (PUBLISH's count, summed).
        Raises ``RedisUnavailable`` when Redis cannot be reached in time. On a
        Redis Cluster: SPUBLISH, each command sent to its slot's master, the
        count that of the masters' own subscribers."""
        sharded = is_cluster(self._connection)
        rounds = publication_rounds(self._publishers)
        channels, send_script = next(rounds)
        with reaching_redis():
            while True:
                pipe = publication_pipeline(self._connection)
                self._queue_publication(pipe, channels, message, expire, send_script, sharded)
                try:
                    channels, send_script = rounds.send(pipe.execute(raise_on_error=False))
                except StopIteration as done:
                    return done.value

    def _queue_publication(
        self,
        pipe,
        channels: list[str],
        message: RedisMessage,
        expire: int | None,
        send_script: bool = False,
        sharded: bool = False,
    ) -> None:
        """Queue the commands of one publication on ``pipe`` (a blocking or an
        asyncio redis-py pipeline): per channel PUBLISH (and SETEX), or the
        history's script, by its digest unless ``send_script``
        (``publication_rounds``); ``sharded``: SPUBLISH and the history's
        cluster names, for a Redis Cluster."""
        if not isinstance(message, RedisMessage):
            raise ValueError("message must be a RedisMessage")  # noqa: TRY004 (ws4redis raised ValueError)
        settings = get_settings()
        expire = self._expire if expire is None else expire
        source, digest = history.publish_script(sharded)
        script = ("EVAL", source) if send_script else ("EVALSHA", digest)
        args = history.publish_args(message, expire, settings.history_size, settings.history_ttl)
        for channel in channels:
            if settings.history_size:
                pipe.execute_command(*script, 3, *history.publish_keys(channel, settings.prefix, sharded), *args)
            else:
                pipe.execute_command("SPUBLISH" if sharded else "PUBLISH", channel, history.plain(message))
                if expire > 0:
                    # SETEX as ws4redis sends it (redis-py deprecates its setex() wrapper).
                    pipe.execute_command("SETEX", channel, expire, message)

    # ws4redis at HEAD had a separate one-round-trip variant; ours always is.
    def pipeline_publish_message(
        self, message: RedisMessage, expire: int | None = None, transaction: bool = True
    ) -> int:
        return self.publish_message(message, expire)
