"""The process' Redis clients on the reactor: ONE shared subscriber connection,
whatever the number of websockets, and ONE pipelined command connection for
PUBLISH/SETEX/MGET.

The commands share one connection on purpose: txredisapi's pool hands each
command to a random connection, which reorders a socket's PUBLISH and SETEX
(stale persisted messages, out-of-order delivery). Pipelined on one connection,
Redis executes them in the order they were sent.

Channels are reference-counted: SUBSCRIBE when the first listener arrives,
UNSUBSCRIBE after the last one leaves. txredisapi reconnects with exponential
back-off (capped here at ``RECONNECT_MAX_DELAY`` seconds, so that a Redis back
after a long outage is found quickly) but does not restore subscriptions; we
re-issue them on every new connection.

An outage is logged once: a warning naming the address and the error when an
attempt to connect first fails, or when Redis refuses the connection (a wrong
or missing password, a database index out of range), and an info line when
the subscriber is back. From a failed attempt, a refusal or a lost connection
until Redis confirms a subscription again, ``reachable`` is False (the
websocket door then refuses handshakes with 503).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

import txredisapi
from redis.crc import key_slot
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import history, logsafe
from ..conf import get_settings
from ..redis_address import RedisAddress
from .outbox import joined

log = Logger()

#: Seconds: first and longest wait between attempts to reconnect to Redis.
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MAX_DELAY = 5.0
#: Seconds a websocket waits for Redis (its subscriptions, persisted or recorded messages).
REDIS_WAIT = 5.0
#: Seconds between the subscriber connection's PINGs, and the longest a PING may
#: go unanswered before that connection is dropped (and Redis counts as
#: unreachable until a new one is subscribed): a connection that only listens
#: never notices a Redis that is frozen or cut off without a FIN or a reset.
PING_INTERVAL = 5.0
PING_TIMEOUT = 10.0


class PubSubMessage:
    """A message from Redis, as every listener of its channel sees it: the
    history's envelope taken off (``id`` is None without one), each websocket
    frame built once, by the first listener that needs it."""

    __slots__ = ("_framed", "_prepared", "channel", "id", "is_binary", "payload")

    def __init__(self, channel: bytes, payload: bytes, *, live: bool = True, message_id: str | None = None):
        """``live``: what the channel carried (maybe an envelope); else a
        persisted message or a recorded one (with its ``message_id``), the
        payload itself."""
        self.channel = channel
        self.id, self.payload = history.unwrap(payload) if live else (message_id, payload)
        try:
            self.payload.decode("utf-8")
            self.is_binary = False
        except UnicodeDecodeError:
            # ws4redis sent these as text frames, which browsers reject (1007).
            self.is_binary = True
        self._prepared = None
        self._framed: dict | None = None

    def prepared(self, factory):
        if self._prepared is None:
            self._prepared = factory.prepareMessage(self.payload, self.is_binary)
        return self._prepared

    def framed(self, key, frame: Callable[[], bytes]) -> bytes:
        """``frame()``, made once per ``key`` for all listeners (a ws4redis.v2
        ``message`` names its facility and audience)."""
        if self._framed is None:
            self._framed = {}
        made = self._framed.get(key)
        if made is None:
            made = self._framed[key] = frame()
        return made


class Burst(list):
    """Messages of one channel, in order, handed to each listener at once:
    the consecutive messages of one read of the subscriber connection (a
    burst published together), or a replay. A listener that takes them all
    writes them with ``writes()``, joined once for every listener, so that a
    burst costs each websocket one write, not one per message (at 19,500
    sockets the per-message calls were most of a delivery's cost)."""

    __slots__ = ("_writes", "channel")

    def __init__(self, channel: bytes, messages: Iterable[PubSubMessage] = ()):
        super().__init__(messages)
        self.channel = channel
        self._writes: dict = {}

    def writes(self, key, frame: Callable[[PubSubMessage], bytes], most: int) -> list[bytes]:
        """Every message's ``frame(message)``, joined into writes of at most
        ``most`` bytes (WS4REDIS_MAX_BUFFERED_BYTES, as the outbox joins);
        made once per ``key`` for all listeners."""
        made = self._writes.get(key)
        if made is None:
            made = self._writes[key] = joined([frame(message) for message in self], most)
        return made


class Replayed(dict):
    """Per channel, the last id that a replay from the history delivered.
    Messages recorded before the replay's read may still be on their way on
    the subscriber connection after it, so a live message up to that id was
    delivered already; the channel's first newer one ends the check (Redis
    delivers a channel's messages in order). A dict, so that the check every
    delivery makes first, whether there is anything to check, costs no call."""

    __slots__ = ()

    def note(self, channel: bytes, message_id: history.MessageId) -> None:
        self[channel] = message_id

    def delivered(self, message: PubSubMessage) -> bool:
        last = self.get(message.channel)
        if last is None or message.id is None:
            return False
        if history.parse_id(message.id) <= last:
            return True
        del self[message.channel]
        return False


Listener = Callable[[Burst], None]
Watcher = Callable[[bytes], None]


class _WholeReads:
    """A txredisapi protocol that parses everything one read brought at once."""

    _leftover = b""

    def dataReceived(self, data, unpause=False):
        super().dataReceived(data, unpause)  # type: ignore[misc]  # a mixin over txredisapi's protocol
        while self._leftover:
            data, self._leftover = self._leftover, b""
            super().dataReceived(data)  # type: ignore[misc]

    def setLineMode(self, extra=b""):
        # txredisapi pauses the socket and parses the rest of a read in the next
        # reactor turn, one reply (one bulk string) per turn: a burst of N
        # messages then costs N turns, N pause/resume system calls and N
        # separate writes to every websocket, and a replay of N recorded
        # messages 2N turns. dataReceived() above goes on with the rest at once.
        self.line_mode = 1
        self._leftover = extra


class _CommandProtocol(_WholeReads, txredisapi.RedisProtocol):
    """The command connection's protocol (replies: recovered histories)."""


#: The pushes of plain and of sharded pub/sub (RESP2: [kind, channel, payload or count]).
_MESSAGES = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe")


class _SubscriberProtocol(_WholeReads, txredisapi.SubscriberProtocol):
    """Pushes (messages, subscription confirmations) are routed here rather
    than through txredisapi's reply queue, and a burst read from Redis at once
    is parsed at once, and dispatched at the end of the read. Messages go to
    the factory's bus, the rest to its shard (``ShardSubscriber``)."""

    _pinger: task.LoopingCall | None = None
    _ping_sent: float | None = None  # when the PING waiting for its answer went out

    def dataReceived(self, data, unpause=False):
        try:
            super().dataReceived(data, unpause)
        finally:
            self.factory.bus._dispatch_burst()

    def start_pinging(self, clock) -> None:
        """PING every PING_INTERVAL once subscribed (connected: AUTH and SELECT are answered)."""
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = clock
        self._pinger.start(PING_INTERVAL, now=False)

    def _ping(self) -> None:
        now = self._pinger.clock.seconds()  # type: ignore[union-attr]  # set by start_pinging
        if self._ping_sent is None:
            self._ping_sent = now
            self.send("PING", [])
        elif now - self._ping_sent >= PING_TIMEOUT:
            log.warn(
                "Redis at {address} has not answered a PING for {seconds:.0f} s: dropping the subscriber connection",
                address=self.factory.shard.label,
                seconds=now - self._ping_sent,
            )
            self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        super().connectionLost(reason)

    def replyReceived(self, reply):
        if reply == [b"pong", b""] or reply in (b"PONG", "PONG"):  # subscribed, or not (no channel yet)
            self._ping_sent = None
            return
        bus = self.factory.bus
        pushed = isinstance(reply, list) and len(reply) == 3
        if pushed and reply[0] in _MESSAGES:
            bus._message(reply[1], reply[2])
            return
        # What follows a confirmation or a refusal comes after the messages before it.
        bus._dispatch_burst()
        shard = self.factory.shard
        if isinstance(reply, txredisapi.ResponseError) and shard.protocol is self:
            error = str(reply)
            if error.startswith("NOAUTH"):
                # SUBSCRIBE refused because Redis wants a password we did not give.
                shard.refused(error, self)
            elif error.startswith(("MOVED", "ASK")):
                # A sharded subscription sent to a node that no longer owns the slot.
                bus._moved(shard)
            else:
                # Another refusal (an ACL's NOPERM for one channel, which a
                # client's facility may name) is that channel's, not an outage
                # of every websocket. Nothing waits for it: txredisapi's reply
                # queue would keep it for ever.
                log.warn("Redis refused a subscription: {error}", error=logsafe.text(error))
            return
        if pushed:
            kind = reply[0]
            if kind in _SUBSCRIBED:
                bus._subscribed(shard, reply[1])
                return
            if kind in _UNSUBSCRIBED:
                bus._unsubscribed(shard, reply[1])
                return
        # Replies to the commands txredisapi sends on connecting (AUTH).
        super().replyReceived(reply)

    def send(self, command: str, channels: Iterable[bytes]) -> None:
        self.transport.write(self._build_command(command, *channels))


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _SubscriberProtocol
    initialDelay = RECONNECT_INITIAL_DELAY
    maxDelay = RECONNECT_MAX_DELAY

    def __init__(self, shard: ShardSubscriber, address: RedisAddress):
        super().__init__(isLazy=True)
        self.shard = shard
        self.bus = shard.bus
        self.charset = None
        self.convertNumbers = False
        self.password = address.password
        self.username = address.username

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.whenConnected().addCallback(self.shard._connected)
        return protocol

    def connectionError(self, why: str) -> None:
        # txredisapi's report of an AUTH or SELECT that Redis refused, after
        # which it drops the connection (and, its choice, stops trying).
        super().connectionError(why)
        self.shard.refused(why)


def command_factory(address: RedisAddress, label: str) -> txredisapi.RedisFactory:
    """A (lazy, reconnecting) pipelined command connection, one per Redis or
    per cluster master; start it with ``startConnecting(endpoint)``."""
    factory = txredisapi.RedisFactory(
        label,
        address.db or None,
        1,
        isLazy=True,
        charset=None,
        password=address.password,
        username=address.username,
        replyTimeout=address.socket_timeout,
        convertNumbers=False,
    )
    factory.protocol = _CommandProtocol
    factory.initialDelay = RECONNECT_INITIAL_DELAY
    factory.maxDelay = RECONNECT_MAX_DELAY
    return factory


class _ReportingEndpoint:
    """A client endpoint that reports every failed attempt to connect."""

    def __init__(self, endpoint, on_failure: Callable[[Failure], None]):
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, factory) -> defer.Deferred:
        def failed(failure: Failure) -> Failure:
            if not failure.check(defer.CancelledError):  # a stop, not an outage
                self._on_failure(failure)
            return failure

        return self._endpoint.connect(factory).addErrback(failed)

    def __repr__(self) -> str:  # txredisapi's "Scheduling retry" lines name the endpoint
        return repr(self._endpoint)


