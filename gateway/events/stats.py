"""Live per-tenant counters in Redis, kept by a log-tailing subscriber.

What is counted, from the event vocabulary:

- `message.<x>` / `call.<x>`: one count under `x` (or under `data.status` when the event
  carries one): `message.delivered` → messages.delivered += 1.
- `pool.<x>` with `data.pool` and `data.in_use` (and optionally `data.size`): the pool's
  latest occupancy.

The subscriber reads the log in seq order from a cursor kept in Redis, and a
Lua script applies a batch's increments and moves the cursor in one atomic
step, guarded by the cursor it started from: counts are exact (each event
counted once) even with several worker processes running it. If Redis loses
the keys, counting starts again from the oldest retained event; if the cursor is
ahead of the log (a database restored under a live Redis), the counters are reset
and recounted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from gateway.events import log
from gateway.events.sequencer import SEQUENCED_CHANNEL
from gateway.events.wake import follow
from gateway.redis import LuaScript

CURSOR_KEY = "trunkline:stats:cursor"


def stats_key(tenant_id: uuid.UUID | str) -> str:
    return f"trunkline:stats:{tenant_id}"


_APPLY = LuaScript(
    """
-- KEYS[1] cursor, KEYS[2..] tenant hashes; ARGV[1] expected cursor, ARGV[2] new cursor,
-- then (key index, op, field, value) quads: op 'i' = HINCRBY, 's' = HSET.
local cur = redis.call('GET', KEYS[1]) or '0'
if cur ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  if ARGV[i + 1] == 'i' then
    redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])
  else
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
""",
    name="stats_apply",
)


# The next events (log.global_range's order and bound) folded by PostgreSQL: one row with the
# span's size and last seq, one per (tenant, counter) with its increment, and the pool events
# in seq order (their latest occupancy wins) — not every event transferred and decoded.
# A counter: `<kind>s:<x>` for a `<kind>.<x>` event (message, call), or the event's string
# `data.status` in place of x.
_COUNTED = """
WITH batch AS (
    SELECT seq, tenant_id, type, data, split_part(type, '.', 1) AS kind FROM events
    WHERE seq > $1 ORDER BY seq LIMIT $2
)
SELECT 'span' AS row, max(seq) AS seq, NULL::uuid AS tenant_id, NULL::text AS field,
       count(*) AS n, NULL::jsonb AS data
FROM batch
UNION ALL
SELECT 'count', min(seq), tenant_id, field, count(*), NULL FROM (
    SELECT seq, tenant_id, kind || 's:' || CASE
        WHEN jsonb_typeof(data->'status') = 'string' THEN data->>'status'
        WHEN strpos(type, '.') > 0 THEN substr(type, strpos(type, '.') + 1)
        ELSE '' END AS field
    FROM batch WHERE kind IN ('message', 'call')) counted
GROUP BY tenant_id, field
UNION ALL
SELECT 'pool', seq, tenant_id, NULL, NULL, data FROM batch WHERE kind = 'pool'
ORDER BY seq
"""


def _changes(rows: Sequence[asyncpg.Record]) -> dict[str, dict[str, tuple[str, int]]]:
    """tenant -> field -> (op, value), from `_COUNTED`'s rows (pool events in seq order)."""
    out: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    for row in rows:
        if row["row"] == "count":
            fields = out[str(row["tenant_id"])]
            _, n = fields.get(row["field"], ("i", 0))
            fields[row["field"]] = ("i", n + row["n"])
        elif row["row"] == "pool":
            data: dict[str, Any] = row["data"] or {}
            if isinstance(data.get("pool"), str):
                fields = out[str(row["tenant_id"])]
                if isinstance(data.get("in_use"), int):
                    fields[f"pools:{data['pool']}:in_use"] = ("s", data["in_use"])
                if isinstance(data.get("size"), int):
                    fields[f"pools:{data['pool']}:size"] = ("s", data["size"])
    return {t: f for t, f in out.items() if f}


class StatsAggregator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        redis: aioredis.Redis,
        *,
        batch: int = 500,
        interval: float = 5.0,
        settle: float = 0.0,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.redis = redis
        self.batch = batch
        self.interval = interval
        self.settle = settle

    async def run(self, stopping: asyncio.Event) -> None:
        await follow(
            self.database_url,
            SEQUENCED_CHANNEL,
            self.step,
            stopping,
            batch=self.batch,
            interval=self.interval,
            settle=self.settle,
        )

    async def step(self) -> int:
        raw = await self.redis.get(CURSOR_KEY)
        cursor = int(raw) if raw else 0
        if cursor == 0:
            cursor = await log.pruned_through(self.pool)
        rows = await self.pool.fetch(_COUNTED, cursor, self.batch)
        span = next(r for r in rows if r["row"] == "span")
        if not span["n"]:
            if raw and cursor > max(
                await log.max_seq(self.pool), await log.pruned_through(self.pool)
            ):
                await self.reset()  # the cursor belongs to another log (a restored database?)
            return 0
        changes = _changes(rows)
        keys = [CURSOR_KEY]
        args: list[str | int] = [raw.decode() if raw else "0", span["seq"]]
        for tenant, fields in changes.items():
            keys.append(stats_key(tenant))
            for field, (op, value) in fields.items():
                args += [len(keys), op, field, value]
        await _APPLY(self.redis, keys, args)  # 0 = another aggregator moved first: re-read
        return span["n"]

    async def reset(self) -> None:
        """Forget every counter and the cursor; the next step counts the log from its start."""
        async for key in self.redis.scan_iter(match="trunkline:stats:*", count=500):
            await self.redis.delete(key)


async def read(redis: aioredis.Redis, tenant_id: uuid.UUID) -> dict[str, Any]:
    raw, cursor = await asyncio.gather(redis.hgetall(stats_key(tenant_id)), redis.get(CURSOR_KEY))
    messages: dict[str, int] = {}
    calls: dict[str, int] = {}
    pools: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        key, value = k.decode(), int(v)
        group, _, rest = key.partition(":")
        if group == "messages":
            messages[rest] = value
        elif group == "calls":
            calls[rest] = value
        elif group == "pools":
            name, _, attr = rest.rpartition(":")
            pools.setdefault(name, {"in_use": 0})[attr] = value
    return {
        "messages": dict(sorted(messages.items())),
        "calls": dict(sorted(calls.items())),
        "pools": dict(sorted(pools.items())),
        "as_of_event_id": int(cursor) if cursor else 0,
    }
