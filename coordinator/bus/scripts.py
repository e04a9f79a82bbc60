"""Lua scripts of the context bus and the key layout they work on.

Scripts run atomically inside Redis, which is what makes two of the bus's promises hold:
an entry is marked handled in the same step as it is acknowledged (so "acked" and
"handled" never disagree), and a trim never removes an entry some consumer group still
has to read or acknowledge.
"""

from __future__ import annotations

import re

from coordinator.bus.models import Channel
from sandbox_agents.errors import InvalidInputError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def check_name(value: str, field: str) -> str:
    """Refuse ids that could collide in the key layout (no ``:``, no spaces, bounded length)."""
    if not _NAME.match(value):
        raise InvalidInputError(f"{field} must match {_NAME.pattern}, got {value!r}", field=field)
    return value


class BusKeys:
    """Names of every Redis key of one build; all start with ``{prefix}:build:{id}:``."""

    def __init__(self, prefix: str, build_id: str) -> None:
        self.build_id = check_name(build_id, "build_id")
        self.base = f"{prefix}:build:{build_id}"
        self.dead = f"{self.base}:dead"
        self.unified = f"{self.base}:unified"

    def stream(self, channel: Channel) -> str:
        """The stream of one channel (``events`` is the event log)."""
        return f"{self.base}:{channel}"

    def done(self, group: str) -> str:
        """Sorted set of entry ids (and message ids) the group has handled, scored by time."""
        return f"{self.base}:group:{check_name(group, 'group')}:done"

    def hwm(self, group: str) -> str:
        """Hash: stream key -> highest entry id the group has handled there."""
        return f"{self.base}:group:{check_name(group, 'group')}:hwm"

    def attempts(self, group: str) -> str:
        """Hash: entry member -> redeliveries so far (the first delivery is not counted), until acknowledged."""
        return f"{self.base}:group:{check_name(group, 'group')}:attempts"


# KEYS: done, attempts.  ARGV: mode ("count" or "check"), entry members..., then mid members
# (same count; "" when unknown).  Returns, per entry, -1 if the group already handled it (by entry
# id or by message id), else in "count" mode its redelivery count after this one (HINCRBY) and in
# "check" mode 0.  A first delivery (read with ">") is not counted here, to keep the hot path at one
# round trip; every redelivery is, before the handler runs, so a poison entry that keeps killing its
# consumer process still reaches the dead letters.
BEGIN = """
local count = ARGV[1] == 'count'
local n = (#ARGV - 1) / 2
local out = {}
for i = 1, n do
  local member, mid = ARGV[1 + i], ARGV[1 + n + i]
  if redis.call('ZSCORE', KEYS[1], member) or (mid ~= '' and redis.call('ZSCORE', KEYS[1], mid)) then
    out[i] = -1
  elseif count then
    out[i] = redis.call('HINCRBY', KEYS[2], member, 1)
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: stream, done, attempts, dead, hwm.
# ARGV: group, entry id, member, mid member ('' if none), now_ms, window, dead_maxlen, flags,
#       then (only for dead-lettering) field/value pairs of the dead-letter entry.
# flags: 'a' if the entry may have a counted attempt (forget it), 't' to trim the handled set to
#        the window (the subscriber asks every so many settles: the set may overshoot a little).
# Acknowledges the entry, marks it handled, forgets its attempt count and raises the group's
# high-water mark (highest handled id per stream; entries read with ">" above it cannot have been
# handled before, so they skip the BEGIN check), all at once. The hot path of every subscriber
# (it is sent without waiting for a reply), so it does only what the flags ask.
# A dead letter is written only if the entry was not marked handled already.
SETTLE = """
local flags = ARGV[8]
if #ARGV > 8 and not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  local fields = {}
  for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3], ARGV[5], ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
end
if string.find(flags, 'a', 1, true) then redis.call('HDEL', KEYS[3], ARGV[3]) end
local hwm = redis.call('HGET', KEYS[5], KEYS[1])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local newer = not hwm
if hwm then
  local am, as = parse(hwm)
  local bm, bs = parse(ARGV[2])
  newer = am < bm or (am == bm and as < bs)
end
if newer then redis.call('HSET', KEYS[5], KEYS[1], ARGV[2]) end
if string.find(flags, 't', 1, true) then
  local size = redis.call('ZCARD', KEYS[2])
  local window = tonumber(ARGV[6])
  if size > window then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, size - window - 1) end
end
return 1
"""

# KEYS: stream.  ARGV: max_len.
# Trims the stream to about max_len entries, but never past the oldest entry any group
# still has pending or has not yet been delivered.  Returns the number of entries removed.
TRIM = """
local len = redis.call('XLEN', KEYS[1])
local maxlen = tonumber(ARGV[1])
if len <= maxlen then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq), ms
end
local function lt(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end
local keep = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - maxlen + 1)
local minid = keep[#keep][1]
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local last = info['last-delivered-id']
  local _, seq, ms = parse(last)
  local unread = ms .. '-' .. string.format('%d', seq + 1)
  if lt(unread, minid) then minid = unread end
  if tonumber(info['pending']) > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    if summary[2] and lt(summary[2], minid) then minid = summary[2] end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
"""
