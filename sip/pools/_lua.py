"""The pool's Lua scripts, embedded as strings so the package needs no package-data.

Every script starts with the same prelude and works on one pool's five keys:

  KEYS[1] leases  ZSET holder -> lease expiry (ms, Redis server clock)
  KEYS[2] since   HASH holder -> acquired at (ms), so reconcile can spare young permits
  KEYS[3] queue   ZSET ticket -> sequence number (FIFO order of waiters)
  KEYS[4] qexp    ZSET ticket -> ticket deadline (ms); a dead waiter's ticket lapses here
  KEYS[5] seq     STRING counter giving tickets their order

A ticket member is `id|lease_ms|channel|holder` (holder last, so it may contain `|`).
ARGV[1] is always the pool size. Every script first "settles" the pool: expired leases
are removed and free permits are handed, in queue order, straight to the waiting
tickets (the lease is written for the waiter and `id|expiry` is published on the
waiter's channel). Because of that hand-off, a free permit exists only while the queue
is empty, so a newcomer can never overtake a waiter, and a waiter that misses the
message still finds its permit in `leases`.
"""

from __future__ import annotations

from gateway.redis import LuaScript

_PRELUDE = """
local leases, since, queue, qexp = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local size = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function reap()
  local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #dead > 0 then
    for i = 1, #dead do redis.call('HDEL', since, dead[i]) end
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  end
end

local function take(holder, lease_ms)
  local exp = now + lease_ms
  if redis.call('ZADD', leases, exp, holder) == 1 then
    redis.call('HSET', since, holder, now)
  end
  return exp
end

-- Hand free permits to the queue head(s). Returns false when nobody waits (so a
-- newcomer may take a free permit), true when the queue may still hold tickets.
local function grant()
  if redis.call('EXISTS', queue) == 0 then return false end
  local gone = redis.call('ZRANGEBYSCORE', qexp, '-inf', now)
  if #gone > 0 then
    for i = 1, #gone do redis.call('ZREM', queue, gone[i]) end
    redis.call('ZREMRANGEBYSCORE', qexp, '-inf', now)
  end
  local free = size - redis.call('ZCARD', leases)
  while free > 0 do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return false end
    redis.call('ZREM', queue, head)
    redis.call('ZREM', qexp, head)
    local id, lease_ms, chan, holder = string.match(head, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
    if not redis.call('ZSCORE', leases, holder) then free = free - 1 end
    local exp = take(holder, tonumber(lease_ms))
    redis.call('PUBLISH', chan, id .. '|' .. exp)
  end
  return true
end

local function next_expiry()
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')[2]
  if first then return tonumber(first) end
  return 0
end
"""

# ARGV: size, holder, lease_ms, wait_ms (0 = do not queue), ticket member
# -> expiry (an integer: granted; the common case, cheapest to parse)
#    | {0, next_expiry, now, waiting, in_use} full | {2, next_expiry, now} queued
ACQUIRE = (
    _PRELUDE
    + """
reap()
local waiting = grant()
local holder, lease_ms, wait_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if (not waiting and redis.call('ZCARD', leases) < size) or redis.call('ZSCORE', leases, holder) then
  return take(holder, lease_ms)
end
if wait_ms <= 0 then
  return {0, next_expiry(), now, redis.call('ZCARD', queue), redis.call('ZCARD', leases)}
end
local member = ARGV[5]
if not redis.call('ZSCORE', queue, member) then
  redis.call('ZADD', queue, redis.call('INCR', KEYS[5]), member)
  redis.call('ZADD', qexp, now + wait_ms, member)
end
return {2, next_expiry(), now}
"""
)

# ARGV: size, holder -> 1 if a live permit was released, 0 if none was held
RELEASE = (
    _PRELUDE
    + """
reap()
local n = redis.call('ZREM', leases, ARGV[2])
if n == 1 then redis.call('HDEL', since, ARGV[2]) end
grant()
return n
"""
)

# ARGV: size, holder, lease_ms -> new expiry | 0 (the lease had already lapsed)
RENEW = (
    _PRELUDE
    + """
reap()
grant()
if not redis.call('ZSCORE', leases, ARGV[2]) then return 0 end
return take(ARGV[2], tonumber(ARGV[3]))
"""
)

# ARGV: size, holder, ticket member, cancel ('1' removes a queued ticket)
# -> {1, expiry, now} granted | {2, next_expiry, now} still queued
#    | {0, next_expiry, now, waiting, in_use} not queued (cancelled now, or lapsed)
WAIT_STATUS = (
    _PRELUDE
    + """
reap()
grant()
if redis.call('ZSCORE', queue, ARGV[3]) then
  if ARGV[4] ~= '1' then return {2, next_expiry(), now} end
  redis.call('ZREM', queue, ARGV[3])
  redis.call('ZREM', qexp, ARGV[3])
else
  local exp = redis.call('ZSCORE', leases, ARGV[2])
  if exp then return {1, tonumber(exp), now} end
end
return {0, next_expiry(), now, redis.call('ZCARD', queue), redis.call('ZCARD', leases)}
"""
)

# ARGV: size -> {in_use, waiting, next_expiry, now}
STATS = (
    _PRELUDE
    + """
reap()
grant()
return {redis.call('ZCARD', leases), redis.call('ZCARD', queue), next_expiry(), now}
"""
)

# ARGV: size -> holder ids with a live lease, oldest lease expiry first
HOLDERS = (
    _PRELUDE
    + """
reap()
grant()
return redis.call('ZRANGE', leases, 0, -1)
"""
)

# ARGV: size -> {holder ids with a live lease, ticket members in queue order}: one snapshot,
# so a permit handed from the queue to a waiter is counted once, never as both or neither
OCCUPANCY = (
    _PRELUDE
    + """
reap()
grant()
return {redis.call('ZRANGE', leases, 0, -1), redis.call('ZRANGE', queue, 0, -1)}
"""
)

# ARGV: size, min_age_ms, live holder ids... -> released holder ids
RECONCILE = (
    _PRELUDE
    + """
reap()
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
local cutoff = now - tonumber(ARGV[2])
local released = {}
for _, h in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  if not live[h] and tonumber(redis.call('HGET', since, h) or '0') <= cutoff then
    redis.call('ZREM', leases, h)
    redis.call('HDEL', since, h)
    released[#released + 1] = h
  end
end
grant()
return released
"""
)

acquire_script = LuaScript(ACQUIRE, name="pool_acquire")
release_script = LuaScript(RELEASE, name="pool_release")
renew_script = LuaScript(RENEW, name="pool_renew")
wait_status_script = LuaScript(WAIT_STATUS, name="pool_wait_status")
stats_script = LuaScript(STATS, name="pool_stats")
holders_script = LuaScript(HOLDERS, name="pool_holders")
occupancy_script = LuaScript(OCCUPANCY, name="pool_occupancy")
reconcile_script = LuaScript(RECONCILE, name="pool_reconcile")
