"""A batch of accepted messages written by one statement, committed on its own.

The group commit used to send BEGIN, the key claims, the messages, their events, their
jobs, the keys' answers and COMMIT: seven round trips a batch, each paid in the API's CPU
and PostgreSQL's. Here one data-modifying statement does all of it, as its own
transaction: it claims the batch's keys and stores their answers in the same row write,
and writes a message (its events, its dispatch job) only where its key was taken, or
where it has none. A key it could not take writes nothing of its request (the caller
looks up the stored answer, see groupcommit.py).

A 201's body carries the message's `created_at`/`updated_at`: PostgreSQL's `now()`, the
statement's (and so the rows') own timestamp, which the caller cannot know in advance.
The statement sets them into the stored answer and returns them, formatted as the API
formats them (pydantic: `…THH:MM:SS[.ffffff]Z`), so the answer, its replays and a later
GET agree to the character.

The wake-ups (the event sequencer's, the dispatch workers') are `pg_notify` calls in the
statement itself, so they are sent when it commits, with no round trip of their own. A
commit that carries NOTIFY holds PostgreSQL's notify lock across its WAL flush (see
gateway.db.Waker), which serializes such commits; here that is one commit per batch (at
most two batches in flight per process), while the Waker's own NOTIFY was a commit and
flush of its own after every batch anyway.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.events.outbox import NOTIFY_CHANNEL as EVENTS_CHANNEL
from gateway.events.outbox import NewEvent
from gateway.http import idempotency
from gateway.messages.repo import INSERT_COLUMNS, MESSAGE_DEFAULTS
from gateway.queue import NOTIFY_CHANNEL as JOBS_CHANNEL

_N = len(INSERT_COLUMNS)
_W = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(INSERT_COLUMNS, 1))
_COLS = """id, tenant_id, direction, channel, to_number, from_number, body, template, purpose,
           status, provider, provider_message_id, encoding, segments, send_at, trace_id,
           metadata, error_code, error_detail, recipient_state, subject, html"""


def _p(k: int) -> str:
    return f"${_N + k}"


WRITE = f"""
WITH w AS (
    SELECT * FROM unnest({_W}, {_p(1)}::bool[], {_p(2)}::float8[])
           WITH ORDINALITY AS w({_COLS}, job, delay, i)
), c AS (
    SELECT * FROM unnest({_p(3)}::int8[], {_p(4)}::uuid[], {_p(5)}::text[], {_p(6)}::text[],
                         {_p(7)}::text[], {_p(8)}::bytea[], {_p(9)}::uuid[], {_p(10)}::int[],
                         {_p(11)}::jsonb[], {_p(12)}::bool[])
           AS c(i, tenant_id, key, method, path, request_hash, owner, status, body, stamped)
), at AS (
    SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN date_part('microseconds', now())::int % 1000000 = 0 THEN ''
                   ELSE to_char(now() AT TIME ZONE 'UTC', '.US') END || 'Z' AS at
), claimed AS (
    INSERT INTO idempotency_keys AS k (tenant_id, key, method, path, request_hash, owner,
                                       response_status, response_body)
    SELECT c.tenant_id, c.key, c.method, c.path, c.request_hash, c.owner, c.status,
           CASE WHEN c.stamped
                THEN c.body || jsonb_build_object('created_at', at.at, 'updated_at', at.at)
                ELSE c.body END
    FROM c, at
    ORDER BY 1, 2
    ON CONFLICT (tenant_id, key) DO UPDATE
        SET method = EXCLUDED.method, path = EXCLUDED.path,
            request_hash = EXCLUDED.request_hash, owner = EXCLUDED.owner, locked_until = NULL,
            response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,
            created_at = CASE WHEN k.expires_at < now() THEN now() ELSE k.created_at END,
            expires_at = CASE WHEN k.expires_at < now()
                              THEN now() + interval '24 hours' ELSE k.expires_at END
        WHERE k.expires_at < now() OR (k.owner = EXCLUDED.owner AND k.response_status IS NULL)
    RETURNING tenant_id, key
), mine AS (
    SELECT w.* FROM w WHERE w.i NOT IN (SELECT i FROM c)
    UNION ALL
    SELECT w.* FROM w JOIN c ON c.i = w.i
    JOIN claimed k ON k.tenant_id = c.tenant_id AND k.key = c.key
), msg AS (
    INSERT INTO messages ({_COLS})
    SELECT {_COLS} FROM mine
), ev AS (
    INSERT INTO events (tenant_id, type, subject, trace_id, data)
    SELECT e.tenant_id, e.type, e.subject, e.trace_id, e.data
    FROM unnest({_p(13)}::int8[], {_p(14)}::uuid[], {_p(15)}::text[], {_p(16)}::text[],
                {_p(17)}::text[], {_p(18)}::jsonb[])
         WITH ORDINALITY AS e(i, tenant_id, type, subject, trace_id, data, n)
    WHERE e.i IN (SELECT i FROM mine)
    ORDER BY e.n
    RETURNING 1
), job AS (
    INSERT INTO jobs (queue, tenant_id, payload, max_attempts, trace_id, run_at)
    SELECT {_p(19)}, tenant_id, jsonb_build_object('message_id', id::text), {_p(20)}, trace_id,
           coalesce(now() + make_interval(secs => greatest(delay, 0)), now())
    FROM mine WHERE job
    ORDER BY i
)
SELECT ARRAY(SELECT i FROM mine) AS written, (SELECT at FROM at) AS at,
       CASE WHEN EXISTS (SELECT FROM ev) THEN pg_notify('{EVENTS_CHANNEL}', '') IS NULL END
           AS woke_events,
       CASE WHEN EXISTS (SELECT FROM mine WHERE job) THEN pg_notify('{JOBS_CHANNEL}', {_p(19)})
           IS NULL END AS woke_jobs
