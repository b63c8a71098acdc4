"""SQL for the Stripe export: planning batches of usage, their meter events, what was exported.

The per-row cursor (`usage_records.export_batch`) and why it is not an id cursor: see
migrations/0023_stripe_billing.sql.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway.billing.plan import MeterEvent, UsageRow

Conn = asyncpg.Connection | asyncpg.Pool

# Stripe takes events up to 35 calendar days old; a day is kept for a batch that waits out an
# outage. Older usage is not exported: it would be refused, or billed in the wrong period.
_EXPORTABLE = "u.recorded_at >= greatest(coalesce($START::timestamptz, '-infinity'), now() - interval '34 days')"


def _exportable(param: int) -> str:
    return _EXPORTABLE.replace("$START", f"${param}")


async def open_batch(conn: Conn) -> asyncpg.Record | None:
    """The oldest batch planned and not yet acknowledged (a crash or a failed send left it)."""
    return await conn.fetchrow(
        "SELECT id, attempts FROM billing_export_batches WHERE sent_at IS NULL ORDER BY id LIMIT 1"
    )


async def pending_usage(
    conn: asyncpg.Connection, units: list[str], start_at: datetime | None, limit: int
) -> list[UsageRow]:
    """Up to `limit` committed usage rows not yet in a batch, of tenants with a Stripe customer
    and units with a meter, still exportable; locked until the transaction ends."""
    rows = await conn.fetch(
        f"""
        SELECT u.id, u.tenant_id, u.unit, u.quantity, u.recorded_at, t.stripe_customer_id
        FROM usage_records u JOIN tenants t ON t.id = u.tenant_id
        WHERE u.export_batch IS NULL AND t.stripe_customer_id IS NOT NULL
          AND u.unit = ANY($1::text[]) AND {_exportable(2)}
        ORDER BY u.id
        LIMIT $3
        FOR UPDATE OF u SKIP LOCKED
        """,
        units,
        start_at,
        limit,
    )
    return [UsageRow(**dict(r)) for r in rows]


async def insert_batch(
    conn: asyncpg.Connection, rows: list[UsageRow], events: list[MeterEvent]
) -> int:
    """Record a batch: its meter events and the rows it carries (call inside a transaction)."""
    batch_id: int = await conn.fetchval(
        "INSERT INTO billing_export_batches (records, events) VALUES ($1, $2) RETURNING id",
        len(rows),
        len(events),
    )
    await conn.execute(
        """
        INSERT INTO billing_meter_events
            (identifier, batch_id, tenant_id, unit, event_name, stripe_customer_id, value,
             occurred_at)
        SELECT e.identifier, $1, e.tenant_id, e.unit, e.event_name, e.customer, e.value, e.at
        FROM unnest($2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                    $8::timestamptz[]) AS e (identifier, tenant_id, unit, event_name, customer,
                                              value, at)
        """,
        batch_id,
        [e.identifier for e in events],
        [e.tenant_id for e in events],
        [e.unit for e in events],
        [e.event_name for e in events],
        [e.stripe_customer_id for e in events],
        [e.value for e in events],
        [e.occurred_at for e in events],
    )
    updated = await conn.execute(
        "UPDATE usage_records SET export_batch = $1 WHERE id = ANY($2::bigint[]) "
        "AND export_batch IS NULL",
        batch_id,
        [r.id for r in rows],
    )
    if updated != f"UPDATE {len(rows)}":  # the rows are locked: only a bug gets here
        raise RuntimeError(f"batch {batch_id}: {updated} of {len(rows)} usage rows")
    return batch_id


async def batch_events(conn: Conn, batch_id: int) -> list[MeterEvent]:
    rows = await conn.fetch(
        """
        SELECT identifier, tenant_id, unit, event_name, stripe_customer_id, value, occurred_at
        FROM billing_meter_events WHERE batch_id = $1 ORDER BY identifier
        """,
        batch_id,
    )
    return [MeterEvent(**dict(r)) for r in rows]


async def mark_sent(conn: Conn, batch_id: int) -> None:
    await conn.execute(
        "UPDATE billing_export_batches SET sent_at = now(), last_error = NULL WHERE id = $1",
        batch_id,
    )


async def mark_failed(conn: Conn, batch_id: int, error: str) -> int:
    """Count a failed send of the batch; returns its failed sends so far."""
    return await conn.fetchval(
        """
        UPDATE billing_export_batches SET attempts = attempts + 1, last_error = left($2, 500)
        WHERE id = $1 RETURNING attempts
        """,
        batch_id,
        error,
    )


async def set_customer(conn: Conn, tenant: str, customer_id: str | None) -> bool:
    result = await conn.execute(
        "UPDATE tenants SET stripe_customer_id = $2 WHERE name = $1", tenant, customer_id
    )
    return result == "UPDATE 1"


async def tenant_export(
    conn: Conn, tenant_id: uuid.UUID, units: list[str], start_at: datetime | None
) -> dict[str, Any]:
    """The tenant's customer id, the last acknowledged export, and `exported_through`: every
    exportable usage row recorded at or before it has reached Stripe (None: none has yet).

    Exportable: a unit with a meter, recorded after `start_at` and within Stripe's 35 days."""
    row = await conn.fetchrow(
        f"""
        WITH pending AS (
            SELECT min(u.recorded_at) AS oldest
            FROM usage_records u LEFT JOIN billing_export_batches b ON b.id = u.export_batch
            WHERE u.tenant_id = $1 AND u.unit = ANY($2::text[]) AND {_exportable(3)}
              AND (u.export_batch IS NULL OR b.sent_at IS NULL)
        )
        SELECT t.stripe_customer_id,
               (SELECT max(b.sent_at)
                FROM billing_meter_events e JOIN billing_export_batches b ON b.id = e.batch_id
                WHERE e.tenant_id = $1) AS last_export_at,
               (SELECT max(u.recorded_at)
                FROM usage_records u JOIN billing_export_batches b ON b.id = u.export_batch
                WHERE u.tenant_id = $1 AND b.sent_at IS NOT NULL
                  AND (pending.oldest IS NULL OR u.recorded_at < pending.oldest))
                   AS exported_through
        FROM tenants t, pending
        WHERE t.id = $1
        """,
        tenant_id,
        units,
        start_at,
    )
    return dict(row) if row is not None else {}


async def backlog(conn: Conn) -> asyncpg.Record:
    """Operator figures: batches waiting to be acknowledged, their failed sends, the last error."""
    return await conn.fetchrow(
        """
        SELECT count(*) AS unsent, coalesce(sum(attempts), 0)::bigint AS failed_sends,
               (array_agg(last_error ORDER BY id DESC) FILTER (WHERE last_error IS NOT NULL))[1]
                   AS last_error,
               (SELECT max(sent_at) FROM billing_export_batches) AS last_sent_at
        FROM billing_export_batches WHERE sent_at IS NULL
        """
    )
