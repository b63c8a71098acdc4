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
    """The entry, and whether this statement created it: a new row's created_at is this
    transaction's now(), an updated one keeps its own (xmax = 0, the usual test, cannot be
    read from a partitioned table)."""
    return await conn.fetchrow(
        f"""
        INSERT INTO dnc_entries (number, tenant_id, source, expires_at, note, origin)
        VALUES ($1, $2, $3::dnc_source, $4, $5, $6)
        ON CONFLICT (number, source, tenant_id) DO UPDATE
            SET expires_at = EXCLUDED.expires_at, note = coalesce(EXCLUDED.note, dnc_entries.note)
        RETURNING {_COLUMNS}, created_at = now() AS inserted
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


async def list_own(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime | None, str | None, str | None],
    source: str | None = None,
) -> list[asyncpg.Record]:
    """One page of the tenant's own entries (expired ones too: they are still its list), newest
    first on (created_at, number, source) — source in its enum order, as the index has it —
    `limit` rows plus one."""
    return await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM dnc_entries
        WHERE tenant_id = $1
          AND ($3::timestamptz IS NULL
               OR (created_at, number, source) < ($3, $4::text COLLATE "C", $5::dnc_source))
          AND ($6::text IS NULL OR source = $6::dnc_source)
        ORDER BY created_at DESC, number DESC, source DESC
        LIMIT $2
        """,
        tenant_id,
        limit + 1,
        *after,
        source,
    )
