"""GET /v1/calls: one page of a tenant's calls, newest first, keyed on (created_at, id).

Its own module beside repo.py (which is near the size a reader takes in at once): the list
is read-only SQL over the calls table plus the shared envelope and cursor."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from gateway.calls.repo import CALL_COLUMNS
from gateway.calls.schemas import CallList, CallQuery
from gateway.calls.service import call_from_row
from gateway.http.pagination import decode_cursor, page_of

RESOURCE = "calls"


async def fetch_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: uuid.UUID,
    query: CallQuery,
    after: tuple[datetime | None, uuid.UUID | None],
) -> list[asyncpg.Record]:
    """`query.limit` rows plus one (to tell whether another page follows)."""
    return await conn.fetch(
        f"""
        SELECT {CALL_COLUMNS} FROM calls c
        WHERE c.tenant_id = $1
          AND ($3::timestamptz IS NULL OR (c.created_at, c.id) < ($3, $4::uuid))
          AND ($5::text IS NULL OR c.status = $5)
          AND ($6::text IS NULL OR c.to_number = $6)
          AND ($7::timestamptz IS NULL OR c.created_at > $7)
          AND ($8::timestamptz IS NULL OR c.created_at < $8)
        ORDER BY c.created_at DESC, c.id DESC
        LIMIT $2
        """,
        tenant_id,
        query.limit + 1,
        after[0],
        after[1],
        query.status,
        query.to,
        query.created_after,
        query.created_before,
    )


async def list_calls(db: asyncpg.Pool, tenant_id: uuid.UUID, query: CallQuery) -> CallList:
    after = decode_cursor(RESOURCE, query.cursor, (datetime, uuid.UUID))
    rows = await fetch_page(db, tenant_id, query, after)  # type: ignore[arg-type]
    page, cursor = page_of(RESOURCE, rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return CallList(data=[call_from_row(r) for r in page], next_cursor=cursor)
