"""SQL for the suppression list. Tenants read their own and the global entries, write only their own."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

_COLUMNS = """number, source::text AS source, CASE WHEN tenant_id IS NULL THEN 'global' ELSE 'tenant' END AS scope,
              expires_at, note, origin, created_at"""


async def upsert(
    conn: Conn,
    tenant_id: uuid.UUID | None,
    number: str,
    source: str,
    expires_at: datetime | None,
    note: str | None,
    origin: str,
) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        INSERT INTO dnc_entries (number, tenant_id, source, expires_at, note, origin)
        VALUES ($1, $2, $3::dnc_source, $4, $5, $6)
        ON CONFLICT (number, source, tenant_id) DO UPDATE
            SET expires_at = EXCLUDED.expires_at, note = coalesce(EXCLUDED.note, dnc_entries.note)
        RETURNING {_COLUMNS}
        """,
        number,
        tenant_id,
        source,
        expires_at,
        note,
        origin,
    )


async def active_for(
    conn: Conn, tenant_id: uuid.UUID, number: str, now: datetime | None = None
) -> list[asyncpg.Record]:
    """The entries that apply to `number` for this tenant now: its own and the global ones."""
    return await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM dnc_entries
        WHERE number = $1 AND (tenant_id IS NULL OR tenant_id = $2)
          AND (expires_at IS NULL OR expires_at > coalesce($3, now()))
        ORDER BY tenant_id NULLS LAST, source
        """,
        number,
        tenant_id,
        now,
    )


async def delete(conn: Conn, tenant_id: uuid.UUID, number: str, source: str | None) -> int:
    rows = await conn.fetch(
        """
        DELETE FROM dnc_entries
        WHERE number = $1 AND tenant_id = $2 AND ($3::text IS NULL OR source = $3::dnc_source)
        RETURNING 1
        """,
        number,
        tenant_id,
        source,
    )
    return len(rows)
