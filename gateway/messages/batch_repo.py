"""Set-based SQL for the dispatch and receipt paths: one statement for a batch of messages.

Each function takes a list and sends one statement for all of it (arrays through `unnest`),
so the round trips per batch, not per message, set the pace (issue 14). The caller owns the
transaction; the single-row functions in repo.py stay for the paths that are one row anyway.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.messages.states import forward_pairs
from gateway.queue import Attach

# What a dispatch reads of a message: the row, its last attempt, whether one was handed over.
_DISPATCH_COLUMNS = """
       m.id, m.tenant_id, m.channel, m.to_number, m.from_number, m.body, m.purpose, m.status,
       m.provider, m.trace_id, m.segments, m.encoding, m.metadata, m.recipient_state,
       m.subject, m.html,
       last.n AS last_n, last.provider AS last_provider, last.outcome AS last_outcome,
       last.attempt_key AS last_key,
       EXISTS (SELECT 1 FROM message_attempts x
               WHERE x.message_id = m.id AND x.outcome = 'accepted') AS handed_over
"""
_LAST_ATTEMPT = """
LEFT JOIN LATERAL (
    SELECT n, provider, outcome, attempt_key FROM message_attempts a
    WHERE a.message_id = m.id ORDER BY n DESC LIMIT 1) last ON true
"""
_LOAD = f"""
SELECT {_DISPATCH_COLUMNS}
FROM unnest($1::uuid[]) AS u(id)
JOIN messages m ON m.id = u.id
{_LAST_ATTEMPT}
"""
# The same, read by the dispatch queue's claim with each job (gateway/queue.Attach): a job
# whose payload names no message in canonical form attaches nulls (its handler loads it).
DISPATCH_ATTACH = Attach(
    select=_DISPATCH_COLUMNS,
    joins=f"""
LEFT JOIN messages m ON m.id = CASE
    WHEN claimed.payload->>'message_id'
         ~ '^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$'
    THEN (claimed.payload->>'message_id')::uuid END
{_LAST_ATTEMPT}
""",
)


async def messages_for_dispatch(
    conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, asyncpg.Record]:
    """The messages to dispatch with their last attempt and whether one was handed over."""
    return {r["id"]: r for r in await conn.fetch(_LOAD, list(ids))}


async def insert_attempts(
    conn: asyncpg.Connection, rows: Sequence[tuple[uuid.UUID, int, str, str]]
) -> None:
    """New attempts (message_id, n, attempt_key, provider); committed before any send."""
    if not rows:
        return
    ids, ns, keys, providers = (list(c) for c in zip(*rows, strict=True))
    await conn.execute(
        """
        INSERT INTO message_attempts (message_id, n, attempt_key, provider)
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[])
        """,
        ids,
        ns,
        keys,
        providers,
    )


async def lock_provider_refs(conn: asyncpg.Connection, refs: Sequence[tuple[str, str]]) -> None:
    """repo.lock_provider_ref for many refs, taken in one order (no deadlock between batches)."""
    if not refs:
        return
    await conn.execute(
        """
        SELECT pg_advisory_xact_lock(h) FROM (
            SELECT DISTINCT hashtextextended(r, 0) AS h FROM unnest($1::text[]) AS r
            ORDER BY 1 OFFSET 0) ordered
        """,
        [f"{p}:{ref}" for p, ref in refs],
    )


@dataclass(frozen=True)
class AttemptOutcome:
    """What one send came to: the attempt's row, and for an accepted send the message's."""

    message_id: uuid.UUID
    n: int
    outcome: str  # accepted | transient_error | permanent_error
    latency_ms: float
    error: str | None = None
    provider: str | None = None  # accepted: the provider that took it
    provider_message_id: str | None = None
    usage: tuple[uuid.UUID, str, str, int] | None = None  # tenant, channel, unit, quantity


_RECORD = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::float8[], $5::text[],
                         $6::text[], $7::text[])
        AS u(id, n, outcome, latency, error, provider, ref)
), attempts AS (
    UPDATE message_attempts a SET finished_at = now(), outcome = u.outcome,
                                  latency_ms = u.latency, error = u.error,
                                  provider_message_id = u.ref
    FROM u WHERE a.message_id = u.id AND a.n = u.n
), handed AS (
    UPDATE messages m SET provider = u.provider, provider_message_id = u.ref, updated_at = now()
    FROM u WHERE m.id = u.id AND u.ref IS NOT NULL
), usage AS (
    INSERT INTO usage_records (tenant_id, subject, channel, unit, quantity, provider)
    SELECT * FROM unnest($8::uuid[], $9::text[], $10::text[], $11::text[], $12::int[], $13::text[])
    ON CONFLICT (subject, unit) DO NOTHING
), orphans AS (
    DELETE FROM orphan_receipts o USING u
    WHERE u.ref IS NOT NULL AND o.provider = u.provider AND o.provider_message_id = u.ref
    RETURNING u.id AS message_id, o.id, o.status, o.error_code
)
SELECT message_id, status, error_code FROM orphans ORDER BY id
"""


