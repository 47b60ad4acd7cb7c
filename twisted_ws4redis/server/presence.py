"""This node's share of presence (the layout is in ``twisted_ws4redis.presence``).

The counts live here; Redis gets them at the end of the reactor turn in which
they changed (one script call per facility, however many sockets opened or
closed in that turn: a socket that closes and reopens within it changes
nothing), and again whole every third of WS4REDIS_PRESENCE_TTL, so that they
stop counting soon after this node dies and come back after Redis lost them.
"""

from __future__ import annotations

import secrets

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from .. import logsafe
from ..conf import Settings
from ..presence import (
    ANONYMOUS,
    CONNECTIONS,
    REFRESH_SCRIPT,
    UPDATE_SCRIPT,
    USER,
    events_channel,
    node_prefix,
    nodes_key,
)

log = Logger()


class _Facility:
    __slots__ = ("counts", "written")

    def __init__(self) -> None:
        #: field -> sockets now (no zeros)
        self.counts: dict[str, int] = {}
        #: field -> sockets as last sent to Redis (no zeros)
        self.written: dict[str, int] = {}


def _event(field: str, before: int, after: int) -> str:
    if not field.startswith(USER) or (before > 0) == (after > 0):
        return ""
    return "join" if after else "leave"


class NodePresence(Service):
    """Who is connected to which facility on this node."""

    def __init__(self, bus, settings: Settings, reactor):
        self.node = secrets.token_hex(8)
        self._bus = bus
        self._reactor = reactor
        self._prefix = settings.prefix
        self._ttl = settings.presence_ttl
        self._facilities: dict[str, _Facility] = {}
        self._dirty: set[str] = set()
        self._flush_call = None
        self._refresher = task.LoopingCall(self.refresh)
        self._refresher.clock = reactor
        #: the last write failed (logged once until one succeeds)
        self._failing = False
        # What the metrics read (metrics.py).
        self.joins = self.leaves = self.writes_ok = self.writes_failed = 0

    def startService(self) -> None:
        super().startService()
        self._refresher.start(self._ttl / 3, now=False)

    def stopService(self) -> defer.Deferred:
        """The websockets are closed by now; any still counted leave too."""
        super().stopService()
        if self._refresher.running:
            self._refresher.stop()
        for facility, entry in self._facilities.items():
            entry.counts.clear()
            self._dirty.add(facility)
        return self.flush()

    # -- counting ------------------------------------------------------------------

    def joined(self, facility: str, user: str | None) -> None:
        """A socket of ``user`` (None: anonymous) is now connected to ``facility``."""
        self.joins += 1
        self._change(facility, user, 1)

    def left(self, facility: str, user: str | None) -> None:
        self.leaves += 1
        self._change(facility, user, -1)

    def _change(self, facility: str, user: str | None, step: int) -> None:
        entry = self._facilities.get(facility)
        if entry is None:
            entry = self._facilities[facility] = _Facility()
        counts = entry.counts
        for field in (CONNECTIONS, ANONYMOUS if user is None else USER + user):
            count = counts.get(field, 0) + step
            if count > 0:
                counts[field] = count
            else:
                counts.pop(field, None)
        self._dirty.add(facility)
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self.flush)

    # -- writing -------------------------------------------------------------------

    def flush(self) -> defer.Deferred:
        """Send what changed since the last write, facility by facility, with
        the joins and leaves it makes."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        calls = []
        dirty, self._dirty = self._dirty, set()
        for facility in dirty:
            entry = self._facilities[facility]
            changes: list[str | int] = []
            for field in entry.written.keys() | entry.counts.keys():
                before, after = entry.written.get(field, 0), entry.counts.get(field, 0)
                if before != after:
                    changes += [field, after, _event(field, before, after)]
            entry.written = dict(entry.counts)
            if not entry.counts:
                del self._facilities[facility]
            if changes:
                calls.append(self._write(UPDATE_SCRIPT, facility, changes))
        return defer.gatherResults(calls, consumeErrors=True).addCallback(lambda _: None)

    def refresh(self) -> defer.Deferred:
        """Rewrite every facility's entries (and so keep them counting), reap
        the nodes that stopped."""
        self.flush()
        calls = []
        for facility, entry in self._facilities.items():
            calls.append(
                self._write(REFRESH_SCRIPT, facility, [item for pair in entry.written.items() for item in pair])
            )
        return defer.gatherResults(calls, consumeErrors=True).addCallback(lambda _: None)

    def _write(self, script: str, facility: str, extra: list) -> defer.Deferred:
        prefix = node_prefix(facility, self._prefix)
        keys = [nodes_key(facility, self._prefix), prefix + self.node]
        args = [self.node, self._ttl * 1000, prefix, events_channel(facility, self._prefix), facility, *extra]
        return self._bus.script(script, keys, args).addCallbacks(self._written, self._failed, errbackArgs=(facility,))

    def _written(self, _) -> None:
        self.writes_ok += 1
        if self._failing:
            self._failing = False
            log.info("Presence is written to Redis again")

    def _failed(self, failure, facility: str) -> None:
        # Rewritten whole at the next refresh; the joins and leaves are lost.
        self.writes_failed += 1
        if not self._failing:
            self._failing = True
            log.warn(
                "Presence of {facility} not written to Redis: {error}",
                facility=logsafe.text(facility),
                error=failure.getErrorMessage(),
            )
