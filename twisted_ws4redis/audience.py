"""The wire contract: which Redis channel (and persisted key) a message goes to.

Names are exactly those of ws4redis, so a ws4redis publisher and this server (or
the other way round) work on one Redis::

    [prefix:]broadcast:<facility>
    [prefix:]group:<group name>:<facility>
    [prefix:]user:<username>:<facility>
    [prefix:]session:<session key>:<facility>

and one channel of our own, which every server process subscribes, for
commands to all of them (``control_channel``).

Pure functions, used by the publisher and by every websocket.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any, Iterable
from urllib.parse import unquote_to_bytes

#: Session key under which the login signal stores the user's group names.
MEMBEROF_SESSION_KEY = "ws4redis:memberof"

AUDIENCES = ("broadcast", "group", "user", "session")
SUBSCRIBE_FLAGS = tuple(f"subscribe-{audience}" for audience in AUDIENCES)
PUBLISH_FLAGS = tuple(f"publish-{audience}" for audience in AUDIENCES)
ECHO_FLAG = "echo"


def session_digest(session_key: str) -> str:
    """A stand-in for a session key wherever the key itself must not appear
    (log lines, commands between nodes): whoever holds the key is that user.
    16 hex digits of its SHA-256: stable, short, not reversible."""
    return hashlib.sha256(session_key.encode("utf-8")).hexdigest()[:16]


def control_channel(prefix: str) -> str:
    """The channel of commands to every server process of this prefix."""
    return f"{prefix}ws4redis:control"


#: The command closing one session's websockets; "session" is its digest.
CLOSE_SESSION = "close-session"


def close_session_command(session_key: str) -> bytes:
    """The control message asking every node to close the websockets opened
    with ``session_key`` (which it names by digest only)."""
    return json.dumps({"op": CLOSE_SESSION, "session": session_digest(session_key)}).encode("ascii")


class _Self:
    """The magic audience member meaning "whoever made this request"."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SELF"

    def __reduce__(self):
        return (_Self, ())


SELF = _Self()


def channel_name(prefix: str, audience: str, facility: str, member: str | None = None) -> str:
    """One Redis channel/key name; ``prefix`` is '' or ends with ':'."""
    if audience == "broadcast":
        return f"{prefix}broadcast:{facility}"
    return f"{prefix}{audience}:{member}:{facility}"


def _members(value: Any, argument: str) -> list:
    """ws4redis accepts a list/tuple of names, ``SELF``; ``True`` (= SELF) and a bare
    string are deprecated; anything else is a mistake."""
    if value is True:
        warnings.warn(f"{argument}=True is deprecated, use {argument}=[SELF]", DeprecationWarning, stacklevel=4)
        return [SELF]
    if isinstance(value, str):
        warnings.warn(f"{argument}={value!r} is deprecated, use a list of names", DeprecationWarning, stacklevel=4)
        return [value]
    if value is SELF:
        return [SELF]
    if value is None or value is False:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise ValueError(f"{argument} must be a list or tuple of names (or SELF), got {value!r}")


def _user(request: Any):
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    return None


def resolve_self(audience: str, request: Any) -> list[str]:
    """What SELF stands for in ``audience`` for this request: nothing for anonymous
    users or requests without a session (ws4redis subscribed bogus names then)."""
    if request is None:
        raise ValueError(f"SELF in {audience}s needs the request")
    if audience == "user":
        user = _user(request)
        return [user.get_username()] if user else []
    session = getattr(request, "session", None)
    if audience == "group":
        if _user(request) is None or session is None:
            return []
        return [str(name) for name in session.get(MEMBEROF_SESSION_KEY, ())]
    key = getattr(session, "session_key", None) if session is not None else None
    return [key] if key else []


def message_channels(prefix: str, facility: str, *, request: Any = None, broadcast: bool = False,
                     groups: Iterable = (), users: Iterable = (), sessions: Iterable = ()) -> list[str]:
    """Channel names for an audience, in ws4redis order: broadcast, groups, users, sessions."""
    channels = [channel_name(prefix, "broadcast", facility)] if broadcast else []
    for audience, members in (("group", groups), ("user", users), ("session", sessions)):
        for member in _members(members, f"{audience}s"):
            names = resolve_self(audience, request) if member is SELF else [member]
            channels.extend(channel_name(prefix, audience, facility, name) for name in names)
    return channels


def parse_flags(query_string: str, recognised: Iterable[str]) -> tuple[list[str], bool]:
    """The recognised flags of a query string (keys only, stripped and lower-cased,
    values ignored, in the order given) and whether ``echo`` was asked for.
    Unlike ``cgi``-style parsers this keeps valueless keys (``?subscribe-user``)."""
    recognised = set(recognised)
    flags: list[str] = []
    echo = False
    for item in query_string.split("&"):
        key = unquote_to_bytes(item.split("=", 1)[0].replace("+", " ")).decode("utf-8", "replace")
        key = key.strip().lower()
        if key == ECHO_FLAG:
            echo = True
        elif key in recognised and key not in flags:
            flags.append(key)
    return flags, echo


def requested_audiences(flags: Iterable[str], kind: str) -> dict[str, list]:
    """Keyword arguments for ``message_channels`` from flags like 'subscribe-user'
    (``kind`` is 'subscribe' or 'publish'): every audience is SELF."""
    wanted = {flag.split("-", 1)[1] for flag in flags if flag.startswith(kind + "-")}
    return {
        "broadcast": "broadcast" in wanted,
        "groups": [SELF] if "group" in wanted else [],
        "users": [SELF] if "user" in wanted else [],
        "sessions": [SELF] if "session" in wanted else [],
    }


def facility_from_path(path: str, websocket_url: str) -> str:
    """The facility of a websocket path: everything after WEBSOCKET_URL, percent-decoded
    as UTF-8 (raises ``UnicodeDecodeError`` when it is not)."""
    if not path.startswith(websocket_url):
        raise ValueError(f"{path!r} is not under {websocket_url!r}")
    return unquote_to_bytes(path[len(websocket_url):]).decode("utf-8")