async def record_outcomes(
    conn: asyncpg.Connection, outcomes: Sequence[AttemptOutcome]
) -> list[asyncpg.Record]:
    """Close the attempts; for accepted sends store the provider's id and the usage, and take
    the receipts that arrived before it (orphans, returned oldest first). Hold the refs'
    locks first (lock_provider_refs): a receipt then either parked before or finds the id."""
    usage = [(o, o.usage) for o in outcomes if o.usage is not None]
    return await conn.fetch(
        _RECORD,
        [o.message_id for o in outcomes],
        [o.n for o in outcomes],
        [o.outcome for o in outcomes],
        [o.latency_ms for o in outcomes],
        [o.error for o in outcomes],
        [o.provider for o in outcomes],
        [o.provider_message_id for o in outcomes],
        [u[0] for _, u in usage],
        [str(o.message_id) for o, _ in usage],
        [u[1] for _, u in usage],
        [u[2] for _, u in usage],
        [u[3] for _, u in usage],
        [o.provider for o, _ in usage],
    )


async def messages_by_provider_refs(
    conn: asyncpg.Connection, refs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], asyncpg.Record]:
    rows = await conn.fetch(
        """
        SELECT m.id, m.tenant_id, m.status, m.trace_id, m.provider, m.provider_message_id
        FROM unnest($1::text[], $2::text[]) AS r(provider, ref)
        JOIN messages m ON m.provider = r.provider AND m.provider_message_id = r.ref
        """,
        [p for p, _ in refs],
        [r for _, r in refs],
    )
    return {(r["provider"], r["provider_message_id"]): r for r in rows}


_FROM, _TO = forward_pairs()
_MOVE = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $6::text[])
        WITH ORDINALITY AS u(id, new, err, detail, i)
), moved AS (
    UPDATE messages m SET status = u.new, updated_at = now(),
                          error_code = coalesce(u.err, m.error_code),
                          error_detail = coalesce(u.detail, m.error_detail)
    FROM u
    WHERE m.id = u.id
      AND (m.status, u.new) IN (SELECT * FROM unnest($4::text[], $5::text[]))
    RETURNING m.id
)
SELECT u.id, moved.id IS NOT NULL AS moved, m.status AS current
FROM u JOIN messages m ON m.id = u.id LEFT JOIN moved ON moved.id = u.id
ORDER BY u.i
"""


async def move_statuses(
    conn: asyncpg.Connection, moves: Sequence[tuple[uuid.UUID, str, str | None, str | None]]
) -> list[tuple[bool, str]]:
    """Compare-and-set forward moves (message_id, new status, error code, error detail), at
    most one per message: for each, whether it moved, and the status it kept if it did not."""
    if not moves:
        return []
    rows = await conn.fetch(
        _MOVE,
        [m[0] for m in moves],
        [m[1] for m in moves],
        [m[2] for m in moves],
        _FROM,
        _TO,
        [m[3] for m in moves],
    )
    return [(r["moved"], r["current"]) for r in rows]


async def park_orphan_receipts(conn: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO orphan_receipts (provider, provider_message_id, status, error_code, raw)
        SELECT p, ref, st, code, nullif(raw, 'null')
        FROM ROWS FROM (unnest($1::text[]), unnest($2::text[]), unnest($3::text[]),
                        unnest($4::text[]), jsonb_array_elements($5::jsonb))
             AS r(p, ref, st, code, raw)
        """,
        [r["provider"] for r in rows],
        [r["provider_message_id"] for r in rows],
        [r["status"] for r in rows],
        [r["error_code"] for r in rows],
        [r["raw"] for r in rows],  # one jsonb array, not a jsonb[] (see events.outbox)
    )
