"""Who is connected to a facility, on every node: the Redis layout both sides
share, and the readers for Django code (``present``, ``apresent``).

Each node keeps its own counts per facility in a hash, and a sorted set of
the facility's nodes holds, for each, when its entries stop counting (Redis'
clock, so the nodes' clocks do not matter). A node refreshes both every third
of ``WS4REDIS_PRESENCE_TTL``; one killed stops, and its entries stop counting
when that time passes. A node that finds another past it (while refreshing)
announces the ``leave`` of its users who are on no other node and deletes its
hash, which is kept twice as long as it counts so that it can be found.

All the keys of a facility share one hash tag, so that they live on one
shard of a Redis Cluster.
"""

from __future__ import annotations

from typing import Any, TypedDict

from .conf import get_settings
from .publisher import _aconnection, _connection
from .redis_store import reaching_redis

#: A hash's fields: sockets, anonymous sockets, and sockets per user ("u:" + name).
CONNECTIONS, ANONYMOUS, USER = "c", "a", "u:"


class Present(TypedDict):
    """What ``present()`` returns: the logged-in users' names (sorted, each
    once), the anonymous visitors' sockets, and every socket."""

    users: list[str]
    anonymous: int
    connections: int


def _base(facility: str, prefix: str) -> str:
    if not facility:
        # "{}" is no hash tag (Redis would hash each whole key): the empty
        # facility's keys share the tag ":" instead, under a name no facility has.
        return f"{prefix}ws4redis:presence::{{:}}"
    return f"{prefix}ws4redis:presence:{{{facility}}}"


def nodes_key(facility: str, prefix: str) -> str:
    """The sorted set of the facility's nodes, scored by when their entries stop counting."""
    return f"{_base(facility, prefix)}:nodes"


def node_prefix(facility: str, prefix: str) -> str:
    """What a node's id follows in the name of its hash."""
    return f"{_base(facility, prefix)}:node:"


def events_channel(facility: str, prefix: str) -> str:
    """The pub/sub channel of the facility's join and leave events."""
    return _base(facility, prefix)


# Lua shared by the scripts: the time in ms, the live nodes, whether a user
# has sockets on one of them, and an event's JSON (the shape v2 clients get).
_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(nodes, now, except)
  local found = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', nodes, now, '+inf')) do
    if node ~= except then found[#found + 1] = node end
  end
  return found
end
local function elsewhere(prefix, nodes, field)
  for _, node in ipairs(nodes) do
    if redis.call('HEXISTS', prefix .. node, field) == 1 then return true end
  end
  return false
end
local function keep(nodes, own, node, now, ttl)
  if redis.call('EXISTS', own) == 1 then
    redis.call('PEXPIRE', own, 2 * ttl)
    redis.call('ZADD', nodes, now + ttl, node)
    redis.call('PEXPIRE', nodes, 2 * ttl)
  else
    redis.call('ZREM', nodes, node)
  end
end
local function announce(channel, op, facility, field)
  redis.call('PUBLISH', channel, '{"op":' .. cjson.encode(op) .. ',"facility":' .. cjson.encode(facility)
    .. ',"user":' .. cjson.encode(string.sub(field, 3)) .. '}')
end
"""

#: KEYS: the nodes' set, this node's hash. ARGV: node id, TTL (ms), node
#: prefix, events channel, facility, then (field, count, event) triples: a
#: count of 0 deletes the field; an event ('join', 'leave' or '') is announced
#: unless the user has sockets on another live node.
UPDATE_SCRIPT = (
    _COMMON
    + """
local nodes, own = KEYS[1], KEYS[2]
local node, ttl, prefix, channel, facility = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local others = nil
for i = 6, #ARGV, 3 do
  local field, count, event = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if count > 0 then redis.call('HSET', own, field, count) else redis.call('HDEL', own, field) end
  if event ~= '' then
    others = others or live(nodes, now, node)
    if not elsewhere(prefix, others, field) then announce(channel, event, facility, field) end
  end
end
keep(nodes, own, node, now, ttl)
"""
)

#: KEYS: the nodes' set, this node's hash. ARGV: node id, TTL (ms), node
#: prefix, events channel, facility, then this node's whole hash as (field,
#: count) pairs. Rewrites the hash; if this node's entries had stopped
#: counting (it was too slow, or Redis lost them), announces the joins of its
#: users on no other node; then reaps the nodes past their time.
REFRESH_SCRIPT = (
    _COMMON
    + """
local nodes, own = KEYS[1], KEYS[2]
local node, ttl, prefix, channel, facility = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local counted_until = tonumber(redis.call('ZSCORE', nodes, node) or 0)
redis.call('DEL', own)
local others = nil
for i = 6, #ARGV, 2 do
  redis.call('HSET', own, ARGV[i], ARGV[i + 1])
  if counted_until < now and string.sub(ARGV[i], 1, 2) == 'u:' then
    others = others or live(nodes, now, node)
    if not elsewhere(prefix, others, ARGV[i]) then announce(channel, 'join', facility, ARGV[i]) end
  end
end
keep(nodes, own, node, now, ttl)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. now)) do
  if redis.call('ZREM', nodes, dead) == 1 then
    local alive = live(nodes, now, nil)
    for _, field in ipairs(redis.call('HKEYS', prefix .. dead)) do
      if string.sub(field, 1, 2) == 'u:' and not elsewhere(prefix, alive, field) then
        announce(channel, 'leave', facility, field)
      end
    end
    redis.call('DEL', prefix .. dead)
  end
end
"""
)

#: KEYS: the nodes' set. ARGV: node prefix. Returns {connections, anonymous,
#: user...} summed over the live nodes, each user once.
READ_SCRIPT = (
    _COMMON
    + """
local connections, anonymous, users, seen = 0, 0, {}, {}
for _, node in ipairs(live(KEYS[1], now_ms(), nil)) do
  local entries = redis.call('HGETALL', ARGV[1] .. node)
  for i = 1, #entries, 2 do
    local field, count = entries[i], tonumber(entries[i + 1])
    if field == 'c' then connections = connections + count
    elseif field == 'a' then anonymous = anonymous + count
    elseif not seen[field] then
      seen[field] = true
      users[#users + 1] = string.sub(field, 3)
    end
  end
end
table.insert(users, 1, anonymous)
table.insert(users, 1, connections)
return users
"""
)


def read_call(facility: str, prefix: str) -> tuple[list[str], list[str]]:
    """READ_SCRIPT's keys and arguments for ``facility``."""
    return [nodes_key(facility, prefix)], [node_prefix(facility, prefix)]


def parse_read(reply: list[Any]) -> Present:
    """READ_SCRIPT's reply as ``present()`` returns it."""
    connections, anonymous, *users = reply
    names = sorted(name.decode("utf-8") if isinstance(name, bytes) else name for name in users)
    return {"users": names, "anonymous": int(anonymous), "connections": int(connections)}


def present(facility: str) -> Present:
    """Who is connected to ``facility`` on every node now: the users' names
    (sorted, each once), the anonymous sockets, all sockets. Empty while
    WS4REDIS_PRESENCE is off on the servers. Raises ``RedisUnavailable``
    when Redis cannot be reached."""
    keys, args = read_call(facility, get_settings().prefix)
    with reaching_redis():
        return parse_read(_connection().eval(READ_SCRIPT, len(keys), *keys, *args))


async def apresent(facility: str) -> Present:
    """``present()`` for async code (redis.asyncio)."""
    keys, args = read_call(facility, get_settings().prefix)
    with reaching_redis():
        return parse_read(await (await _aconnection()).eval(READ_SCRIPT, len(keys), *keys, *args))
