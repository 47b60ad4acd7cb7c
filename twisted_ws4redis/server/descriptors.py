"""File descriptors: every client connection holds one, and so do Django's
database connections, Redis, the log and the static files being served.

Under the common limit of 1,024, a client opening a thousand sockets used to
make ``accept()`` fail with EMFILE: every new client, pages included, was
reset, and Django's or Redis' own ``open()``/``connect()`` could fail the same
way. So the server raises its soft
limit to the hard one at start-up, keeps ``WS4REDIS_RESERVED_DESCRIPTORS`` of
them for itself, and takes client connections only up to the rest; websockets
stop earlier (``WS4REDIS_MAX_CONNECTIONS``), so that pages still have room.

A connection past the cap is refused once it is accepted, and its descriptor
is freed on the next reactor turn: one accept loop (at most the listen queue,
``backlog``) may overshoot, and the reserve must absorb it. Were the limit
reached anyway, Twisted's ``tcp.Port`` would close what it cannot accept (it
keeps a spare descriptor for that); tests/test_descriptors.py asserts that
the server never gets there.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured
from twisted.logger import Logger

log = Logger()

#: The share of the client connections websockets may take by default; the
#: rest stays for pages (and for the handshakes that will be answered 503).
WEBSOCKET_SHARE = 7 / 8


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed);
    log both, before and after. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS, whose hard limit may exceed what it allows
            log.warn(
                "Could not raise the open files limit from {soft} to {hard}: {error}", soft=soft, hard=hard, error=exc
            )
    raised, hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.info(
        "Open files limit (RLIMIT_NOFILE): soft {before} -> {soft}, hard {hard}",
        before=_shown(soft),
        soft=_shown(raised),
        hard=_shown(hard_now),
    )
    return sys.maxsize if raised == resource.RLIM_INFINITY else raised


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class ConnectionBudget:
    """Client connections (HTTP channels, websockets) and websockets (in their
    handshake or open) counted against the caps the open files limit allows.

    No cap until ``apply()``, which the service calls at start-up once the
    limit is raised."""

    def __init__(self, reserve: int, max_websockets: int | None):
        self.reserve = reserve
        self._max_websockets_setting = max_websockets
        self.max_connections = sys.maxsize
        self.max_websockets = sys.maxsize
        #: client connections now holding a descriptor
        self.connections = 0
        #: websockets from the takeover of their connection to its loss
        self.websockets = 0
        self._warned: set[str] = set()
        #: called after every change of ``connections`` (loadshare.AcceptBalancer, with --workers)
        self.on_change: Callable[[], None] | None = None

    def apply(self, open_files: int) -> None:
        """Derive the caps from the soft limit ``open_files``."""
        self.max_connections = open_files - self.reserve
        if self.max_connections < 2:
            raise ImproperlyConfigured(
                f"WS4REDIS_RESERVED_DESCRIPTORS ({self.reserve}) leaves no descriptor for clients under "
                f"the open files limit ({open_files}): raise the limit (LimitNOFILE, ulimit -n) or lower it"
            )
        derived = int(self.max_connections * WEBSOCKET_SHARE)
        self.max_websockets = self._max_websockets_setting or derived
        if self.max_websockets > self.max_connections:
            log.warn(
                "WS4REDIS_MAX_CONNECTIONS ({setting}) is more than the {connections} client connections "
                "the open files limit allows: connections past those are closed at once",
                setting=self.max_websockets,
                connections=self.max_connections,
            )
        log.info(
            "At most {connections} client connections ({open_files} descriptors, {reserve} reserved), "
            "{websockets} of them websockets",
            connections=self.max_connections,
            open_files=open_files,
            reserve=self.reserve,
            websockets=self.max_websockets,
        )

    # -- every client connection --------------------------------------------------

    def connection_opened(self) -> bool:
        """Count a new client connection; False when it is one too many and
        must be closed (it is counted until it is lost all the same)."""
        self.connections += 1
        if self.on_change is not None:
            self.on_change()
        if self.connections <= self.max_connections:
            return True
        self._warn_once(
            "connections",
            "Client connections at their cap ({cap}): new ones are closed at once "
            "(WS4REDIS_RESERVED_DESCRIPTORS keeps the rest free)",
            self.max_connections,
        )
        return False

    def connection_closed(self) -> None:
        self.connections -= 1
        self._rearm("connections", self.connections, self.max_connections)
        if self.on_change is not None:
            self.on_change()

    # -- websockets -------------------------------------------------------------------

    def may_open_websocket(self) -> bool:
        """Whether one more websocket handshake may go ahead."""
        if self.websockets < self.max_websockets:
            return True
        self._warn_once(
            "websockets",
            "Websockets at their cap ({cap}, WS4REDIS_MAX_CONNECTIONS): new handshakes get HTTP 503",
            self.max_websockets,
        )
        return False

    def websocket_opened(self) -> None:
        self.websockets += 1

    def websocket_closed(self) -> None:
        """A websocket's connection is lost: it was a client connection too."""
        self.websockets -= 1
        self._rearm("websockets", self.websockets, self.max_websockets)
        self.connection_closed()

    # -- one warning per episode, not one per refused client ------------------------

    def _warn_once(self, what: str, message: str, cap: int) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warn(message, cap=cap)

    def _rearm(self, what: str, count: int, cap: int) -> None:
        if what in self._warned and count < cap * 0.9:
            self._warned.discard(what)
            log.info("{what} below their cap again: {count} of {cap}", what=what.capitalize(), count=count, cap=cap)