class ShardSubscriber:
    """One subscriber connection: to the one Redis, or to one master of a
    cluster (sharded pub/sub). It reconnects with back-off and logs an outage
    once: a warning naming the address and the error when an attempt first
    fails or Redis refuses the connection, an info line when it is back."""

    def __init__(self, bus: _Bus, address: RedisAddress, label: str, sharded: bool = False):
        self.bus = bus
        self.label = label
        self.sharded = sharded
        self.protocol: _SubscriberProtocol | None = None
        self.retired = False  # a cluster node that no longer holds slots: its losses are no outage
        self._unreachable = False  # an outage has been reported and is not over
        self.failed = False  # an attempt failed, Redis refused us or the connection was lost (since start)
        self.live = False  # Redis confirmed a subscription on the current connection
        self.connected_before = False  # a connection was made already: the next one is a reconnection
        self._factory = _SubscriberFactory(self, address)

    def start(self, endpoint) -> None:
        # The subscriber's attempts tell whether Redis is reachable.
        self._factory.startConnecting(
            _ReportingEndpoint(endpoint, lambda failure: self.outage(failure.getErrorMessage()))
        )

    def stop(self) -> defer.Deferred:
        return self._factory.disconnect()

    @property
    def reachable(self) -> bool:
        """False from a failed attempt, a refusal or a lost connection until
        Redis confirms a subscription again; True during the first attempt."""
        return self.live or not self.failed

    @property
    def settled(self) -> bool:
        """Whether the first attempt is over: Redis confirmed a subscription, or an attempt failed."""
        return self.live or self.failed

    def outage(self, error: str) -> None:
        self.failed = True
        if self._unreachable or not self.bus.running or self.retired:
            return
        self._unreachable = True
        log.warn("Redis at {address} is unreachable: {error}", address=self.label, error=logsafe.text(error))

    def refused(self, error: str, protocol: _SubscriberProtocol | None = None) -> None:
        """Redis answered but refused this server (AUTH, SELECT, NOAUTH):
        an outage too, logged as one; the connection is dropped and retried."""
        self.outage(error)
        if protocol is not None:
            protocol.transport.loseConnection()

    def back(self) -> None:
        """Redis confirmed a subscription on this connection: reachable."""
        self.live = True
        if self._unreachable:
            self._unreachable = False
            log.info("Redis at {address} is reachable again", address=self.label)

    def subscribe(self, keys: list[bytes]) -> None:
        self._send("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", keys)

    def unsubscribe(self, keys: list[bytes]) -> None:
        self._send("SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE", keys)

    def _send(self, command: str, keys: list[bytes]) -> None:
        """One command per channel; sharded, one per slot (several slots in
        one SSUBSCRIBE are CROSSSLOT, even on one node). Not one for all:
        Redis refuses a whole SUBSCRIBE that names one channel an ACL denies
        (NOPERM), and the channels subscribed again after a reconnection
        would then all go with the one a client's facility named."""
        if self.protocol is None or not keys:
            return
        if not self.sharded:
            for key in keys:
                self.protocol.send(command, [key])
            return
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key)
        for group in by_slot.values():
            self.protocol.send(command, group)

    def _connected(self, protocol: _SubscriberProtocol) -> None:
        if self.connected_before:
            self.bus.reconnects += 1
        self.connected_before = True
        self.protocol = protocol
        protocol.whenDisconnected().addCallback(self._disconnected)
        protocol.start_pinging(self.bus._reactor)
        self.bus._shard_connected(self)

    def _disconnected(self, protocol: _SubscriberProtocol) -> None:
        self.bus._dispatch_burst()  # what that connection brought, before anything of the next
        if self.protocol is protocol:
            was_live, self.live = self.live, False
            self.protocol = None
            self.failed = True
            if self.bus.running and was_live and not self.retired:  # not one Redis refused (an outage)
                log.warn("Redis subscriber connection lost; reconnecting to {address}", address=self.label)
            self.bus._shard_lost(self)


