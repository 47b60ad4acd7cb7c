"""The wire contract: which Redis channel (and persisted key) a message goes to.

Names are exactly those of ws4redis, so a ws4redis publisher and this server (or
the other way round) work on one Redis::

    [prefix:]broadcast:<facility>
    [prefix:]group:<group name>:<facility>
    [prefix:]user:<username>:<facility>
    [prefix:]session:<session key>:<facility>

and one channel of our own, which every server process subscribes, for
commands to all of them (``control_channel``).

Pure functions, used by the publisher and by every websocket, except where SELF
is resolved: that reads the request's user and session, and is written once,
as a generator of the reads it needs (``_self_steps``), which ``resolved``
answers with Django's blocking APIs on a thread and ``aresolved`` with its
async ones on an event loop. One resolution, two ways of reading it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes
from weakref import WeakKeyDictionary

from asgiref.sync import sync_to_async

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

    def __new__(cls) -> _Self:  # noqa: PYI034 (always the one instance, SELF)
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SELF"

    def __reduce__(self) -> tuple[type[_Self], tuple[()]]:
        return (_Self, ())


SELF = _Self()


def channel_name(prefix: str, audience: str, facility: str, member: str | None = None) -> str:
    """One Redis channel/key name; ``prefix`` is '' or ends with ':'."""
    if audience == "broadcast":
        return f"{prefix}broadcast:{facility}"
    return f"{prefix}{audience}:{member}:{facility}"


#: Warnings point at the caller of ``RedisPublisher(...)``:
#: _members < audience_members < RedisPublisher.__init__ < the caller.
_CALLER = 4


def _members(value: Any, argument: str) -> list:
    """ws4redis accepts a list/tuple of names, ``SELF``; ``True`` (= SELF) and a bare
    string are deprecated; anything else is a mistake."""
    if value is True:
        warnings.warn(f"{argument}=True is deprecated, use {argument}=[SELF]", DeprecationWarning, stacklevel=_CALLER)
        return [SELF]
    if isinstance(value, str):
        warnings.warn(
            f"{argument}={value!r} is deprecated, use a list of names", DeprecationWarning, stacklevel=_CALLER
        )
        return [value]
    if value is SELF:
        return [SELF]
    if value is None or value is False:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise ValueError(f"{argument} must be a list or tuple of names (or SELF), got {value!r}")


class _Read:
    """One thing SELF's resolution reads from Django, both ways: ``sync()`` on a
    thread, ``await asynchronous()`` on an event loop (never a blocking call there)."""

    __slots__ = ("asynchronous", "sync")

    def __init__(self, sync: Callable[[], Any], asynchronous: Callable[[], Awaitable[Any]]):
        self.sync = sync
        self.asynchronous = asynchronous


#: A resolution: yields each ``_Read`` it needs, is sent its value, returns its answer.
Steps = Generator[_Read, Any, Any]


def resolved(steps: Steps) -> Any:
    """A resolution's answer, read with Django's blocking APIs (a thread's way)."""
    try:
        read = next(steps)
        while True:
            read = steps.send(read.sync())
    except StopIteration as done:
        return done.value


async def aresolved(steps: Steps) -> Any:
    """A resolution's answer, read with Django's async APIs (an event loop's way)."""
    try:
        read = next(steps)
        while True:
            read = steps.send(await read.asynchronous())
    except StopIteration as done:
        return done.value


def _authenticated(user: Any) -> Any:
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def _user_steps(request: Any) -> Steps:
    """The authenticated user of ``request``, or None."""

    def sync() -> Any:
        return _authenticated(getattr(request, "user", None))

    async def asynchronous() -> Any:
        # ``auser`` is AuthenticationMiddleware's; a request made by hand has only ``user``.
        auser = getattr(request, "auser", None)
        return _authenticated(await auser()) if auser else await sync_to_async(sync)()

    return (yield _Read(sync, asynchronous))


def _self_steps(audience: str, request: Any) -> Steps:
    """What SELF stands for in ``audience`` for this request: nothing for anonymous
    users or requests without a session (ws4redis subscribed bogus names then)."""
    if request is None:
        raise ValueError(f"SELF in {audience}s needs the request")
    if audience == "user":
        user = yield from _user_steps(request)
        return [user.get_username()] if user else []
    session = getattr(request, "session", None)
    if audience == "group":
        if session is None or (yield from _user_steps(request)) is None:
            return []
        names = yield _Read(
            lambda: session.get(MEMBEROF_SESSION_KEY, ()), lambda: session.aget(MEMBEROF_SESSION_KEY, ())
        )
        return [str(name) for name in names]
    key = yield from _genuine_key_steps(session)
    return [key] if key else []


def resolve_self(audience: str, request: Any) -> list[str]:
    """SELF in ``audience`` (see ``_self_steps``), on a thread."""
    return resolved(_self_steps(audience, request))


#: session store -> the key it was found to have loaded with (see ``loaded_as``).
_genuine: WeakKeyDictionary = WeakKeyDictionary()


def loaded_as(store: Any, key: str | None) -> bool:
    """Whether ``store``, made from ``key`` (the client's cookie) and just
    loaded, really found that session: the key survived the load and the
    store did not have to create a session instead. That is how every Django
    engine reports a key that names no session: db, cache and cached_db forget
    it, file creates a new one, signed_cookies (whose key *is* the data) keeps
    the forged key but calls ``create()``, which marks the store modified.
    An empty session that was saved (``request.session.save()`` for an
    anonymous visitor) loads genuinely. The answer is remembered for the store."""
    if key and store.session_key == key and not store.modified:
        _genuine[store] = key
        return True
    return False


def _genuine_key_steps(session: Any) -> Steps:
    """The key of ``session`` if the session store vouches for it, else None:
    a session channel is named after a session that really exists, never
    after whatever a client put in its cookie. A store not known to have loaded
    with its current key is checked with a fresh store of its class (one read
    of the session store)."""
    key = getattr(session, "session_key", None) if session is not None else None
    if not key:
        return None
    if _genuine.get(session) != key:
        probe = type(session)(key)
        yield _Read(probe.load, probe.aload)
        if not loaded_as(probe, key):
            return None
        _genuine[session] = key
    return key


def genuine_session_key(session: Any) -> str | None:
    """``session``'s key if it names a real session (see ``_genuine_key_steps``),
    read on the caller's thread: never the reactor's."""
    return resolved(_genuine_key_steps(session))


def audience_members(groups: Iterable = (), users: Iterable = (), sessions: Iterable = ()) -> dict[str, list]:
    """The members of each audience as lists, checked (``ValueError``) and with
    ``SELF`` unresolved, in ws4redis order: groups, users, sessions."""
    checked = {}
    for audience, members in (("group", groups), ("user", users), ("session", sessions)):
        checked[audience] = _members(members, f"{audience}s")
    return checked


def channel_steps(
    prefix: str,
    facility: str,
    *,
    request: Any = None,
    broadcast: bool = False,
    groups: Iterable = (),
    users: Iterable = (),
    sessions: Iterable = (),
) -> Steps:
    """Channel names for an audience, in ws4redis order: broadcast, groups, users,
    sessions (a resolution: see ``resolved``, ``aresolved``, ``message_channels``)."""
    channels = [channel_name(prefix, "broadcast", facility)] if broadcast else []
    for audience, members in audience_members(groups, users, sessions).items():
        for member in members:
            names = (yield from _self_steps(audience, request)) if member is SELF else [member]
            channels.extend(channel_name(prefix, audience, facility, name) for name in names)
    return channels


def message_channels(prefix: str, facility: str, **audience: Any) -> list[str]:
    """``channel_steps``' channel names, SELF read on the caller's thread."""
    return resolved(channel_steps(prefix, facility, **audience))


def fetch_steps(prefix: str, facility: str, request: Any, audience: str = "any") -> Steps:
    """The channels whose persisted message a websocket of ``request`` would get
    for ``facility``, most specific first: ``audience`` is 'session', 'user',
    'group', 'broadcast' or 'any' (all of them, in that order)."""
    if audience not in ("any", *AUDIENCES):
        raise ValueError(f"audience must be one of {('any', *AUDIENCES)}, got {audience!r}")
    order = ("session", "user", "group", "broadcast") if audience == "any" else (audience,)
    channels = []
    for name in order:
        if name == "broadcast":
            channels.append(channel_name(prefix, "broadcast", facility))
        else:
            members = yield from _self_steps(name, request)
            channels.extend(channel_name(prefix, name, facility, member) for member in members)
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


def requested_audiences(flags: Iterable[str], kind: str) -> dict[str, list | bool]:
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
    return unquote_to_bytes(path[len(websocket_url) :]).decode("utf-8")
