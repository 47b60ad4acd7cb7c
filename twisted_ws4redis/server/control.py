"""Commands to every node: one Redis channel (``audience.control_channel``)
that each server process watches for as long as it runs.

``{"op": "close-session", "session": <digest>}`` closes the websockets opened
with that session (sent by the Django side at logout). Whoever can PUBLISH on
Redis can write here, so only short messages are parsed, the rest is ignored
and logged (escaped, cut short), and no command carries a secret."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from twisted.logger import Logger

from ..audience import CLOSE_SESSION

if TYPE_CHECKING:
    from .protocol import WebSocketFactory

log = Logger()

#: Bytes: a longer control message is not parsed (a real command is ~60).
MAX_COMMAND_SIZE = 1024
#: Bytes of an ignored message shown in the log.
LOGGED_PREFIX = 100

_DIGEST = re.compile(r"[0-9a-f]{16}")


def _session_to_close(payload: bytes) -> str | None:
    """The digest a well-formed close-session command names, else None."""
    if len(payload) > MAX_COMMAND_SIZE:
        return None
    try:
        command = json.loads(payload)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(command, dict) or command.get("op") != CLOSE_SESSION:
        return None
    session = command.get("session")
    if not isinstance(session, str) or not _DIGEST.fullmatch(session):
        return None
    return session


class NodeControl:
    """The watcher of the control channel: carries out commands on ``factory``'s websockets."""

    def __init__(self, factory: WebSocketFactory):
        self.factory = factory

    def __call__(self, payload: bytes) -> None:
        session = _session_to_close(payload)
        if session is None:
            log.warn(
                "Ignored a control message ({size} bytes): {start!r}", size=len(payload), start=payload[:LOGGED_PREFIX]
            )
            return
        closed = self.factory.close_session(session)
        if closed:
            log.info("WSSESSIONEND session={session}: closing {count} websocket(s)", session=session, count=closed)
