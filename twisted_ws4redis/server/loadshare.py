"""Workers share the load at their caps (``--workers``).

The workers accept from one socket, and the kernel wakes them all for each
connection; whichever calls ``accept()`` first takes it, so one worker may
hold far more sockets than another (495 against 1,505 of 2,000 in a trial
here). Below their caps that costs nothing; at its cap a worker answers new
handshakes with 503 while another may have room. So each worker writes its
client connections and its websocket cap into a small file the supervisor
shares with all of them, and a worker whose connections come near the cap
stops accepting while another one has room. Connections, not websockets: a
connection accepted is a handshake to come, and a worker that counted only
open websockets went on accepting up to a listen queue's worth past its cap
(25 to 125 handshakes answered 503 at 2 x 19,500 in bench/workers.py, while
the other worker had room).
When every worker is at its cap, they all accept again and answer 503, as
one process does.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable

from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .descriptors import ConnectionBudget

log = Logger()

#: One worker's entry: its pid, its client connections now and its cap (0: not serving).
#: The pid tells whose it is: during a SIGHUP roll two workers share a slot.
ENTRY = struct.Struct("qqq")
#: Seconds between looks at the other workers while this one is at its cap.
RECHECK = 0.2
#: Connections short of its cap at which a worker leaves new ones to a
#: worker with more room (at most an eighth of the cap): one read of the
#: listening socket accepts many connections at once (Twisted's accept loop
#: takes up to a hundred and more), which a worker stopping exactly at its cap
#: would take past it, to answer 503 (16 of 39,000 in bench/workers.py).
HEADROOM = 256


def threshold(cap: int) -> int:
    """The connections from which a worker with ``cap`` leaves new ones to the others."""
    return cap - min(HEADROOM, cap // 8)


class SharedLoad:
    """The workers' entries, in a file mapped by every process (the supervisor makes it)."""

    def __init__(self, fd: int, slots: int):
        self.slots = slots
        self._pid = os.getpid()  # a system call each time otherwise
        self._map = mmap.mmap(fd, ENTRY.size * slots)

    @staticmethod
    def size(slots: int) -> int:
        return ENTRY.size * slots

    def write(self, slot: int, connections: int, cap: int, pid: int | None = None) -> None:
        ENTRY.pack_into(self._map, ENTRY.size * slot, self._pid if pid is None else pid, connections, cap)

    def owner(self, slot: int) -> int:
        return ENTRY.unpack_from(self._map, ENTRY.size * slot)[0]

    def clear(self, slot: int, pid: int) -> None:
        """``pid``'s entry says it has no room, if the slot is still its own."""
        if self.owner(slot) == pid:
            self.write(slot, 0, 0, pid)

    def others_have_room(self, slot: int) -> bool:
        """Whether another worker is below its threshold."""
        for other in range(self.slots):
            if other != slot:
                _, connections, cap = ENTRY.unpack_from(self._map, ENTRY.size * other)
                if connections < threshold(cap):
                    return True
        return False


class AcceptBalancer:
    """Stops this worker's ports accepting while its client connections are
    near its websocket cap (``threshold``) and another worker's are not
    (``ConnectionBudget.on_change``); once all are, every worker accepts up
    to its cap."""

    def __init__(
        self, budget: ConnectionBudget, shared: SharedLoad, slot: int, ports: Iterable[IListeningPort], reactor
    ):
        self.budget = budget
        self.shared = shared
        self.slot = slot
        self.ports = list(ports)
        self.paused = False
        self._recheck = LoopingCall(self.update)
        self._recheck.clock = reactor
        budget.on_change = self.update
        self.update()

    def update(self) -> None:
        budget = self.budget
        full = budget.connections >= threshold(budget.max_websockets)
        self.shared.write(self.slot, budget.connections, budget.max_websockets)
        pause = full and self.shared.others_have_room(self.slot)
        if pause != self.paused:
            self.paused = pause
            for port in self.ports:
                port.stopReading() if pause else port.startReading()  # type: ignore[attr-defined]  # tcp/unix Ports
            log.info(
                "Worker {slot} {what} ({connections} connections, {websockets} websockets, cap {cap})",
                slot=self.slot,
                connections=budget.connections,
                websockets=budget.websockets,
                what="near its cap: another worker takes new connections" if pause else "accepts again",
                cap=budget.max_websockets,
            )
        if full and not self._recheck.running:
            self._recheck.start(RECHECK, now=False)
        elif not full and self._recheck.running:
            self._recheck.stop()

    def stop(self) -> None:
        """The worker stops: it has no room for anyone now."""
        self.shared.clear(self.slot, os.getpid())
        if self._recheck.running:
            self._recheck.stop()
        self.budget.on_change = None
