"""Message logic that is not the send path: receipts, reads, templates, usage."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.billing.service import tenant_export
from gateway.core.errors import NotFound
from gateway.emails import repo as email_repo
from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from gateway.messages import batch_repo, repo
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
    if new in SUPPRESSING:  # moved or not: the address bounced or complained all the same
        await suppress_address(conn, message, new, source=source, detail=error_detail or error_code)
    current = None
    if moved is None:
        current = await conn.fetchval("SELECT status FROM messages WHERE id = $1", message["id"])
    await emit(
        conn,
        _status_event(
            message,
            new,
            moved is not None,
            current,
            source=source,
            error_code=error_code,
            data=data,
        ),
    )
    return moved is not None


# An email outcome that puts the address on the tenant's suppression list, and why.
SUPPRESSING = {"bounced": "bounce", "complained": "complaint"}


async def suppress_address(
    conn: asyncpg.Connection,
    message: asyncpg.Record | dict[str, Any],
    outcome: str,
    *,
    source: str,
    detail: str | None = None,
) -> None:
    """A bounce or complaint suppresses later email to the address (guardrails/checks.py),
    recorded as `email.suppressed` on the message that bounced."""
    row = await conn.fetchrow(
        "SELECT channel, to_number FROM messages WHERE id = $1", message["id"]
    )
    if row is None or row["channel"] != "email":
        return
    reason = SUPPRESSING[outcome]
    added = await email_repo.add_suppression(
        conn,
        message["tenant_id"],
        row["to_number"],
        reason,
        origin=source,
        message_id=message["id"],
        detail=detail,
    )
    if added:
        await emit(
            conn,
            NewEvent(
                message["tenant_id"],
                "email.suppressed",
                str(message["id"]),
                message["trace_id"],
                {"address": row["to_number"], "reason": reason, "source": source},
            ),
        )


async def apply_report(db: asyncpg.Pool, report: StatusReport) -> bool | None:
    """Apply a provider receipt. None: no message has that provider id yet (parked until it does)."""
    return (await apply_reports(db, [report]))[0]


async def apply_reports(db: asyncpg.Pool, reports: list[StatusReport]) -> list[bool | None]:
    """Apply receipts in one transaction with set-based statements, each as `apply_report`
    would one after another: moved (True), a recorded no-op (False) or parked (None).

    The refs' locks come first (see repo.lock_provider_ref); a message with several receipts
    in the batch takes them in their order, one compare-and-set round each."""
    answers: list[bool | None] = [None] * len(reports)
    refs = [(r.provider, r.provider_message_id) for r in reports]
    async with db.acquire() as conn, conn.transaction():
        await batch_repo.lock_provider_refs(conn, refs)
        found = await batch_repo.messages_by_provider_refs(conn, sorted(set(refs)))
        orphans = [i for i, ref in enumerate(refs) if ref not in found]
        await batch_repo.park_orphan_receipts(
            conn,
            [
                {
                    "provider": reports[i].provider,
                    "provider_message_id": reports[i].provider_message_id,
                    "status": reports[i].status,
                    "error_code": reports[i].error_code,
                    "raw": reports[i].raw,
                }
                for i in orphans
            ],
        )
        left = [i for i, ref in enumerate(refs) if ref in found]
        moved = await apply_statuses(
            conn,
            [
                StatusMove(
                    found[refs[i]],
                    reports[i].status,
                    source=reports[i].source or f"receipt:{reports[i].provider}",
                    error_code=reports[i].error_code,
                )
                for i in left
            ],
        )
        for i, ok in zip(left, moved, strict=True):
            answers[i] = ok
    return answers


@dataclass(frozen=True)
class StatusMove:
    """One `apply_status`, for `apply_statuses`."""

    message: asyncpg.Record | dict[str, Any]  # id, tenant_id, trace_id
    new: str
    source: str
    error_code: str | None = None
    error_detail: str | None = None
    data: dict[str, Any] | None = None


async def apply_statuses(conn: asyncpg.Connection, moves: list[StatusMove]) -> list[bool]:
    """`apply_status` for many moves with set-based statements, as if one after another:
    a message with several moves takes them in their order, one compare-and-set round each;
    the events follow in the same order, written with one statement."""
    answers = [False] * len(moves)
    events: list[NewEvent | None] = [None] * len(moves)
    left = list(range(len(moves)))
    while left:
        seen: set[Any] = set()
        round_, later = [], []
        for i in left:
            ident = moves[i].message["id"]
            (later if ident in seen else round_).append(i)
            seen.add(ident)
        results = await batch_repo.move_statuses(
            conn,
            [
                (moves[i].message["id"], moves[i].new, moves[i].error_code, moves[i].error_detail)
                for i in round_
            ],
        )
        for i, (ok, current) in zip(round_, results, strict=True):
            move = moves[i]
            answers[i] = ok
            events[i] = _status_event(
                move.message,
                move.new,
                ok,
                current,
                source=move.source,
                error_code=move.error_code,
                data=move.data,
            )
        left = later
    await emit(conn, *(e for e in events if e is not None))
    for move in moves:  # rare (an email's bounce or complaint): one by one
        if move.new in SUPPRESSING:
            await suppress_address(
                conn,
                move.message,
                move.new,
                source=move.source,
                detail=move.error_detail or move.error_code,
            )
    return answers


def _status_event(
    message: asyncpg.Record | dict[str, Any],
    new: str,
    moved: bool,
    current: str | None,
    *,
    source: str,
    error_code: str | None = None,
    data: dict[str, Any] | None = None,
) -> NewEvent:
    """`message.<new>` for a move, else `message.status_noop` saying what it stayed at."""
    payload = {"source": source, **(data or {})}
    if error_code:
        payload["error_code"] = error_code
    if moved:
        return NewEvent(
            message["tenant_id"], f"message.{new}", str(message["id"]), message["trace_id"], payload
        )
    return NewEvent(
        message["tenant_id"],
        "message.status_noop",
        str(message["id"]),
        message["trace_id"],
        payload | {"reported": new, "current": current},
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
    parts = " ".join(p for p in (row["subject"], row["body"], row["html"]) if p)
    return Template(variables=variables_of(parts), **dict(row))


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
