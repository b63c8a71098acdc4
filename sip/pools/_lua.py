"""The pool's Lua scripts, embedded as strings so the package needs no package-data.

Every script starts with the same prelude and works on one pool's six keys:

  KEYS[1] leases  ZSET holder -> lease expiry (ms, Redis server clock)
  KEYS[2] since   HASH holder -> acquired at (ms), so reconcile can spare young permits
  KEYS[3] queue   ZSET ticket -> sequence number (FIFO order of waiters)
  KEYS[4] qexp    ZSET ticket -> ticket deadline (ms); a dead waiter's ticket lapses here
  KEYS[5] seq     STRING counter giving tickets their order
  KEYS[6] epoch   STRING the pool's state marker (see below)

A ticket member is `id|lease_ms|channel|holder` (holder last, so it may contain `|`).
ARGV[1] is always the pool size. Every script first "settles" the pool: expired leases
are removed and free permits are handed, in queue order, straight to the waiting
tickets (the lease is written for the waiter and `id|expiry` is published on the
waiter's channel). Because of that hand-off, a free permit exists only while the queue
is empty, so a newcomer can never overtake a waiter, and a waiter that misses the
message still finds its permit in `leases`.

The epoch marker says "these keys are a faithful copy of who holds a channel". It is
written only by REBUILD, in the same script that restores every pool's holders from the
calls table (PostgreSQL), so a Redis that restarts empty or is flushed loses the marker
together with the holders. ACQUIRE refuses while it is missing ({3}: rebuild needed)
instead of admitting into a pool that only looks empty; RENEW answers -1, and STATS and
OCCUPANCY report it, so readers rebuild before they show a pool as free. The marker's
value starts with the run id of the Redis server it was written on: a Redis that comes
back from a restart with an older snapshot (RDB/AOF), or a promoted replica, holds an old
marker beside holders that miss whatever was admitted after the snapshot, so every new
pool connection first runs CHECK_EPOCH with the server's run id, which drops a marker of
another run (and the next acquire rebuilds: the restored holders plus the calls table).
"""

from __future__ import annotations

from gateway.redis import LuaScript

_PRELUDE = """
local leases, since, queue, qexp, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6]
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
#    | {3} the state marker is missing: rebuild the holders before admitting anyone
ACQUIRE = (
    _PRELUDE
    + """
if redis.call('EXISTS', epoch) == 0 then return {3} end
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
#   | -1 (the state marker is missing: the holders must be rebuilt first)
RENEW = (
    _PRELUDE
    + """
if redis.call('EXISTS', epoch) == 0 then return -1 end
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

# ARGV: size -> {in_use, waiting, next_expiry, now, marker present (1|0)}
STATS = (
    _PRELUDE
    + """
reap()
grant()
return {redis.call('ZCARD', leases), redis.call('ZCARD', queue), next_expiry(), now,
        redis.call('EXISTS', epoch)}
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

# ARGV: size -> {holder ids with a live lease, ticket members in queue order, marker 1|0}: one
# snapshot, so a permit handed from the queue to a waiter is counted once, never as both or
# neither
OCCUPANCY = (
    _PRELUDE
    + """
reap()
grant()
return {redis.call('ZRANGE', leases, 0, -1), redis.call('ZRANGE', queue, 0, -1),
        redis.call('EXISTS', epoch)}
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

# Restore every pool of a trunk at once and set their markers, atomically.
# KEYS: rebuild lock, then per pool: leases, since, epoch
# ARGV: lock token, marker value, pool count, then per pool:
#       size, lease_ms, n_live, n_pending, live holders..., pending holders...
# Live holders (calls on the trunk) are all restored, even past the size: they hold a
# channel whether or not we like it. Pending ones (accepted, not dialled yet) only fill
# free room, in the order given. Nothing is written unless the lock is still ours: a
# flush between our read of PostgreSQL and this script took the lock with it, and the
# holders we read must not be marked as the whole truth of an empty Redis.
# -> 0 lock lost (nothing written) | {restored holders of pool 1}, {… of pool 2}, …
REBUILD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local out = {}
local npools = tonumber(ARGV[3])
local at = 4
for p = 1, npools do
  local leases, since, epoch = KEYS[3 * p - 1], KEYS[3 * p], KEYS[3 * p + 1]
  local size, lease_ms = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local n_live, n_pending = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  at = at + 4
  local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for i = 1, #dead do redis.call('HDEL', since, dead[i]) end
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local restored = {}
  for i = at, at + n_live + n_pending - 1 do
    local h = ARGV[i]
    local room = i < at + n_live or redis.call('ZCARD', leases) < size
    if room and not redis.call('ZSCORE', leases, h) then
      redis.call('ZADD', leases, now + lease_ms, h)
      redis.call('HSET', since, h, now)
      restored[#restored + 1] = h
    end
  end
  at = at + n_live + n_pending
  redis.call('SET', epoch, ARGV[2])
  out[p] = restored
end
return out
"""

# KEYS: the pools' epoch keys; ARGV: the server's run id -> how many markers of another
# server run were dropped
CHECK_EPOCH = """
local dropped = 0
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
  end
end
return dropped
"""

# KEYS: lock; ARGV: token -> 1 if the lock was ours and is now released
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

acquire_script = LuaScript(ACQUIRE, name="pool_acquire")
release_script = LuaScript(RELEASE, name="pool_release")
renew_script = LuaScript(RENEW, name="pool_renew")
wait_status_script = LuaScript(WAIT_STATUS, name="pool_wait_status")
stats_script = LuaScript(STATS, name="pool_stats")
holders_script = LuaScript(HOLDERS, name="pool_holders")
occupancy_script = LuaScript(OCCUPANCY, name="pool_occupancy")
reconcile_script = LuaScript(RECONCILE, name="pool_reconcile")
rebuild_script = LuaScript(REBUILD, name="pool_rebuild")
unlock_script = LuaScript(UNLOCK, name="pool_unlock")
