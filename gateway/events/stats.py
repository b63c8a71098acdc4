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


# What counting needs of the next events (log.global_range's order and bound): a string
# `data.status` and a pool event's data, not every event's whole data decoded.
_COUNTED = """
SELECT seq, tenant_id, type,
       CASE WHEN jsonb_typeof(data->'status') = 'string' THEN data->>'status' END AS status,
       CASE WHEN type LIKE 'pool.%' THEN data END AS data
FROM events
WHERE seq > $1
ORDER BY seq LIMIT $2
"""


def _changes(rows: Sequence[asyncpg.Record]) -> dict[str, dict[str, tuple[str, int]]]:
    """tenant -> field -> (op, value), folded over a batch in seq order (rows as `_COUNTED`
    reads them: `status`, the string `data.status` if any; `data` for pool events)."""
    out: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    for row in rows:
        kind, _, rest = row["type"].partition(".")
        data: dict[str, Any] = row["data"] or {}
        fields = out[str(row["tenant_id"])]
        if kind in ("message", "call"):
            status = row["status"] if row["status"] is not None else rest
            field = f"{kind}s:{status}"
            _, n = fields.get(field, ("i", 0))
            fields[field] = ("i", n + 1)
        elif kind == "pool" and isinstance(data.get("pool"), str):
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
        if not rows:
            if raw and cursor > max(
                await log.max_seq(self.pool), await log.pruned_through(self.pool)
            ):
                await self.reset()  # the cursor belongs to another log (a restored database?)
            return 0
        changes = _changes(rows)
        keys = [CURSOR_KEY]
        args: list[str | int] = [raw.decode() if raw else "0", rows[-1]["seq"]]
        for tenant, fields in changes.items():
            keys.append(stats_key(tenant))
            for field, (op, value) in fields.items():
                args += [len(keys), op, field, value]
        await _APPLY(self.redis, keys, args)  # 0 = another aggregator moved first: re-read
        return len(rows)

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
