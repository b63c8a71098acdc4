"""Message logic that is not the send path: receipts, reads, templates, usage."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway.billing.service import tenant_export
from gateway.core.errors import NotFound
from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from gateway.messages import repo
from gateway.messages.schemas import (
    Attempt,
    Message,
    MessageDetail,
    Template,
    TimelineEntry,
    Trace,
    Usage,
    UsageLine,
)
from gateway.messages.templates import variables_of
from gateway.providers.contracts import StatusReport
from gateway.settings import StripeBillingSettings

log = get_logger(__name__)


def message_from_row(row: asyncpg.Record | dict[str, Any]) -> Message:
    return Message.model_validate(dict(row))


async def get_message(
    db: asyncpg.Pool, tenant_id: uuid.UUID, message_id: uuid.UUID
) -> MessageDetail:
    row = await repo.message_detail(db, tenant_id, message_id)
    if row is None:
        raise NotFound("no such message", code="message_not_found")
    data = dict(row)
    attempts = [Attempt.model_validate(a) for a in data.pop("attempts")]
    timeline = [TimelineEntry.model_validate(e) for e in data.pop("timeline")]
    return MessageDetail(
        **message_from_row(data).model_dump(), attempts=attempts, timeline=timeline
    )


async def get_trace(db: asyncpg.Pool, tenant_id: uuid.UUID, trace_id: str) -> Trace:
    row = await repo.trace(db, tenant_id, trace_id)
    messages = [message_from_row(m) for m in row["messages"]]
    timeline = [TimelineEntry.model_validate(e) for e in row["timeline"]]
    if not messages and not timeline:
        raise NotFound("no such trace", code="trace_not_found")
    return Trace(trace_id=trace_id, messages=messages, timeline=timeline)


async def apply_status(
    conn: asyncpg.Connection,
    message: asyncpg.Record,
    new: str,
    *,
    source: str,
    error_code: str | None = None,
    error_detail: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Move a message forward and record it, or record a no-op: never a regression."""
    moved = await repo.move_status(
        conn, message["id"], new, error_code=error_code, error_detail=error_detail
    )
    payload = {"source": source, **(data or {})}
    if error_code:
        payload["error_code"] = error_code
    if moved is not None:
        await emit(
            conn,
            NewEvent(
                message["tenant_id"],
                f"message.{new}",
                str(message["id"]),
                message["trace_id"],
                payload,
            ),
        )
        return True
    current = await conn.fetchval("SELECT status FROM messages WHERE id = $1", message["id"])
    await emit(
        conn,
        NewEvent(
            message["tenant_id"],
            "message.status_noop",
            str(message["id"]),
            message["trace_id"],
            payload | {"reported": new, "current": current},
        ),
    )
    return False


async def apply_report(db: asyncpg.Pool, report: StatusReport) -> bool | None:
    """Apply a provider receipt. None: no message has that provider id yet (parked until it does)."""
    async with db.acquire() as conn, conn.transaction():
        await repo.lock_provider_ref(conn, report.provider, report.provider_message_id)
        message = await repo.message_by_provider_ref(
            conn, report.provider, report.provider_message_id
        )
        if message is None:
            await repo.park_orphan_receipt(
                conn,
                report.provider,
                report.provider_message_id,
                report.status,
                report.error_code,
                report.raw,
            )
            return None
        return await apply_status(
            conn,
            message,
            report.status,
            source=report.source or f"receipt:{report.provider}",
            error_code=report.error_code,
        )


async def apply_orphans(
    conn: asyncpg.Connection, message: asyncpg.Record, provider: str, provider_message_id: str
) -> None:
    for orphan in await repo.take_orphan_receipts(conn, provider, provider_message_id):
        await apply_status(
            conn,
            message,
            orphan["status"],
            source=f"receipt:{provider}",
            error_code=orphan["error_code"],
        )


def template_from_row(row: asyncpg.Record) -> Template:
    return Template(variables=variables_of(row["body"]), **dict(row))


async def usage(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    billing: StripeBillingSettings | None = None,
) -> Usage:
    rows = await repo.usage(db, tenant_id, start, end)
    export = await tenant_export(db, tenant_id, billing) if billing is not None else None
    return Usage(from_=start, to=end, lines=[UsageLine(**dict(r)) for r in rows], stripe=export)
