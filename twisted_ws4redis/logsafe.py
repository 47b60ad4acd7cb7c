"""What the server logs, made safe for whoever reads the log.

Three rules for every log line: text a client controls (paths, headers, the
reasons that quote them, peers) is escaped, so a terminal or log viewer never
receives a control sequence and one event stays one line; a channel name
never shows a session key, and a URI never shows a token (auth.py), since
whoever holds either is that user.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import AnyStr
from urllib.parse import unquote_plus

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
    escaped = "".join(char if char.isprintable() else _escape(char) for char in value[: limit + 1])
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


#: Query parameters whose values are credentials: ours (auth.py) and OAuth's.
SECRET_PARAMETERS = frozenset({"token", "access_token"})

#: What a secret parameter's value becomes in the log.
REDACTED = "[redacted]"


def redact_query(target: AnyStr) -> AnyStr:
    """``target`` (a request-target or URL, text or bytes) with the value of
    each ``SECRET_PARAMETERS`` query parameter replaced by ``REDACTED``. Names
    are compared as a query parser reads them (percent- and plus-decoded) and
    in any case, so ``?%74oken=`` or ``?TOKEN=`` is redacted too."""
    if isinstance(target, bytes):
        return redact_query(target.decode("latin-1")).encode("latin-1")
    path, mark, query = target.partition("?")
    if not mark:
        return target
    items = query.split("&")
    for index, item in enumerate(items):
        name, equals, _ = item.partition("=")
        if equals and unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            items[index] = f"{name}={REDACTED}"
    return f"{path}?{'&'.join(items)}"


def uri(value: str) -> str:
    """A request's URI fit for the log: no token (``redact_query``), escaped (``text``)."""
    return text(redact_query(value))


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
    key, colon, facility = name[len(head) :].rpartition(":")
    if not colon:  # not a name this server makes: hide all of it
        return head + session_digest(name[len(head) :])
    return f"{head}{session_digest(key)}:{facility}"


def channels(names: Iterable[str | bytes], prefix: str) -> list[str]:
    """``channel()`` of each name."""
    return [channel(name, prefix) for name in names]
