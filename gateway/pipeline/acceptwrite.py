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

The batch travels as one JSON parameter that PostgreSQL unpacks (`json_to_recordset`):
the rows are dicts already, and one orjson call encodes them, where forty-odd typed array
parameters cost asyncpg's encoder ~40 µs of the API's CPU per message (a request's whole
budget is ~400).

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
from gateway.messages.repo import INSERT_COLUMNS
from gateway.queue import NOTIFY_CHANNEL as JOBS_CHANNEL

# The message rows' keys (repo.INSERT_COLUMNS) as json_to_recordset columns, and the
# messages table's names for them.
_ROW_TYPES = ", ".join(f'"{name}" {kind}' for name, kind in INSERT_COLUMNS)
_ROW_KEYS = ", ".join(f'"{name}"' for name, _ in INSERT_COLUMNS)
_COLS = """id, tenant_id, direction, channel, to_number, from_number, body, template, purpose,
           status, provider, provider_message_id, encoding, segments, send_at, trace_id,
           metadata, error_code, error_detail, recipient_state, subject, html"""
_VALUES = _ROW_KEYS.replace('"metadata"', 'coalesce("metadata", \'{}\') AS "metadata"')

WRITE = f"""
WITH w AS (
    SELECT {_VALUES}, j.job, j.delay, w.i
    FROM ROWS FROM (json_to_recordset($1::json) AS ({_ROW_TYPES}))
         WITH ORDINALITY AS w({_ROW_KEYS}, i)
    JOIN ROWS FROM (json_to_recordset($2::json) AS (job bool, delay float8))
         WITH ORDINALITY AS j(job, delay, i) USING (i)
), c AS (
    SELECT * FROM json_to_recordset($3::json)
           AS c(i int8, tenant_id uuid, key text, method text, path text, request_hash text,
                owner uuid, status int, body jsonb, stamped bool)
), at AS (
    SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN date_part('microseconds', now())::int % 1000000 = 0 THEN ''
                   ELSE to_char(now() AT TIME ZONE 'UTC', '.US') END || 'Z' AS at
), claimed AS (
    INSERT INTO idempotency_keys AS k (tenant_id, key, method, path, request_hash, owner,
                                       response_status, response_body)
    SELECT c.tenant_id, c.key, c.method, c.path, decode(c.request_hash, 'hex'), c.owner,
           c.status,
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
    SELECT {_ROW_KEYS} FROM mine
), ev AS (
    INSERT INTO events (tenant_id, type, subject, trace_id, data)
    SELECT e.tenant_id, e.type, e.subject, e.trace_id, e.data
    FROM ROWS FROM (json_to_recordset($4::json)
                    AS (i int8, tenant_id uuid, type text, subject text, trace_id text,
                        data jsonb))
         WITH ORDINALITY AS e(i, tenant_id, type, subject, trace_id, data, n)
    WHERE e.i IN (SELECT i FROM mine)
    ORDER BY e.n
    RETURNING 1
), job AS (
    INSERT INTO jobs (queue, tenant_id, payload, max_attempts, trace_id, run_at)
    SELECT $5, tenant_id, jsonb_build_object('message_id', id::text), $6, trace_id,
           coalesce(now() + make_interval(secs => greatest(delay, 0)), now())
    FROM mine WHERE job
    ORDER BY i
)
SELECT ARRAY(SELECT i FROM mine) AS written, (SELECT at FROM at) AS at,
       CASE WHEN EXISTS (SELECT FROM ev) THEN pg_notify('{EVENTS_CHANNEL}', '') IS NULL END
           AS woke_events,
       CASE WHEN EXISTS (SELECT FROM mine WHERE job) THEN pg_notify('{JOBS_CHANNEL}', $5)
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
    batch = {  # four parameters: PostgreSQL parses a json value once per reference to it
        "m": rows,  # keyed as repo.INSERT_COLUMNS; other keys are ignored, missing ones NULL
        "j": [{"job": job, "delay": delay} for job, delay in zip(jobs, delays, strict=True)],
        "c": [
            {
                "i": i,
                "tenant_id": c.tenant_id,
                "key": c.key,
                "method": c.method,
                "path": c.path,
                "request_hash": c.digest.hex(),
                "owner": c.owner,
                "status": status,
                "body": body,
                "stamped": stamped,
            }
            for i, (c, status, body, stamped) in (
                (i, claim) for i, claim in enumerate(claims, 1) if claim is not None
            )
        ],
        "e": [
            {
                "i": i,
                "tenant_id": e.tenant_id,
                "type": e.type,
                "subject": e.subject,
                "trace_id": e.trace_id,
                "data": e.data,
            }
            for i, es in enumerate(events, 1)
            for e in es
        ],
    }
    result = await conn.fetchrow(WRITE, *batch.values(), queue, max_attempts)
    return {i - 1 for i in result["written"]}, result["at"]
