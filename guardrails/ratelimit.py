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
from functools import cached_property
from typing import Any

import redis.asyncio as aioredis

from gateway.redis import EncodableT, LuaScript
from guardrails.resp import ScriptPipe, Started

# Where the scripts run: a redis-py client, or the chain's lean connection beside one.
Runner = aioredis.Redis | ScriptPipe

_LUA = r"""
-- KEYS: the n GCRA bucket keys, then the m frequency-cap keys
-- ARGV: n, dry_run (0|1), member, then interval_us, tolerance_us for each bucket, then
--       window_us, max for each cap (one argument each: no string to parse in Lua)
-- Reply, one string (cheap to parse): "admitted now_us retry_us ok,wait_us,n,ok,wait_us,n,..."
-- where n is what is left in a bucket, or the count already in a cap's window.
-- (This runs for every outbound action: Redis' time in it is part of every send's latency.
-- Its floor is the TIME, the MGET and one SET per bucket; the rest is kept to arithmetic.)
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local dry = ARGV[2] == '1'
local member = ARGV[3]
local m = #KEYS - n
local caps_at = 3 + 2 * n  -- ARGV[caps_at + 2j - 1], ARGV[caps_at + 2j]: cap j
local admitted = 1
local retry = 0
local out = {}
local new_tats = {}
local tats = {}
if n > 0 then tats = redis.call('MGET', unpack(KEYS, 1, n)) end
for i = 1, n do
    local interval = tonumber(ARGV[2 + 2 * i])
    local tolerance = tonumber(ARGV[3 + 2 * i])
    local tat = tonumber(tats[i] or '0')
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - tolerance
    local k = 3 * i
    if now < allow_at then
        admitted = 0
        local wait = allow_at - now
        if wait > retry then retry = wait end
        out[k - 2], out[k - 1], out[k] = 0, wait, 0
    else
        new_tats[i] = new_tat
        -- once this action is counted
        out[k - 2], out[k - 1], out[k] = 1, 0, math.floor((now - allow_at) / interval)
    end
end
for j = 1, m do
    local key = KEYS[n + j]
    local window = tonumber(ARGV[caps_at + 2 * j - 1])
    local max = tonumber(ARGV[caps_at + 2 * j])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    local k = 3 * (n + j)
    if count >= max then
        admitted = 0
        -- the entry whose expiry brings the count back under the cap
        local entry = redis.call('ZRANGE', key, count - max, count - max, 'WITHSCORES')
        local wait = tonumber(entry[2]) + window - now
        if wait < 1 then wait = 1 end
        if wait > retry then retry = wait end
        out[k - 2], out[k - 1], out[k] = 0, wait, count
    else
        out[k - 2], out[k - 1], out[k] = 1, 0, count
    end
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
    for j = 1, m do
        local key = KEYS[n + j]
        redis.call('ZADD', key, now, member)
        redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[caps_at + 2 * j - 1]) / 1000))
    end
end
-- table.concat writes numbers as %.14g: exact below 1e14, so only larger ones need %d
for k = 1, #out do
    if out[k] >= 1e14 then out[k] = string.format('%d', out[k]) end
end
return string.format('%d %d %d ', admitted, now, retry) .. table.concat(out, ',')
"""

SCRIPT = LuaScript(_LUA, name="guardrail_limits")

_REFUND_LUA = r"""
-- Give back what one admitted action took. KEYS: n bucket keys, then cap keys.
-- ARGV: n, member, then interval_us for each bucket
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
for i = 1, n do
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local back = tat - tonumber(ARGV[2 + i])
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

    @cached_property
    def spec(self) -> tuple[int, int]:
        """The script's (interval_us, tolerance_us) for this bucket (a bucket is reused)."""
        return self.interval_us, self.interval_us * self.burst


@dataclass(frozen=True)
class Cap:
    """A sliding-window cap: at most `max` actions per `window_s` seconds."""

    name: str
    key: str
    max: int
    window_s: float

    @cached_property
    def spec(self) -> tuple[int, int]:
        """The script's (window_us, max) for this cap."""
        return round(self.window_s * 1_000_000), self.max


async def _run(
    runner: Runner, script: LuaScript, keys: Sequence[EncodableT], args: Sequence[EncodableT]
) -> Any:
    if isinstance(runner, ScriptPipe):
        return await runner.evalsha(script, keys, args)
    return await script(runner, keys, args)


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
    redis: Runner,
    buckets: Sequence[Bucket],
    caps: Sequence[Cap] = (),
    *,
    member: str,
    dry_run: bool = False,
) -> LimitOutcome:
    """Check (and unless `dry_run`, consume) every bucket and cap at once."""
    keys, args = _hit_call(buckets, caps, member, dry_run)
    return outcome_of(await _run(redis, SCRIPT, keys, args), buckets, caps)


def start_hit(
    pipe: ScriptPipe, buckets: Sequence[Bucket], caps: Sequence[Cap] = (), *, member: str
) -> Started | None:
    """`hit`, sent now without awaiting (see `ScriptPipe.start`); `outcome_of` its result."""
    keys, args = _hit_call(buckets, caps, member, False)
    return pipe.start(SCRIPT, keys, args)


def _hit_call(
    buckets: Sequence[Bucket], caps: Sequence[Cap], member: str, dry_run: bool
) -> tuple[list[str], tuple[EncodableT, ...]]:
    keys: list[str] = [b.key for b in buckets] + [c.key for c in caps]
    args: list[EncodableT] = [len(buckets), 1 if dry_run else 0, member]
    for b in buckets:
        args += b.spec
    for c in caps:
        args += c.spec
    return keys, tuple(args)


def outcome_of(reply: bytes, buckets: Sequence[Bucket], caps: Sequence[Cap]) -> LimitOutcome:
    """The script's one-string reply, read back into what each bucket and cap said."""
    admitted, now_us, retry_us, flat_text = reply.decode().split(" ")
    flat = [int(x) for x in flat_text.split(",")] if flat_text else []
    oks, waits, counts = flat[0::3], flat[1::3], flat[2::3]
    n = len(buckets)
    out_buckets = [
        {
            "limit": b.name,
            "rate": b.rate,
            "burst": b.burst,
            "ok": ok == 1,
            "remaining": left,
            "retry_after_s": round(wait / 1_000_000, 3) if wait else 0.0,
        }
        for b, ok, wait, left in zip(buckets, oks[:n], waits[:n], counts[:n], strict=True)
    ]
    out_caps = [
        {
            "cap": c.name,
            "max": c.max,
            "window_s": c.window_s,
            "ok": ok == 1,
            "count": count,
            "retry_after_s": round(wait / 1_000_000, 3) if wait else 0.0,
        }
        for c, ok, wait, count in zip(caps, oks[n:], waits[n:], counts[n:], strict=True)
    ]
    return LimitOutcome(
        admitted == "1", int(now_us), int(retry_us) / 1_000_000, out_buckets, out_caps
    )


async def refund(
    redis: Runner, buckets: Sequence[Bucket], caps: Sequence[Cap] = (), *, member: str
) -> None:
    """Give back one admitted `hit` (the action was refused by another check after all)."""
    keys = [b.key for b in buckets] + [c.key for c in caps]
    args = (len(buckets), member, *[b.interval_us for b in buckets])
    await _run(redis, REFUND, keys, args)
