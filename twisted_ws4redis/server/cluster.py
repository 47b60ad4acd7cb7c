"""The process' Redis clients on a Redis Cluster: sharded pub/sub.

Per master one subscriber connection (SSUBSCRIBE, one command per slot) and
one pipelined command connection; what goes where follows the slot table of
``CLUSTER SLOTS``, asked of any node that answers (the masters' command
connections first, then every node the cluster named and the startup nodes).
The table is asked again when a command is answered MOVED, when a node drops
a subscription by itself (``sunsubscribe``: its slot moved, or it became a
replica), and when a subscriber connection is lost; and every
``TOPOLOGY_RETRY`` seconds while a master's subscriber is not live (a killed
master stays in the table until its replica is promoted). A channel whose
master changed is subscribed on the new one and, with the history on, catches
up from the last message its listeners got (``_Bus._catch_up``).

Not followed: a slot being migrated (``ASK``): a command answered so fails
once, after the table was asked again.

A plain PUBLISH never reaches a sharded subscriber. With
WS4REDIS_CLUSTER_PLAIN_PUBLISH the bus also subscribes every channel with
plain SUBSCRIBE on one node (any: a cluster sends every PUBLISH to all its
nodes), for foreign publishers (a ws4redis 0.6 process, ``redis-cli``); their
messages carry no history id, so they are not caught up after an outage.
"""

from __future__ import annotations

from typing import cast

import txredisapi
from redis.crc import key_slot
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import logsafe
from ..conf import get_settings
from ..redis_address import RedisAddress
from .pubsub import ShardSubscriber, _Bus, command_factory

log = Logger()

#: Seconds between two askings of the slot table while a master is not live.
TOPOLOGY_RETRY = 0.5
SLOTS = 16384

Node = tuple[str, int]


class ClusterUnavailable(txredisapi.ConnectionError):
    """No node of the cluster told where a slot is."""


class _Master:
    """One master's connections."""

    def __init__(self, bus: ClusterBus, node: Node):
        self.node = node
        label = f"{node[0]}:{node[1]}"
        self.subscriber = ShardSubscriber(bus, bus.address, label, sharded=True)
        self.commands = command_factory(bus.address, label)
        endpoint = bus.address.node_endpoint(bus._reactor, *node)
        self.subscriber.start(endpoint)
        self.commands.startConnecting(endpoint)

    def stop(self) -> defer.Deferred:
        self.subscriber.retired = True
        return defer.gatherResults([self.subscriber.stop(), self.commands.disconnect()], consumeErrors=True)


@implementer(IStreamClientEndpoint)
class _AnyNode:
    """Connects to the cluster's nodes in turn, the next one at each attempt."""

    def __init__(self, bus: ClusterBus):
        self._bus = bus
        self._attempts = 0

    def connect(self, factory) -> defer.Deferred:
        nodes = list(dict.fromkeys(self._bus._known + list(self._bus.address.startup_nodes)))
        node = nodes[self._attempts % len(nodes)]
        self._attempts += 1
        return self._bus.address.node_endpoint(self._bus._reactor, *node).connect(factory)

    def __repr__(self) -> str:
        return "<any node of the Redis Cluster>"


def _slot(key: str | bytes) -> int:
    return key_slot(key.encode("utf-8") if isinstance(key, str) else key)


