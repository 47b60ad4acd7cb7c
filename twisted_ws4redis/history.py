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
of a channel (those start with an audience).

Recovery (``RECOVER_SCRIPT``) reads the entries after a client's last id and
whether the stream still reaches back to it. The publish script records the
id of the last entry it trimmed as the stream's ``max-deleted-entry-id``
(``XSETID ... MAXDELETEDID``; Redis itself updates it on XDEL only): entries
after ``since`` are all there exactly when ``since`` is at least that id. A
stream created anew (the old one expired, or Redis lost it) marks everything
before its first entry as trimmed, so that an id from the old stream is not
recovered from the new one. This needs Redis >= 7.0.

The envelope is what the channel carries when the history is on: servers of
this package unwrap it (plain ws4redis sockets get the bare payload, as
always); a foreign subscriber (a ws4redis 0.6 server, ``redis-cli
SUBSCRIBE``) would see it. A foreign publisher's plain ``PUBLISH`` has no
envelope and is delivered with no id.
"""
from __future__ import annotations

import hashlib
import re

#: What starts a published envelope: NUL bytes, which no text payload has.
ENVELOPE_MAGIC = b"\x00ws4redis\x00"

#: The stream entry's one field, holding the payload.
FIELD = b"m"

#: KEYS: channel, history stream. ARGV: payload, expire (seconds, 0: keep no
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
  redis.call('XSETID', KEYS[2], id, 'MAXDELETEDID', trimmed)
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return {redis.call('PUBLISH', KEYS[1], ARGV[5] .. id .. '\\0' .. ARGV[1]), id}
"""

PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()

#: KEYS: history stream. ARGV: since (an id), most entries. Returns nil when
#: there is no stream or ``since`` is later than any id it gave (so not one of
#: its ids: an older stream's, after the clock went back, or made up), else
#: {greatest id trimmed, entries after since}.
RECOVER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local fields = {}
for i = 1, #info, 2 do
  fields[info[i]] = info[i + 1]
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
if greater(parts(ARGV[1]), parts(fields['last-generated-id'])) then
  return false
end
return {fields['max-deleted-entry-id'], redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"""

#: KEYS: channel, history stream. Returns {persisted message or nil, the last
#: entry as a list of at most one}, read together.
CURRENT_SCRIPT = """
return {redis.call('GET', KEYS[1]), redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
"""

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_PART = 2 ** 64 - 1

#: A message id as compared: (milliseconds, sequence).
MessageId = tuple[int, int]


def history_key(channel: str, prefix: str) -> str:
    """The history stream of ``channel`` (whose name starts with ``prefix``)."""
    return f"{prefix}ws4redis:history:{channel[len(prefix):]}"


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
    foreign binary payload), which is delivered whole."""
    if payload.startswith(ENVELOPE_MAGIC):
        raw_id, nul, message = payload[len(ENVELOPE_MAGIC):].partition(b"\x00")
        message_id = raw_id.decode("ascii", "replace")
        if nul and parse_id(message_id) is not None:
            return message_id, message
    return None, payload


def publish_args(message: bytes, expire: int, size: int, ttl: int) -> list:
    """``PUBLISH_SCRIPT``'s ARGV."""
    return [message, expire, size, ttl, ENVELOPE_MAGIC]


def entry_payload(fields: list) -> bytes:
    """The payload of a stream entry's field list (``[b"m", payload]``)."""
    values = dict(zip(fields[::2], fields[1::2]))
    return values.get(FIELD, b"")
