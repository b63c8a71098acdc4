"""Webhook SQL. Every query a caller can reach is filtered by tenant_id."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

Db = asyncpg.Pool | asyncpg.Connection

_ENDPOINT = "id, tenant_id, url, description, event_types, status, disabled_reason, created_at"
_DELIVERY = """id, tenant_id, endpoint_id, event_seq, event_type, trace_id, status, attempts, job_id,
    window_started, next_attempt_at, last_attempt_at, last_status_code, last_response, last_error,
    created_at, delivered_at"""


async def insert_endpoint(
    db: Db,
    *,
    endpoint_id: uuid.UUID,
    tenant_id: uuid.UUID,
    url: str,
    event_types: list[str],
    description: str,
    secret: str,
) -> asyncpg.Record:
    return await db.fetchrow(
        f"""
        INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, description, secret)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ENDPOINT}
        """,
        endpoint_id,
        tenant_id,
        url,
        event_types,
        description,
        secret,
    )


async def list_endpoints(
    db: Db, tenant_id: uuid.UUID, *, limit: int, after: tuple[Any, Any]
) -> list[asyncpg.Record]:
    """Oldest first on (created_at, id) after the cursor `after`, `limit` rows plus one."""
    return await db.fetch(
        f"""
        SELECT {_ENDPOINT} FROM webhook_endpoints
        WHERE tenant_id = $1 AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
        ORDER BY created_at, id LIMIT $2
        """,
        tenant_id,
        limit + 1,
        *after,
    )


async def get_endpoint(
    db: Db, tenant_id: uuid.UUID, endpoint_id: uuid.UUID
) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        endpoint_id,
    )


async def delete_endpoint(db: Db, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    status = await db.execute(
        "DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2", tenant_id, endpoint_id
    )
    return status == "DELETE 1"


async def enable_endpoint(
    db: Db, tenant_id: uuid.UUID, endpoint_id: uuid.UUID
) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"""
        UPDATE webhook_endpoints
        SET status = 'enabled', disabled_reason = NULL, consecutive_failures = 0,
            failing_since = NULL, updated_at = now()
        WHERE tenant_id = $1 AND id = $2 RETURNING {_ENDPOINT}
        """,
        tenant_id,
        endpoint_id,
    )


async def enabled_endpoints(db: Db, tenant_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Fan-out targets for the tenants of one batch of events."""
    return await db.fetch(
        """
        SELECT id, tenant_id, event_types, created_at FROM webhook_endpoints
        WHERE tenant_id = ANY($1::uuid[]) AND status = 'enabled'
        """,
        tenant_ids,
    )


async def insert_deliveries(
    conn: asyncpg.Connection, rows: list[tuple[Any, ...]]
) -> list[asyncpg.Record]:
    """(id, tenant_id, endpoint_id, event_seq, event_type, trace_id, payload); duplicates skipped."""
    if not rows:
        return []
    return await conn.fetch(
        """
        INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_seq, event_type, trace_id, payload)
        SELECT * FROM ROWS FROM (unnest($1::uuid[]), unnest($2::uuid[]), unnest($3::uuid[]),
                                 unnest($4::bigint[]), unnest($5::text[]), unnest($6::text[]),
                                 jsonb_array_elements($7::jsonb))
        ON CONFLICT (endpoint_id, event_seq) DO NOTHING
        RETURNING id, tenant_id, trace_id
        """,
        # the payloads as ONE jsonb array, not a jsonb[] (see gateway/events/outbox.py)
        *[list(col) for col in zip(*rows, strict=True)],
    )


async def set_delivery_job(
    conn: asyncpg.Connection, delivery_id: uuid.UUID, job_id: int, next_attempt_at: Any = None
) -> None:
    await conn.execute(
        """
        UPDATE webhook_deliveries SET job_id = $2, next_attempt_at = coalesce($3, now()), updated_at = now()
        WHERE id = $1
        """,
        delivery_id,
        job_id,
        next_attempt_at,
    )


async def set_delivery_jobs(
    conn: asyncpg.Connection, delivery_ids: list[uuid.UUID], job_ids: list[int]
) -> None:
    """Link fresh deliveries to their first jobs, pairwise, in one statement."""
    if not delivery_ids:
        return
    await conn.execute(
        """
        UPDATE webhook_deliveries d SET job_id = j.job_id, next_attempt_at = now(), updated_at = now()
        FROM unnest($1::uuid[], $2::bigint[]) AS j(id, job_id)
        WHERE d.id = j.id
        """,
        delivery_ids,
        job_ids,
    )


