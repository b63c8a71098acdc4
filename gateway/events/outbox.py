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
        f"""
        WITH ins AS (
            INSERT INTO events (tenant_id, type, subject, trace_id, data)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
        )
        {notify or "SELECT"}
        """,
        [e.tenant_id for e in events],
        [e.type for e in events],
        [e.subject for e in events],
        [e.trace_id for e in events],
        [e.data for e in events],
    )