class ClusterBus(_Bus):
    """RedisBus' interface on a Redis Cluster (see the module's docstring)."""

    sharded = True

    def __init__(self, address: RedisAddress, reactor=None):
        super().__init__(address, reactor)
        #: slot -> its master's connections (None: not known yet)
        self._slots: list[_Master | None] = [None] * SLOTS
        self._masters: dict[Node, _Master] = {}
        #: every node the last slot table named, masters and replicas
        self._known: list[Node] = []
        self._asking: list[defer.Deferred] | None = None  # the callers waiting for the table being asked
        self._retry = None
        self._topology_failed = False
        #: the plain SUBSCRIBE connection (WS4REDIS_CLUSTER_PLAIN_PUBLISH), or None
        self._plain = (
            ShardSubscriber(self, address, "a node of the Redis Cluster (plain PUBLISH)")
            if get_settings().cluster_plain_publish
            else None
        )

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        log.info("Redis Cluster at {address}", address=str(self.address))
        self._refresh()
        if self._plain is not None:
            self._plain.start(_AnyNode(self))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        masters, self._masters = list(self._masters.values()), {}
        self._slots = [None] * SLOTS
        stopping = [master.stop() for master in masters]
        if self._plain is not None:
            stopping.append(self._plain.stop())
        return defer.gatherResults(stopping, consumeErrors=True)

    @property
    def reachable(self) -> bool:
        """True when the slot table is known and every master's subscriber is
        live (a handshake may subscribe channels of any shard), or during the
        first attempts at start; False while a master is down, until its
        replica is promoted and subscribed; with WS4REDIS_CLUSTER_PLAIN_PUBLISH,
        the plain subscriber too."""
        if self._plain is not None and not self._plain.reachable:
            return False
        if not self._masters:
            return not self._topology_failed
        return all(master.subscriber.reachable for master in self._masters.values())

    @property
    def settled(self) -> bool:
        """Whether the first attempts are over (a worker is ready then): the
        slot table could not be read, or every master's subscriber answered or failed."""
        if self._topology_failed:
            return True
        return bool(self._masters) and all(master.subscriber.settled for master in self._masters.values())

    # -- the slot table --------------------------------------------------------

    def _refresh(self) -> defer.Deferred:
        """Ask the slot table again (one asking at a time, shared by its
        callers) and apply it. Fires with None, even when no node answered."""
        waiting: defer.Deferred[None] = defer.Deferred()
        if self._asking is not None:
            self._asking.append(waiting)
            return waiting
        self._asking = [waiting]
        self._ask().addCallbacks(self._apply, self._unanswered).addBoth(self._asked)
        return waiting

    def _asked(self, _) -> None:
        asking, self._asking = self._asking or [], None
        if (
            self.running
            and not (self._masters and all(m.subscriber.live for m in self._masters.values()))
            and (self._retry is None or not self._retry.active())
        ):
            self._retry = self._reactor.callLater(TOPOLOGY_RETRY, self._refresh)
        for waiting in asking:
            waiting.callback(None)

    @defer.inlineCallbacks
    def _ask(self):
        errors = []
        for master in list(self._masters.values()):
            if master.commands.size:  # connected: no waiting for a reconnection
                try:
                    reply = yield master.commands.handler.execute_command("CLUSTER", "SLOTS").addTimeout(
                        self._timeout, self._reactor
                    )
                    return reply, master.node
                except Exception as exc:  # noqa: BLE001 (whatever one node's failure, the next is asked)
                    errors.append(f"{master.subscriber.label}: {exc}")
        for node in dict.fromkeys(self._known + list(self.address.startup_nodes)):
            if node in self._masters and self._masters[node].commands.size:
                continue  # asked above
            probe = command_factory(self.address, f"{node[0]}:{node[1]}")
            probe.isLazy = False
            probe.reconnect = False
            probe.startConnecting(self.address.node_endpoint(self._reactor, *node))
            try:
                handler = yield probe.deferred.addTimeout(self.address.socket_connect_timeout, self._reactor)
                reply = yield handler.execute_command("CLUSTER", "SLOTS").addTimeout(self._timeout, self._reactor)
                return reply, node
            except Exception as exc:  # noqa: BLE001 (as above; all are reported in ClusterUnavailable)
                errors.append(f"{node[0]}:{node[1]}: {exc}")
            finally:
                probe.disconnect().addErrback(lambda _: None)
        raise ClusterUnavailable("; ".join(errors) or "no node to ask")

    def _unanswered(self, failure: Failure) -> None:
        if not self._topology_failed and self.running:
            log.warn(
                "No node of the Redis Cluster at {address} gave its slots: {error}",
                address=str(self.address),
                error=logsafe.text(failure.getErrorMessage()),
            )
        self._topology_failed = True

    def _apply(self, answer: tuple[list, Node]) -> None:
        """Take a ``CLUSTER SLOTS`` reply: a master for every slot; channels
        whose master changed move (unsubscribed from the old one, subscribed
        on the new one), masters left without slots are dropped."""
        if not self.running:
            return
        reply, asked = answer
        self._topology_failed = False
        table: list[Node | None] = [None] * SLOTS
        known: list[Node] = []
        for start, end, *nodes in reply:
            named = [(node[0].decode("utf-8") or asked[0], int(node[1])) for node in nodes]
            known.extend(named)
            for slot in range(int(start), int(end) + 1):
                table[slot] = named[0]
        self._known = list(dict.fromkeys(known))
        for node in dict.fromkeys(node for node in table if node is not None):
            if node not in self._masters:
                self._masters[node] = _Master(self, node)
                log.info("Redis Cluster master {node}", node=f"{node[0]}:{node[1]}")
        before = {key: self._shard_of(key) for key in self._wanted()}
        self._slots = [None if node is None else self._masters[node] for node in table]
        for node in [node for node in self._masters if node not in set(table)]:
            self._masters.pop(node).stop().addErrback(lambda _: None)
        moved = 0
        for key, old in before.items():
            new = self._shard_of(key)
            if new is not old:
                moved += 1
                self._confirmed.discard(key)
                if old is not None and not old.retired:
                    old.unsubscribe([key])
            if key not in self._confirmed and new is not None and new.protocol is not None:
                self._resubscribe(new, [key])
        if moved and any(old is not None for old in before.values()):
            log.info("Redis Cluster slots moved: {count} channel(s) now on another master", count=moved)

    # -- where things go -------------------------------------------------------

    def _master_of(self, key: str | bytes | None) -> _Master | None:
        if key is None:
            return next(iter(self._masters.values()), None)
        return self._slots[_slot(key)]

    def _shard_of(self, key: bytes) -> ShardSubscriber | None:
        master = self._master_of(key)
        return None if master is None else master.subscriber

    def _subscribers_of(self, key: bytes) -> list[ShardSubscriber]:
        subscribers = super()._subscribers_of(key)
        return subscribers if self._plain is None else [*subscribers, self._plain]

    def _shard_connected(self, shard: ShardSubscriber) -> None:
        if shard is not self._plain:
            super()._shard_connected(shard)
            return
        # Plain pub/sub has no slots: every channel in one SUBSCRIBE. No catching
        # up: its messages (foreign publishers') carry no history id.
        keys = self._wanted()
        shard.subscribe(keys)
        if not keys:
            shard.back()
        log.info(
            "Redis subscriber for plain PUBLISH connected; subscribing {count} channel(s)", count=len(self._listeners)
        )

    def _subscribed(self, shard: ShardSubscriber, key: bytes) -> None:
        if shard is self._plain:  # the sharded subscription is what a listener waits for
            if not shard.live:
                shard.back()
            return
        super()._subscribed(shard, key)

    def _shard_lost(self, shard: ShardSubscriber) -> None:
        if shard.retired or shard is self._plain:
            return
        super()._shard_lost(shard)
        self._refresh()

    def _moved(self, shard: ShardSubscriber) -> None:
        """A subscription answered MOVED: the table is asked again soon (not
        at once: a node may answer so until the new owner is known to all)."""
        if self._retry is None or not self._retry.active():
            self._retry = self._reactor.callLater(TOPOLOGY_RETRY, self._refresh)

    def _unsubscribed(self, shard: ShardSubscriber, key: bytes) -> None:
        """Unasked (the channel still has listeners, here): its slot moved or
        the node is a replica now. Subscribed again where the table says."""
        if (key in self._listeners or key in self._watchers) and self._shard_of(key) is shard:
            self._confirmed.discard(key)
            self._refresh()

    def _on_key(self, key: str | None, command: str, *args, again: bool = True) -> defer.Deferred:
        """``command`` on the master of ``key``'s slot; once more after the
        slot table was asked again when no master is known or Redis answered
        MOVED (or ASK)."""
        master = self._master_of(key)
        if master is None:
            if again:
                return self._refresh().addCallback(lambda _: self._on_key(key, command, *args, again=False))
            return defer.fail(ClusterUnavailable(f"no master is known for slot {_slot(key or '')}"))
        d = getattr(master.commands.handler, command)(*args).addTimeout(self._timeout, self._reactor)
        if again:
            d.addErrback(self._maybe_moved, key, command, args)
        return d

    def _maybe_moved(self, failure: Failure, key, command: str, args: tuple):
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith(("MOVED", "ASK")):
            return self._refresh().addCallback(lambda _: self._on_key(key, command, *args, again=False))
        return failure

    def _mget(self, keys: list[str]) -> defer.Deferred:
        """One MGET per slot (across slots it is CROSSSLOT), each on its
        master, the values put back in ``keys``' order."""
        by_slot: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_slot.setdefault(_slot(key), []).append(index)
        groups = list(by_slot.values())
        calls = [self._on_key(keys[group[0]], "mget", [keys[index] for index in group]) for group in groups]

        def assemble(replies: list) -> list:
            values = [None] * len(keys)
            for group, reply in zip(groups, replies, strict=False):
                for index, value in zip(group, reply, strict=False):
                    values[index] = value
            return values

        def first(failure: Failure) -> Failure:
            return cast(defer.FirstError, failure.value).subFailure if failure.check(defer.FirstError) else failure

        return defer.gatherResults(calls, consumeErrors=True).addCallbacks(assemble, first)
