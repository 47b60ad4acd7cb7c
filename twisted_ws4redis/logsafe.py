"""What the server logs, made safe for whoever reads the log.

Two rules for every log line: text a client controls (paths, headers, the
reasons that quote them, peers) is escaped, so a terminal or log viewer never
receives a control sequence and one event stays one line; and a channel name
never shows a session key, since whoever holds the key is that user.
"""
from __future__ import annotations

from typing import Iterable

from .audience import session_digest

#: The most characters a client-controlled string takes in a log line.
MAX_LENGTH = 512


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def text(value: object, limit: int = MAX_LENGTH) -> str:
    """``value`` as printable text of at most ``limit`` characters: every
    character that is not printable (C0 and C1 controls, DEL, line and
    paragraph separators, bidirectional overrides…) becomes a visible escape
    such as ``\\x1b``; a longer text is cut and ends with "…". Escaping what is
    already escaped changes nothing, so a value may pass here twice."""
    value = str(value)
    if len(value) <= limit and value.isprintable():
        return value
    # One character gives at least one, so limit + 1 of them tell whether to cut.
    escaped = "".join(char if char.isprintable() else _escape(char) for char in value[:limit + 1])
    return escaped if len(escaped) <= limit else escaped[:limit - 1] + "…"


def channel(name: str | bytes, prefix: str) -> str:
    """A Redis channel name fit for the log: ``[prefix:]session:<key>:<facility>``
    shows ``session_digest(key)`` instead of the key; other names are unchanged.
    (With a facility pattern that allows ``:``, all but the facility's last
    part is hashed with the key: still no key in the log.)"""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    head = f"{prefix}session:"
    if not name.startswith(head):
        return name
    key, colon, facility = name[len(head):].rpartition(":")
    if not colon:  # not a name this server makes: hide all of it
        return head + session_digest(name[len(head):])
    return f"{head}{session_digest(key)}:{facility}"


def channels(names: Iterable[str | bytes], prefix: str) -> list[str]:
    """``channel()`` of each name."""
    return [channel(name, prefix) for name in names]