class _Bus(Service):
    """What every bus does, whatever its Redis: listeners per channel,
    reference-counted subscriptions, the catch-up from the history after a
    subscriber reconnected, the bursts, the batched fetches, the commands
    every websocket sends. Where each channel's subscription and each key's
    command go is the subclass' (``_shard_of``, ``_on_key``, ``_mget``)."""

    #: A cluster's bus: sharded pub/sub, the history's cluster key names.
    sharded = False

    def __init__(self, address: RedisAddress, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.address = address
        self._reactor = reactor
        self._timeout = address.socket_timeout
        self._listeners: dict[bytes, set[Listener]] = {}
        self._watchers: dict[bytes, Watcher] = {}
        self._waiting: dict[bytes, list[defer.Deferred]] = {}
        self._confirmed: set[bytes] = set()
        #: channel -> id of the last recorded message its listeners got (history on)
        self._last_ids: dict[bytes, str] = {}
        #: channel -> where to catch up from, once subscribed again after a lost connection
        self._resuming: dict[bytes, str] = {}
        #: channel -> live messages held while it catches up
        self._held: dict[bytes, list[PubSubMessage]] = {}
        #: what the catching up delivered, against its doubles among the live messages
        self._replayed = Replayed()
        #: the live messages of the current read not dispatched yet (one channel's)
        self._burst: Burst | None = None
        #: fetches of persisted messages waiting for the end of the reactor turn
        self._fetches: list[tuple[list[str], defer.Deferred]] = []
        # What the metrics read (metrics.py): plain integers, added once per message or burst.
        #: live messages the subscriber received for listeners
        self.received = 0
        #: messages (and their payload bytes) handed to listeners, one per listener
        self.delivered = 0
        self.delivered_bytes = 0
        #: subscriber connections made after the first one (per shard)
        self.reconnects = 0
        #: publications recorded in the history, reads of the history
        self.history_publishes = 0
        self.recoveries = 0

    # -- where things go (the subclass') ---------------------------------------

    def _shard_of(self, key: bytes) -> ShardSubscriber | None:
        raise NotImplementedError

    def _subscribers_of(self, key: bytes) -> list[ShardSubscriber]:
        """Every connection that subscribes ``key``: its shard's."""
        shard = self._shard_of(key)
        return [] if shard is None else [shard]

    def _on_key(self, key: str | None, command: str, *args) -> defer.Deferred:
        """txredisapi's ``command(*args)`` on the connection that holds ``key``."""
        raise NotImplementedError

    def _mget(self, keys: list[str]) -> defer.Deferred:
        raise NotImplementedError

    def _moved(self, shard: ShardSubscriber) -> None:
        """A sharded subscription was answered MOVED (a cluster's)."""

    def _unsubscribed(self, shard: ShardSubscriber, key: bytes) -> None:
        """Redis confirmed an unsubscription (or, in a cluster, made one)."""

    # -- subscriptions ---------------------------------------------------------

    @property
    def channel_count(self) -> int:
        return len(self._listeners)

    def _wanted(self) -> list[bytes]:
        """Every channel to subscribe, the watched ones first."""
        return list(self._watchers) + [key for key in self._listeners if key not in self._watchers]

    def listen(self, channel: str, listener: Listener) -> defer.Deferred:
        """Deliver ``channel``'s messages to ``listener``. The Deferred fires once
        Redis has confirmed the subscription."""
        key = channel.encode("utf-8")
        listeners = self._listeners.get(key)
        if listeners is None:
            listeners = self._listeners[key] = set()
            for shard in self._subscribers_of(key):
                shard.subscribe([key])
        listeners.add(listener)
        if key in self._confirmed:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting.setdefault(key, []).append(waiting)
        return waiting

    def watch(self, channel: str, watcher: Watcher) -> None:
        """Pass every payload of ``channel`` to ``watcher`` for the life of the
        bus (the node control channel): subscribed after every (re)connect, never
        unsubscribed, not counted in ``channel_count``."""
        key = channel.encode("utf-8")
        self._watchers[key] = watcher
        for shard in self._subscribers_of(key):
            shard.subscribe([key])

    def unlisten(self, channel: str, listener: Listener) -> None:
        key = channel.encode("utf-8")
        listeners = self._listeners.get(key)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[key]
            self._confirmed.discard(key)
            self._last_ids.pop(key, None)
            self._resuming.pop(key, None)
            self._replayed.pop(key, None)
            for waiting in self._waiting.pop(key, ()):
                waiting.callback(None)
            for shard in self._subscribers_of(key) if key not in self._watchers else ():
                shard.unsubscribe([key])

    def _resubscribe(self, shard: ShardSubscriber, keys: list[bytes]) -> None:
        """Subscribe ``keys`` on ``shard`` again (a new connection, or a moved
        slot): each catches up from the last message its listeners got."""
        for key in keys:
            if key in self._listeners and key in self._last_ids:
                self._resuming[key] = self._last_ids[key]
        shard.subscribe(keys)

    def _shard_connected(self, shard: ShardSubscriber) -> None:
        keys = [key for key in self._wanted() if self._shard_of(key) is shard]
        if keys:
            self._resubscribe(shard, keys)
        else:
            shard.back()  # nothing to confirm
        log.info(
            "Redis subscriber connected to {address}; subscribing {count} channel(s)",
            address=shard.label,
            count=sum(1 for key in keys if key in self._listeners),
        )

    def _shard_lost(self, shard: ShardSubscriber) -> None:
        for key in [key for key in self._confirmed if self._shard_of(key) is shard]:
            self._confirmed.discard(key)

    def _subscribed(self, shard: ShardSubscriber, key: bytes) -> None:
        if not shard.live:
            shard.back()
        if key not in self._listeners:
            return
        self._confirmed.add(key)
        for waiting in self._waiting.pop(key, ()):
            waiting.callback(None)
        since = self._resuming.pop(key, None)
        if since is not None:
            self._catch_up(key, since)

    def _catch_up(self, key: bytes, since: str) -> None:
        """Subscribed again after a lost connection: the channel's listeners
        get what its history recorded meanwhile, then the live messages that
        came during that read (minus those the history held), in order."""
        if key in self._held:
            return  # still catching up from an earlier reconnection
        self._held[key] = []
        channel = key.decode("utf-8")

        def replay(entries: list[tuple[str, bytes]] | None) -> None:
            if entries is None:
                log.warn(
                    "Messages published on {channel} while the Redis subscriber was away are no longer "
                    "in its history (WS4REDIS_HISTORY_SIZE, _TTL)",
                    channel=logsafe.channel(key, get_settings().prefix),
                )
                return
            self._dispatch(
                key,
                Burst(
                    key,
                    (PubSubMessage(key, payload, live=False, message_id=message_id) for message_id, payload in entries),
                ),
            )
            if entries and key in self._listeners:
                self._replayed.note(key, history.parse_id(entries[-1][0]))  # type: ignore[arg-type]  # Redis's id

        def failed(failure: Failure) -> None:
            log.warn(
                "Catching up on {channel} after the Redis subscriber reconnected failed: {error}",
                channel=logsafe.channel(key, get_settings().prefix),
                error=failure.getErrorMessage(),
            )

        def release(_) -> None:
            self._dispatch(
                key,
                Burst(key, [message for message in self._held.pop(key, ()) if not self._replayed.delivered(message)]),
            )

        self.recover(channel, since).addCallbacks(replay, failed).addCallback(release)

    def _message(self, channel: bytes, payload: bytes) -> None:
        watcher = self._watchers.get(channel)
        if watcher is not None:
            self._dispatch_burst()  # what came before a control message goes first
            try:
                watcher(payload)
            except Exception:  # noqa: BLE001 (log.failure logs the traceback; the dispatch goes on)
                log.failure("The watcher of {channel!r} failed", channel=channel)
        if channel not in self._listeners:
            return
        self.received += 1
        message = PubSubMessage(channel, payload)
        held = self._held.get(channel)
        if held is not None:
            held.append(message)
        elif not (self._replayed and self._replayed.delivered(message)):
            burst = self._burst
            if burst is not None and burst.channel == channel:
                burst.append(message)
                return
            self._dispatch_burst()
            self._burst = Burst(channel, (message,))

    def _dispatch_burst(self) -> None:
        """The live messages gathered from this read go to their listeners
        (at its end, or before anything else that came in it)."""
        burst, self._burst = self._burst, None
        if burst is not None:
            self._dispatch(burst.channel, burst)

    def _dispatch(self, channel: bytes, messages: Burst) -> None:
        listeners = self._listeners.get(channel)
        if not listeners or not messages:
            return
        for message in reversed(messages):
            if message.id is not None:
                self._last_ids[channel] = message.id
                break
        count = len(listeners)
        self.delivered += count * len(messages)
        self.delivered_bytes += count * sum([len(message.payload) for message in messages])
        for listener in list(listeners):
            try:
                listener(messages)
            except Exception:  # noqa: BLE001 (as above)
                log.failure("A listener of {channel!r} failed", channel=logsafe.channel(channel, get_settings().prefix))

    # -- commands --------------------------------------------------------------

    def script(self, source: str, keys: list[str], args: list) -> defer.Deferred:
        """Run a Lua script where its keys are (txredisapi's eval() sends it
        once per connection, then its digest; again after a NOSCRIPT). In a
        cluster the keys share one slot and a PUBLISH in it is SPUBLISH."""
        if self.sharded:
            source = _sharded_script(source)
        return self._on_key(keys[0] if keys else None, "eval", source, keys, args)

    def publish(self, channels: Iterable[str], message: bytes, expire: int = 0) -> defer.Deferred:
        """PUBLISH (SPUBLISH in a cluster) on every channel and, if ``expire``
        > 0, keep the message there for that many seconds (pipelined on one
        connection per Redis, in order); with the history on, through its
        script (history.py). Fires with each channel's message id (None
        without history)."""
        settings = get_settings()
        args = history.publish_args(message, expire, settings.history_size, settings.history_ttl)
        calls = []
        for channel in channels:
            if settings.history_size:
                self.history_publishes += 1
                keys = history.publish_keys(channel, settings.prefix, self.sharded)
                calls.append(
                    self.script(history.PUBLISH_SCRIPT, keys, args).addCallback(lambda reply: reply[1].decode("ascii"))
                )
            else:
                command = "SPUBLISH" if self.sharded else "PUBLISH"
                steps = [self._on_key(channel, "execute_command", command, channel, history.plain(message))]
                if expire > 0:
                    steps.append(self._on_key(channel, "setex", channel, expire, message))
                calls.append(defer.gatherResults(steps, consumeErrors=True).addCallback(lambda _: None))
        return defer.gatherResults(calls, consumeErrors=True)

    def fetch(self, keys: list[str]) -> defer.Deferred:
        """The persisted messages of ``keys`` (None where there is none). The
        fetches of one reactor turn (the handshakes it opened) are one MGET
        (one per slot in a cluster): txredisapi's cost per command was 8 % of
        a handshake's."""
        if not keys:
            return defer.succeed([])
        if not self._fetches:
            self._reactor.callLater(0, self._fetch_together)
        fetched: defer.Deferred[list] = defer.Deferred()
        self._fetches.append((keys, fetched))
        return fetched

    def _fetch_together(self) -> None:
        fetches, self._fetches = self._fetches, []
        keys = list(dict.fromkeys(key for wanted, _ in fetches for key in wanted))

        def spread(values: list) -> None:
            found = dict(zip(keys, values, strict=False))
            for wanted, fetched in fetches:
                if not fetched.called:  # not given up (a websocket's REDIS_WAIT)
                    fetched.callback([found[key] for key in wanted])

        def failed(failure: Failure) -> None:
            for _, fetched in fetches:
                if not fetched.called:
                    fetched.errback(failure)

        defer.maybeDeferred(self._mget, keys).addCallbacks(spread, failed)

    def recover(self, channel: str, since: str) -> defer.Deferred:
        """The recorded messages of ``channel`` after ``since``, as [(id,
        payload)] in order, or None when the history no longer reaches back to
        ``since`` (history.py)."""
        settings = get_settings()
        self.recoveries += 1
        d = self.script(
            history.RECOVER_SCRIPT,
            history.recover_keys(channel, settings.prefix, self.sharded),
            [since, settings.history_size],
        )

        def read(reply) -> list[tuple[str, bytes]] | None:
            if reply is None:
                return None
            trimmed, entries = reply
            if history.parse_id(trimmed.decode("ascii")) > history.parse_id(since):  # type: ignore[operator]  # both well-formed
                return None
            return [(entry_id.decode("ascii"), history.entry_payload(fields)) for entry_id, fields in entries]

        return d.addCallback(read)

    def current(self, channel: str) -> defer.Deferred:
        """``channel``'s persisted message as (id, payload), the id known
        when it is the history's last entry; None when none is kept."""
        settings = get_settings()
        if not settings.history_size:
            return self.fetch([channel]).addCallback(lambda values: (None, values[0]) if values[0] else None)
        d = self.script(
            history.CURRENT_SCRIPT, [channel, history.history_key(channel, settings.prefix, self.sharded)], []
        )

        def read(reply) -> tuple[str | None, bytes] | None:
            persisted, last = reply
            if not persisted:
                return None
            if last and history.entry_payload(last[0][1]) == persisted:
                return last[0][0].decode("ascii"), persisted
            return None, persisted

        return d.addCallback(read)


@functools.lru_cache(maxsize=64)
def _sharded_script(source: str) -> str:
    return history.sharded_script(source)


class RedisBus(_Bus):
    """Subscriptions and commands of one process on one Redis (or the master
    Sentinel names), over txredisapi: one subscriber, one command connection."""

    def __init__(self, address: RedisAddress, reactor=None):
        super().__init__(address, reactor)
        self._endpoint: IStreamClientEndpoint | None = None
        self._shard = ShardSubscriber(self, address, str(address))
        self._commands = command_factory(address, str(address))

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._endpoint = self.address.client_endpoint(self._reactor)
        self._shard.start(self._endpoint)
        self._commands.startConnecting(self._endpoint)
        log.info("Redis at {address}", address=str(self.address))
        if get_settings().history_size:
            self._run("execute_command", "INFO", "server").addCallbacks(self._check_version, lambda _: None)

    def _check_version(self, info: bytes) -> None:
        """The history's scripts need Redis 6.2 (an exclusive XRANGE): say so at
        start rather than at every recovery."""
        found = re.search(rb"redis_version:(\d+)\.(\d+)([0-9.]*)", info)
        if found and (int(found[1]), int(found[2])) < (6, 2):
            log.error(
                "WS4REDIS_HISTORY_SIZE needs Redis 6.2 or later; {address} runs {version}: recovering "
                "from the history fails there",
                address=str(self.address),
                version=b".".join(found.groups()[:2]).decode("ascii") + found[3].decode("ascii"),
            )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        stopping = [self._shard.stop(), self._commands.disconnect()]
        disconnect = getattr(self._endpoint, "disconnect", None)  # Sentinel connections
        if disconnect is not None:
            stopping.append(disconnect())
        return defer.gatherResults(stopping, consumeErrors=True)

    @property
    def reachable(self) -> bool:
        """False from a failed attempt, a refusal or a lost connection until
        Redis confirms a subscription again: a new websocket could not
        subscribe. True during the first attempt at start, which a
        subscription waits for."""
        return self._shard.reachable

    @property
    def settled(self) -> bool:
        """Whether the first attempt to reach Redis is over (a worker is ready then)."""
        return self._shard.settled

    # -- where things go -------------------------------------------------------

    def _shard_of(self, key: bytes) -> ShardSubscriber | None:
        return self._shard

    def _shard_lost(self, shard: ShardSubscriber) -> None:
        self._confirmed.clear()

    def _run(self, command: str, *args) -> defer.Deferred:
        d = getattr(self._commands.handler, command)(*args)
        # Without a timeout a command waits forever while Redis is away.
        return d.addTimeout(self._timeout, self._reactor)

    def _on_key(self, key: str | None, command: str, *args) -> defer.Deferred:
        return self._run(command, *args)

    def _mget(self, keys: list[str]) -> defer.Deferred:
        return self._run("mget", keys)
