"""Write events in the same transaction as the state change they describe.

The row is inserted without a public sequence number; the sequencer assigns
one in commit order and publishes it. A NOTIFY sent once the transaction has
committed wakes the sequencer without polling.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.db import defer_wake

NOTIFY_CHANNEL = "trunkline_events"


@dataclass(frozen=True)
class NewEvent:
    tenant_id: uuid.UUID
    type: str
    subject: str
    trace_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


async def emit(conn: asyncpg.Connection, *events: NewEvent) -> None:
    """Append events inside the caller's transaction (asserted: an outbox write must be atomic)."""
    if not events:
        return
    if not conn.is_in_transaction():
        raise RuntimeError(
            "events must be emitted inside the transaction of the change they describe"
        )
    # One round trip for any number of events (and the wake-up, when the connection
    # cannot send it after commit: see gateway.db.Waker).
    notify = "" if defer_wake(conn, NOTIFY_CHANNEL) else f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
    await conn.execute(
        _INSERT.format(select=notify or "SELECT"),
        [e.tenant_id for e in events],
        [e.type for e in events],
        [e.subject for e in events],
        [e.trace_id for e in events],
        [e.data for e in events],  # ONE jsonb array (see _INSERT)
    )


# The events' data go as one JSON array, split by the server, not as a jsonb[]: asyncpg
# writes a jsonb[] as an array literal, escaping every quote of every document byte by
# byte (~5 µs of client CPU for a guardrail verdict's data, the most of an event's write);
# one array is one orjson call. `nullif`: a None still meets the column's NOT NULL.
_INSERT = """
WITH ins AS (
    INSERT INTO events (tenant_id, type, subject, trace_id, data)
    SELECT t, ty, s, tr, nullif(d, 'null')
    FROM ROWS FROM (unnest($1::uuid[]), unnest($2::text[]), unnest($3::text[]),
                    unnest($4::text[]), jsonb_array_elements($5::jsonb)) AS e(t, ty, s, tr, d)
)
{select}
"""
