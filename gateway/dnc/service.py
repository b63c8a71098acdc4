"""DNC logic behind the API: add (upsert), look up, remove — one tenant's view at a time."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway.core.errors import NotFound
from gateway.dnc import repo
from gateway.dnc.schemas import (
    Blocked,
    DncEntry,
    DncEntryIn,
    DncEntryList,
    DncListQuery,
    DncStatus,
)
from gateway.events.outbox import NewEvent, emit
from gateway.http import idempotency
from gateway.http.pagination import decode_cursor, page_of
from guardrails.policy import blocks

_PATH = "/v1/dnc"
_RESOURCE = "dnc"


def status_of(number: str, rows: list[asyncpg.Record]) -> DncStatus:
    entries = [DncEntry.model_validate(dict(r)) for r in rows]
    return DncStatus(
        number=number,
        blocked=Blocked(
            marketing=any(blocks(e.source, "marketing") for e in entries),
            transactional=any(blocks(e.source, "transactional") for e in entries),
        ),
        entries=entries,
    )


async def add(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    body: DncEntryIn,
    *,
    idempotency_key: str | None = None,
    request_digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    """Add (201) or update (200) the tenant's entry; the status after it, as (HTTP status, body)."""
    async with db.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            replay = await idempotency.claim(
                conn, tenant_id, idempotency_key, "POST", _PATH, request_digest
            )
            if replay is not None:
                return replay
        row = await repo.upsert(
            conn, tenant_id, body.number, body.source, body.expires_at, body.note, "api"
        )
        code = 201 if row["inserted"] else 200  # a new entry is a create; an update is not
        await emit(
            conn,
            NewEvent(
                tenant_id,
                "dnc.added",
                body.number,
                None,
                {
                    "number": body.number,
                    "source": body.source,
                    "expires_at": body.expires_at.isoformat() if body.expires_at else None,
                    "origin": "api",
                },
            ),
        )
        status = status_of(body.number, await repo.active_for(conn, tenant_id, body.number))
        out = json.loads(status.model_dump_json())
        if idempotency_key is not None:
            await idempotency.record(conn, tenant_id, idempotency_key, code, out)
        return code, out


async def list_entries(db: asyncpg.Pool, tenant_id: uuid.UUID, query: DncListQuery) -> DncEntryList:
    """The tenant's own entries, newest first (global entries are the operator's list)."""
    after = decode_cursor(_RESOURCE, query.cursor, (datetime, str, str))
    rows = await repo.list_own(db, tenant_id, limit=query.limit, after=after, source=query.source)
    page, cursor = page_of(
        _RESOURCE, rows, query.limit, lambda r: (r["created_at"], r["number"], r["source"])
    )
    return DncEntryList(data=[DncEntry.model_validate(dict(r)) for r in page], next_cursor=cursor)


async def lookup(db: asyncpg.Pool, tenant_id: uuid.UUID, number: str) -> DncStatus:
    rows = await repo.active_for(db, tenant_id, number)
    if not rows:
        raise NotFound("this number is on no list that applies to you", code="dnc_entry_not_found")
    return status_of(number, rows)


async def remove(
    db: asyncpg.Pool, tenant_id: uuid.UUID, number: str, source: str | None
) -> DncStatus:
    """Remove the tenant's own entries (global entries are the operator's); what still applies."""
    async with db.acquire() as conn, conn.transaction():
        removed = await repo.delete(conn, tenant_id, number, source)
        if not removed:
            raise NotFound("no entry of yours for this number", code="dnc_entry_not_found")
        await emit(
            conn,
            NewEvent(
                tenant_id,
                "dnc.removed",
                number,
                None,
                {"number": number, "source": source, "removed": removed, "origin": "api"},
            ),
        )
        return status_of(number, await repo.active_for(conn, tenant_id, number))