"""


async def write_batch(
    conn: asyncpg.Connection,
    rows: list[dict[str, Any]],
    *,
    jobs: list[bool],
    delays: list[float | None],
    claims: list[tuple[idempotency.Claim, int, dict[str, Any], bool] | None],
    events: list[list[NewEvent]],
    queue: str,
    max_attempts: int,
) -> tuple[set[int], str]:
    """Write rows[i] (its `events[i]`, a `queue` job where `jobs[i]`, due `delays[i]` s
    after now) where `claims[i]` is None or its key is taken for it; a claim is (claim,
    answer status, answer body, whether the body gets the timestamps). Returns the indexes
    written and the timestamp, formatted, that their rows and stored answers carry."""
    columns = [[row.get(n, MESSAGE_DEFAULTS.get(n)) for row in rows] for n, _ in INSERT_COLUMNS]
    keyed = [(i, c) for i, c in enumerate(claims) if c is not None]
    evs = [(i, e) for i, es in enumerate(events) for e in es]
    result = await conn.fetchrow(
        WRITE,
        *columns,
        jobs,
        delays,
        [i + 1 for i, _ in keyed],
        [c.tenant_id for _, (c, *_) in keyed],
        [c.key for _, (c, *_) in keyed],
        [c.method for _, (c, *_) in keyed],
        [c.path for _, (c, *_) in keyed],
        [c.digest for _, (c, *_) in keyed],
        [c.owner for _, (c, *_) in keyed],
        [status for _, (_, status, _, _) in keyed],
        [body for _, (_, _, body, _) in keyed],
        [stamped for _, (_, _, _, stamped) in keyed],
        [i + 1 for i, _ in evs],
        [e.tenant_id for _, e in evs],
        [e.type for _, e in evs],
        [e.subject for _, e in evs],
        [e.trace_id for _, e in evs],
        [e.data for _, e in evs],
        queue,
        max_attempts,
    )
    return {i - 1 for i in result["written"]}, result["at"]
