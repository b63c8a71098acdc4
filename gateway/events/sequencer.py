"""The sequencer: gives committed events their public, commit-ordered `seq`.

Why: `events.id` is a bigserial taken at INSERT time, and transactions commit
in any order, so a reader that has seen id 42 may later find id 41 appear. A
resume cursor over `id` silently loses events. Instead, writers insert with
`seq` NULL, and exactly one sequencer at a time (a session advisory lock; every
worker process runs one, only the lock holder works) numbers the committed,
unnumbered rows from `event_seq`, in insertion order, one batch per
transaction. A seq becomes visible only when its batch commits, and batches
commit one after another, so once any reader can see seq N every seq below N
is already visible: `seq > N` never misses anything.

The lock and the numbering share one connection: if that session dies, its
open transaction dies with it, so two sequencers can never interleave.

After each commit the batch is published on Redis (per-tenant channels) and a
NOTIFY on `trunkline_events_sequenced` wakes the log-tailing subscribers
(webhook fan-out, stats). Publishing failures lose nothing: the log is the
truth and every subscriber fills gaps from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import redis.asyncio as aioredis

from gateway import db
from gateway.events import bus
from gateway.events.model import COLUMNS
from gateway.events.outbox import NOTIFY_CHANNEL
from gateway.events.wake import Wakeup, sleep_until
from gateway.logs import get_logger

log = get_logger(__name__)

LOCK_KEY = 0x74726B5F736571  # "trk_seq"
SEQUENCED_CHANNEL = "trunkline_events_sequenced"

Publisher = Callable[[Sequence[asyncpg.Record]], Awaitable[None]]


# The log's columns, the data as its text: published as it is (bus.publish), not decoded.
_RETURNED = [
    "e.data::text AS data_json" if c.strip() == "data" else "e." + c.strip()
    for c in COLUMNS.split(",")
]
_ASSIGN = f"""
WITH batch AS (
    SELECT id, row_number() OVER (ORDER BY id) AS rn
    FROM (SELECT id FROM events WHERE seq IS NULL ORDER BY id LIMIT $1 FOR UPDATE) unsequenced
), block AS (  -- one contiguous block of seqs for the batch (only the lock holder draws from it)
    SELECT CASE WHEN count(*) > 0
                THEN setval('event_seq', nextval('event_seq') + count(*) - 1) - count(*) END AS base
    FROM batch
), numbered AS (
    UPDATE events e SET seq = block.base + batch.rn
    FROM batch, block
    WHERE e.id = batch.id
    RETURNING {", ".join(_RETURNED)}
)
SELECT numbered.*, pg_notify('{SEQUENCED_CHANNEL}', '') IS NULL AS notified
FROM numbered ORDER BY seq
"""


async def assign_batch(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Number up to `limit` committed unsequenced events in insertion order (hold LOCK_KEY).

    One statement, so one round trip and its own transaction: it commits (and its NOTIFY
    to the log-tailing subscribers goes out) before the rows are returned.
    """
    return await conn.fetch(_ASSIGN, limit)


class Sequencer:
    def __init__(
        self,
        database_url: str,
        redis: aioredis.Redis,
        *,
        batch: int = 1000,
        interval: float = 1.0,
        publish: Publisher | None = None,
    ) -> None:
        self.database_url = database_url
        self.redis = redis
        self.batch = batch
        self.interval = interval
        self.publish = publish or (lambda rows: bus.publish(self.redis, rows))
        self.leader = False
        self.sequenced = 0

    async def run(self, stopping: asyncio.Event) -> None:
        conn = await db.connect(self.database_url)
        try:
            while not stopping.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    break
                await sleep_until(stopping, None, self.interval)  # standby: another holds it
            else:
                return
            self.leader = True
            log.info("event sequencer is the leader")
            wake = Wakeup(conn, NOTIFY_CHANNEL)
            await wake.listen()
            while not stopping.is_set():
                wake.clear()
                n = await self.step(conn)
                if n >= self.batch:
                    continue  # more may be waiting
                await wake.wait(stopping, self.interval)
        finally:
            self.leader = False
            await conn.close()  # ends the session: releases the lock

    async def step(self, conn: asyncpg.Connection) -> int:
        rows = await assign_batch(conn, self.batch)
        if rows:
            self.sequenced += len(rows)
            try:
                await self.publish(rows)
            except Exception as exc:  # the log has them; subscribers fill the gap
                log.warning(
                    "publishing sequenced events failed", error=repr(exc), last_seq=rows[-1]["seq"]
                )
        return len(rows)
