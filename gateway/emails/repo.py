"""SQL for the email suppression list. Every read is filtered by tenant."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.core.email import suppression_key

Conn = asyncpg.Connection | asyncpg.Pool

COLUMNS = "address, reason, message_id, detail, origin, created_at"


async def add_suppression(
    conn: Conn,
    tenant_id: uuid.UUID,
    address: str,
    reason: str,
    *,
    origin: str,
    message_id: uuid.UUID | None = None,
    detail: str | None = None,
) -> bool:
    """Put `address` on the tenant's list for `reason`; False if it was there already."""
    done = await conn.fetchval(
        """
        INSERT INTO email_suppressions (tenant_id, address, reason, message_id, detail, origin)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true
        """,
        tenant_id,
        suppression_key(address),
        reason,
        message_id,
        detail,
        origin,
    )
    return bool(done)


async def remove_suppression(
    conn: Conn, tenant_id: uuid.UUID, address: str, reason: str | None = None
) -> int:
    result = await conn.execute(
        "DELETE FROM email_suppressions WHERE tenant_id = $1 AND address = $2"
        " AND ($3::text IS NULL OR reason = $3)",
        tenant_id,
        suppression_key(address),
        reason,
    )
    return int(result.split()[-1])


async def list_suppressions(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[Any, Any, Any],
    reason: str | None = None,
    address: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first, keyed on (created_at, address, reason); `limit` rows plus one."""
    return await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM email_suppressions
        WHERE tenant_id = $1
          AND ($3::timestamptz IS NULL OR (created_at, address, reason) < ($3, $4::text, $5::text))
          AND ($6::text IS NULL OR reason = $6)
          AND ($7::text IS NULL OR address = $7)
        ORDER BY created_at DESC, address DESC, reason DESC
        LIMIT $2
        """,
        tenant_id,
        limit + 1,
        *after,
        reason,
        suppression_key(address) if address else None,
    )


async def message_for_unsubscribe(conn: Conn, message_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT m.id, m.tenant_id, m.trace_id, m.channel, m.to_number, m.purpose, t.name AS tenant"
        " FROM messages m JOIN tenants t ON t.id = m.tenant_id WHERE m.id = $1",
        message_id,
    )


async def message_by_rfc_id(conn: Conn, rfc_message_id: str) -> asyncpg.Record | None:
    """An email by the Message-ID we gave it (`<uuid@domain>`; our id is the left part)."""
    left = rfc_message_id.strip().strip("<>").partition("@")[0]
    try:
        message_id = uuid.UUID(left)
    except ValueError:
        return None
    return await conn.fetchrow(
        "SELECT id, tenant_id, status, trace_id, channel, to_number, provider, provider_message_id"
        " FROM messages WHERE id = $1 AND channel = 'email'",
        message_id,
    )
