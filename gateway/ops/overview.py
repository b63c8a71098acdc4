"""The operator's figures, read where they are true: `trunkline status` and /metrics share them.

Each function is one query (PostgreSQL) or one round trip (Redis) however much traffic there
is, so a Prometheus scrape or a status call stays cheap: queue depth is a GROUP BY over the
jobs table (done jobs are deleted, so it holds only work in flight and dead letters), the
event log head is an index probe, breaker state and AMI leaders are a pipelined read of a few
keys. Nothing here changes state — a breaker is read raw rather than through its snapshot
script, which may move it from open to half-open and would have to record that transition.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from gateway.settings import Settings


@dataclass(frozen=True)
class QueueFigures:
    queue: str
    ready: int  # waiting, due or scheduled later (a retry's backoff, a deferral)
    due: int  # ready and due now: what workers should be taking
    running: int
    dead: int
    retrying: int  # not dead, attempted at least once
    attempts: int  # attempts spent by the jobs in flight
    oldest_due_s: float  # how long the oldest due job has waited (0 when none)


async def queues(
    db: asyncpg.Pool | asyncpg.Connection, tenant_id: uuid.UUID | None = None
) -> list[QueueFigures]:
    """Each queue's figures: every tenant's jobs, or only `tenant_id`'s."""
    rows = await db.fetch(
        """
        SELECT queue,
               count(*) FILTER (WHERE state = 'ready') AS ready,
               count(*) FILTER (WHERE state = 'ready' AND run_at <= now()) AS due,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE state = 'dead') AS dead,
               count(*) FILTER (WHERE state <> 'dead' AND attempts > 0) AS retrying,
               coalesce(sum(attempts) FILTER (WHERE state <> 'dead'), 0) AS attempts,
               coalesce(extract(epoch FROM now() - min(run_at)
                        FILTER (WHERE state = 'ready' AND run_at <= now())), 0)::float8
                   AS oldest_due_s
        FROM jobs WHERE ($1::uuid IS NULL OR tenant_id = $1)
        GROUP BY queue ORDER BY queue
        """,
        tenant_id,
    )
    return [QueueFigures(**dict(r)) for r in rows]


@dataclass(frozen=True)
class EventLog:
    head: int  # the last public seq
    unsequenced: int  # committed events not given a seq yet (the sequencer's backlog)
    pruned_through: int  # retention: resume points at or below this get `event: reset`
    cursors: dict[str, int]  # durable subscribers (the webhook fan-out) and their seq


async def event_log(db: asyncpg.Pool | asyncpg.Connection) -> EventLog:
    row = await db.fetchrow(
        """
        SELECT coalesce((SELECT max(seq) FROM events), 0) AS head,
               (SELECT count(*) FROM events WHERE seq IS NULL) AS unsequenced,
               coalesce((SELECT pruned_through FROM event_retention), 0) AS pruned_through,
               coalesce((SELECT jsonb_object_agg(name, seq) FROM event_cursors), '{}') AS cursors
        """
    )
    cursors = row["cursors"]
    if isinstance(cursors, str):  # a pool without the jsonb codec
        cursors = json.loads(cursors)
    return EventLog(row["head"], row["unsequenced"], row["pruned_through"], dict(cursors))


@dataclass(frozen=True)
class DeliveryFigures:
    endpoint_status: str  # enabled | disabled
    status: str  # pending | succeeded | failed
    count: int
    oldest_pending_s: float


async def webhook_deliveries(db: asyncpg.Pool | asyncpg.Connection) -> list[DeliveryFigures]:
    """Deliveries kept (retention prunes finished ones) by state and endpoint state; the age
    of the oldest pending one is the delivery lag a customer sees."""
    rows = await db.fetch(
        """
        SELECT e.status AS endpoint_status, d.status, count(*) AS count,
               coalesce(extract(epoch FROM now() - min(d.created_at)
                        FILTER (WHERE d.status = 'pending')), 0)::float8 AS oldest_pending_s
        FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    )
    return [DeliveryFigures(**dict(r)) for r in rows]


def provider_names(settings: Settings) -> list[str]:
    """The providers the configuration turns on: each has a breaker of that name."""
    names = []
    if settings.providers.sandbox.enabled:
        names.append("sandbox")
    if settings.providers.twilio.enabled:
        names.append("twilio")
    names += [f"asterisk:{name}" for name in settings.asterisk]
    return names


@dataclass(frozen=True)
class BreakerState:
    provider: str
    state: str  # closed | open | half_open (an open one whose period ran out shows open)
    opened_at: datetime | None


async def breakers(redis: aioredis.Redis, names: list[str]) -> list[BreakerState]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(f"tl:breaker:{{{name}}}:state", "state", "opened_at")
        replies = await pipe.execute()
    out = []
    for name, (state, opened) in zip(names, replies, strict=True):
        state = state.decode() if isinstance(state, bytes) else state
        at = int(opened) if opened else 0
        out.append(
            BreakerState(
                name,
                state or "closed",
                datetime.fromtimestamp(at / 1000, UTC) if at and state != "closed" else None,
            )
        )
    return out


@dataclass(frozen=True)
class AmiLeader:
    asterisk: str
    holder: str | None  # the worker whose tracker turns this Asterisk's events into call state
    ttl_s: float | None


async def ami_leaders(redis: aioredis.Redis, asterisks: list[str]) -> list[AmiLeader]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in asterisks:
            key = f"tl:ami:{{{name}}}:tracker"
            pipe.get(key)
            pipe.pttl(key)
        replies = await pipe.execute()
    out = []
    for i, name in enumerate(asterisks):
        holder, ttl = replies[2 * i], replies[2 * i + 1]
        if isinstance(holder, bytes):
            holder = holder.decode()
        out.append(AmiLeader(name, holder, ttl / 1000 if holder and ttl and ttl > 0 else None))
    return out
