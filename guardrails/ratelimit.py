"""Rate limits and frequency caps in Redis: every bucket of one action in ONE atomic Lua call.

Rate limits are GCRA (the generic cell rate algorithm): one key per bucket
holding its theoretical arrival time (TAT) in microseconds of Redis' own clock,
so every process and host agrees on time. A bucket of `rate`/s and `burst`
admits at most `burst + rate * W` actions in any window of W seconds, with no
background refill and one key per bucket.

Frequency caps ("at most 3 marketing calls to a number per 24 h") are a
sliding-window log: a sorted set of the action ids counted, scored by time.

All-or-nothing: the script first checks every bucket and cap, and only when
all of them admit does it write the new TATs and log entries. An action
refused by one bucket consumes nothing from the others, and two concurrent
actions cannot both take the last slot (Redis runs one script at a time).

Every key of one call must live on one Redis node; with Redis Cluster, hash-tag
the keys (`{tenant}`) — this deployment uses one Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.redis import LuaScript

_LUA = r"""
-- KEYS: the n GCRA bucket keys, then the m frequency-cap keys
-- ARGV: n, dry_run (0|1), member, "interval_us,tolerance_us;..." (one per bucket),
--       "window_us,max;..." (one per cap)
-- Reply, one string (cheap to parse): "admitted now_us retry_us ok,wait_us,n,ok,wait_us,n,..."
-- where n is what is left in a bucket, or the count already in a cap's window.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local dry = ARGV[2] == '1'
local member = ARGV[3]
local buckets = {}
for interval, tolerance in string.gmatch(ARGV[4], '(%d+),(%d+)') do
    buckets[#buckets + 1] = {tonumber(interval), tonumber(tolerance)}
end
local caps = {}
for window, max in string.gmatch(ARGV[5], '(%d+),(%d+)') do
    caps[#caps + 1] = {tonumber(window), tonumber(max)}
end
local admitted = 1
local retry = 0
local out = {}
local new_tats = {}
local tats = {}
if n > 0 then tats = redis.call('MGET', unpack(KEYS, 1, n)) end
for i = 1, n do
    local interval, tolerance = buckets[i][1], buckets[i][2]
    local tat = tonumber(tats[i] or '0')
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - tolerance
    if now < allow_at then
        admitted = 0
        local wait = allow_at - now
        if wait > retry then retry = wait end
        out[#out + 1] = 0
        out[#out + 1] = wait
        out[#out + 1] = 0
    else
        new_tats[i] = new_tat
        out[#out + 1] = 1
        out[#out + 1] = 0
        out[#out + 1] = math.floor((now - allow_at) / interval)  -- once this action is counted
    end
end
for j = 1, #caps do
    local key = KEYS[n + j]
    local window, max = caps[j][1], caps[j][2]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    if count >= max then
        admitted = 0
        -- the entry whose expiry brings the count back under the cap
        local entry = redis.call('ZRANGE', key, count - max, count - max, 'WITHSCORES')
        local wait = tonumber(entry[2]) + window - now
        if wait < 1 then wait = 1 end
        if wait > retry then retry = wait end
        out[#out + 1] = 0
        out[#out + 1] = wait
    else
        out[#out + 1] = 1
        out[#out + 1] = 0
    end
    out[#out + 1] = count
end
if admitted == 0 or dry then
    -- nothing is counted: what is left is one more than if this action had been
    for i = 1, n do
        if out[3 * i - 2] == 1 then out[3 * i] = out[3 * i] + 1 end
    end
else
    for i = 1, n do
        local ttl = math.ceil((new_tats[i] - now) / 1000) + 1
        redis.call('SET', KEYS[i], string.format('%d', new_tats[i]), 'PX', ttl)
    end
    for j = 1, #caps do
        local key = KEYS[n + j]
        redis.call('ZADD', key, now, member)
        redis.call('PEXPIRE', key, math.ceil(caps[j][1] / 1000))
    end
end
for k = 1, #out do out[k] = string.format('%d', out[k]) end
return string.format('%d %d %d ', admitted, now, retry) .. table.concat(out, ',')
"""

SCRIPT = LuaScript(_LUA, name="guardrail_limits")

_REFUND_LUA = r"""
-- Give back what one admitted action took. KEYS: n bucket keys, then cap keys.
-- ARGV: n, member, "interval_us;..." (one per bucket)
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local i = 0
for interval in string.gmatch(ARGV[3], '(%d+)') do
    i = i + 1
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local back = tat - tonumber(interval)
    if back <= now then
        redis.call('DEL', KEYS[i])
    else
        redis.call('SET', KEYS[i], string.format('%d', back), 'PX', math.ceil((back - now) / 1000) + 1)
    end
end
for j = n + 1, #KEYS do
    redis.call('ZREM', KEYS[j], ARGV[2])
end
return 1
"""
REFUND = LuaScript(_REFUND_LUA, name="guardrail_limits_refund")


@dataclass(frozen=True)
class Bucket:
    """A GCRA bucket: `name` for humans, `key` in Redis."""

    name: str
    key: str
    rate: float
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.rate))


@dataclass(frozen=True)
class Cap:
    """A sliding-window cap: at most `max` actions per `window_s` seconds."""

    name: str
    key: str
    max: int
    window_s: float


@dataclass(frozen=True)
class LimitOutcome:
    admitted: bool
    at_us: int  # Redis' clock when the decision was taken
    retry_after_s: float
    buckets: list[dict[str, Any]]
    caps: list[dict[str, Any]]

    @property
    def denied_buckets(self) -> list[dict[str, Any]]:
        return [b for b in self.buckets if not b["ok"]]

    @property
    def denied_caps(self) -> list[dict[str, Any]]:
        return [c for c in self.caps if not c["ok"]]


async def hit(
    redis: aioredis.Redis,
    buckets: Sequence[Bucket],
    caps: Sequence[Cap] = (),
    *,
    member: str,
    dry_run: bool = False,
) -> LimitOutcome:
    """Check (and unless `dry_run`, consume) every bucket and cap at once."""
    keys: list[str] = [b.key for b in buckets] + [c.key for c in caps]
    args = (
        len(buckets),
        1 if dry_run else 0,
        member,
        ";".join(f"{b.interval_us},{b.interval_us * b.burst}" for b in buckets),
        ";".join(f"{round(c.window_s * 1_000_000)},{c.max}" for c in caps),
    )
    reply = (await SCRIPT(redis, keys, args)).decode()
    admitted, now_us, retry_us, flat_text = reply.split(" ")
    flat = [int(x) for x in flat_text.split(",")] if flat_text else []
    rows = [flat[i : i + 3] for i in range(0, len(flat), 3)]
    out_buckets = [
        {
            "limit": b.name,
            "rate": b.rate,
            "burst": b.burst,
            "ok": bool(ok),
            "remaining": int(left),
            "retry_after_s": round(wait / 1_000_000, 3),
        }
        for b, (ok, wait, left) in zip(buckets, rows[: len(buckets)], strict=True)
    ]
    out_caps = [
        {
            "cap": c.name,
            "max": c.max,
            "window_s": c.window_s,
            "ok": bool(ok),
            "count": int(count),
            "retry_after_s": round(wait / 1_000_000, 3),
        }
        for c, (ok, wait, count) in zip(caps, rows[len(buckets) :], strict=True)
    ]
    return LimitOutcome(
        admitted == "1", int(now_us), int(retry_us) / 1_000_000, out_buckets, out_caps
    )


async def refund(
    redis: aioredis.Redis, buckets: Sequence[Bucket], caps: Sequence[Cap] = (), *, member: str
) -> None:
    """Give back one admitted `hit` (the action was refused by another check after all)."""
    keys = [b.key for b in buckets] + [c.key for c in caps]
    await REFUND(redis, keys, (len(buckets), member, ";".join(str(b.interval_us) for b in buckets)))