async def list_deliveries(
    db: Db,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    status: str | None,
    after: tuple[Any, Any],
) -> list[asyncpg.Record]:
    """Newest first on (created_at, id) after the cursor `after`, `limit` rows plus one."""
    return await db.fetch(
        f"""
        SELECT {_DELIVERY} FROM webhook_deliveries d
        WHERE tenant_id = $1 AND endpoint_id = $2 AND ($4::text IS NULL OR status = $4)
          AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::uuid))
        ORDER BY created_at DESC, id DESC LIMIT $3
        """,
        tenant_id,
        endpoint_id,
        limit + 1,
        status,
        *after,
    )


async def get_delivery(
    db: Db, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 AND id = $3",
        tenant_id,
        endpoint_id,
        delivery_id,
    )


async def restart_delivery(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, delivery_id: uuid.UUID, job_id: int
) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        UPDATE webhook_deliveries
        SET status = 'pending', job_id = $3, window_started = now(), next_attempt_at = now(),
            updated_at = now()
        WHERE tenant_id = $1 AND id = $2 RETURNING {_DELIVERY}
        """,
        tenant_id,
        delivery_id,
        job_id,
    )


# --- the delivery worker (by delivery id from its own job; tenant comes from the job) ----


async def delivery_for_attempt(
    conn: asyncpg.Connection, delivery_id: uuid.UUID
) -> asyncpg.Record | None:
    """Lock the delivery and read what an attempt needs (its endpoint's url, secret, status)."""
    return await conn.fetchrow(
        """
        SELECT d.id, d.tenant_id, d.endpoint_id, d.event_seq, d.event_type, d.trace_id, d.payload,
               d.status, d.attempts, d.job_id, d.window_started, e.url, e.secret,
               e.status AS endpoint_status
        FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.id = $1
        FOR UPDATE OF d
        """,
        delivery_id,
    )


async def record_attempt(
    conn: asyncpg.Connection,
    delivery_id: uuid.UUID,
    *,
    status: str,
    status_code: int | None,
    response: str | None,
    error: str | None,
    next_attempt_at: Any = None,
    job_id: int | None = None,
) -> None:
    await conn.execute(
        """
        UPDATE webhook_deliveries
        SET status = $2, attempts = attempts + 1, last_attempt_at = now(), last_status_code = $3,
            last_response = $4, last_error = $5, next_attempt_at = $6,
            job_id = coalesce($7, job_id), updated_at = now(),
            delivered_at = CASE WHEN $2 = 'succeeded' THEN now() ELSE delivered_at END
        WHERE id = $1
        """,
        delivery_id,
        status,
        status_code,
        response,
        error,
        next_attempt_at,
        job_id,
    )


async def endpoint_succeeded(conn: asyncpg.Connection, endpoint_id: uuid.UUID) -> None:
    await conn.execute(
        """
        UPDATE webhook_endpoints SET consecutive_failures = 0, failing_since = NULL, updated_at = now()
        WHERE id = $1 AND (consecutive_failures <> 0 OR failing_since IS NOT NULL)
        """,
        endpoint_id,
    )


async def endpoint_failed(
    conn: asyncpg.Connection, endpoint_id: uuid.UUID, disable_after: float, reason: str
) -> bool:
    """Count a failed attempt; True if it disabled the endpoint (failing for `disable_after` s)."""
    row = await conn.fetchrow(
        """
        WITH prev AS (SELECT id, status FROM webhook_endpoints WHERE id = $1 FOR UPDATE)
        UPDATE webhook_endpoints e
        SET consecutive_failures = consecutive_failures + 1,
            failing_since = coalesce(failing_since, now()),
            status = CASE WHEN coalesce(failing_since, now()) <= now() - make_interval(secs => $2)
                          THEN 'disabled' ELSE e.status END,
            disabled_reason = CASE WHEN e.status = 'enabled'
                                    AND coalesce(failing_since, now()) <= now() - make_interval(secs => $2)
                                   THEN $3 ELSE disabled_reason END,
            updated_at = now()
        FROM prev WHERE e.id = prev.id
        RETURNING prev.status AS was, e.status AS now
        """,
        endpoint_id,
        disable_after,
        reason,
    )
    return row is not None and row["was"] == "enabled" and row["now"] == "disabled"


async def mark_failed(conn: Db, delivery_id: uuid.UUID, error: str) -> None:
    await conn.execute(
        """
        UPDATE webhook_deliveries SET status = 'failed', last_error = $2, next_attempt_at = NULL,
                                      updated_at = now()
        WHERE id = $1 AND status = 'pending'
        """,
        delivery_id,
        error[:2000],
    )


async def prune_deliveries(db: asyncpg.Pool, older_than: float, batch: int = 5000) -> int:
    total = 0
    while True:
        status = await db.execute(
            """
            DELETE FROM webhook_deliveries WHERE id = ANY(ARRAY(
                SELECT id FROM webhook_deliveries
                WHERE status <> 'pending' AND updated_at < now() - make_interval(secs => $1)
                LIMIT $2))
            """,
            older_than,
            batch,
        )
        n = int(status.split()[-1])
        total += n
        if n < batch:
            return total
