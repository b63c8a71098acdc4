"""Reading the event log (SQL only).

Only sequenced rows are ever read: the sequencer makes a seq visible only
after every lower seq has committed, so `seq > N ORDER BY seq` is a gap-free
continuation of whatever a reader saw up to N.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.events.model import COLUMNS, TypeFilter

Db = asyncpg.Pool | asyncpg.Connection


async def tenant_page(
    db: Db, tenant_id: uuid.UUID, after: int, limit: int, types: TypeFilter
) -> list[asyncpg.Record]:
    """The tenant's events with seq > after, in seq order."""
    return await db.fetch(
        f"""
        SELECT {COLUMNS} FROM events
        WHERE tenant_id = $1 AND seq > $2 AND ($4::text[] IS NULL OR type LIKE ANY ($4))
        ORDER BY seq LIMIT $3
        """,
        tenant_id,
        after,
        limit,
        types.like_patterns(),
    )


async def global_range(db: Db, after: int, before: int | None, limit: int) -> list[asyncpg.Record]:
    """Every tenant's events with after < seq < before (None: no upper bound), in seq order."""
    return await db.fetch(
        f"""
        SELECT {COLUMNS} FROM events
        WHERE seq > $1 AND ($2::bigint IS NULL OR seq < $2)
        ORDER BY seq LIMIT $3
        """,
        after,
        before,
        limit,
    )


async def global_candidates(
    db: Db,
    after: int,
    limit: int,
    where: str,
    *args: Any,
    data_of: Sequence[str] | None = None,
) -> tuple[int, int | None, list[asyncpg.Record]]:
    """Of the next `limit` events (`global_range`'s order, no upper bound), those the SQL
    condition `where` (over `b`, one event: seq, tenant_id, type, subject, created_at; its
    parameters from $4 on, `args`) may concern, with `data` only for the types in `data_of`
    (None: every type). Also how many events that span held and its last seq, for the
    reader's cursor: a subscriber that acts on few of the events does not transfer and
    decode all of them (every event is read by several subscribers)."""
    rows = await db.fetch(
        f"""
        WITH batch AS (
            SELECT seq, tenant_id, type, subject, trace_id, data, created_at FROM events
            WHERE seq > $1 ORDER BY seq LIMIT $2
        ), span AS (SELECT count(*) AS n, max(seq) AS last FROM batch)
        SELECT span.n AS span_n, span.last AS span_last, b.seq, b.tenant_id, b.type, b.subject,
               b.trace_id, CASE WHEN $3::text[] IS NULL OR b.type = ANY($3::text[])
                                THEN b.data END AS data, b.created_at
        FROM span LEFT JOIN batch b ON ({where})
        ORDER BY b.seq
        """,
        after,
        limit,
        None if data_of is None else list(data_of),
        *args,
    )
    if not rows:
        return 0, None, []
    return rows[0]["span_n"], rows[0]["span_last"], [r for r in rows if r["seq"] is not None]


async def max_seq(db: Db) -> int:
    return await db.fetchval("SELECT coalesce(max(seq), 0) FROM events")


async def pruned_through(db: Db) -> int:
    return await db.fetchval("SELECT pruned_through FROM event_retention") or 0


_RESUME = """
SELECT greatest(c.seq, coalesce((SELECT pruned_through FROM event_retention), 0))
FROM event_cursors c WHERE c.name = $1 FOR UPDATE OF c
"""


async def lock_cursor(conn: asyncpg.Connection, name: str) -> int:
    """A log-tailing subscriber's durable cursor (`event_cursors` row `name`), locked FOR
    UPDATE for the caller's transaction and moved past what retention pruned. One round trip
    once the row exists (a subscriber steps on every sequenced batch; its fixed round trips,
    not the events, were most of a step's cost); the row is created the first time."""
    seq = await conn.fetchval(_RESUME, name)
    if seq is None:
        await conn.execute(
            "INSERT INTO event_cursors (name, seq) VALUES ($1, 0) ON CONFLICT DO NOTHING", name
        )
        seq = await conn.fetchval(_RESUME, name)
    return seq


async def prune(db: asyncpg.Pool, older_than: float, batch: int) -> int:
    """Delete sequenced events older than `older_than` seconds, oldest seq first, in batches.

    Deleting by seq (up to the newest seq among expired rows) keeps the log a
    clean suffix: everything <= pruned_through is gone, everything above stays.
    """
    cutoff = await db.fetchval(
        "SELECT max(seq) FROM events WHERE created_at < now() - make_interval(secs => $1)",
        older_than,
    )
    if cutoff is None:
        return 0
    total = 0
    while True:
        async with db.acquire() as conn, conn.transaction():
            n = await conn.fetchval(
                """
                WITH doomed AS (
                    SELECT id, seq FROM events WHERE seq <= $1 ORDER BY seq LIMIT $2
                ), gone AS (
                    DELETE FROM events e USING doomed d WHERE e.id = d.id RETURNING e.seq
                ), mark AS (
                    UPDATE event_retention
                    SET pruned_through = greatest(pruned_through, (SELECT max(seq) FROM gone)),
                        pruned_at = now()
                    WHERE (SELECT count(*) FROM gone) > 0
                )
                SELECT count(*) FROM gone
                """,
                cutoff,
                batch,
            )
        total += n
        if n < batch:
            # Nothing at or below the cutoff is left; record it even if holes made it sparse.
            await db.execute(
                "UPDATE event_retention SET pruned_through = greatest(pruned_through, $1), pruned_at = now()",
                cutoff,
            )
            return total
