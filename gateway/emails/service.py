"""Email logic beside the send path: unsubscribes, bounce and complaint reports, the list."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from gateway.emails import repo
from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from gateway.messages.service import apply_status
from gateway.providers.smtp.dsn import MailReport

log = get_logger(__name__)

# What a report does to the message's status (None: an event, no status change).
_STATUS = {
    "bounce": "bounced",
    "failure": "failed",
    "complaint": "complained",
    "delivered": "delivered",
    "delay": None,
}


@dataclass(frozen=True)
class Unsubscribed:
    address: str
    tenant: str
    added: bool  # False: it was unsubscribed already


async def unsubscribe(
    db: asyncpg.Pool, message_id: uuid.UUID, *, origin: str
) -> Unsubscribed | None:
    """Record the opt-out a message's link asked for: the address is off the tenant's
    marketing email (transactional email still goes). None: no such email."""
    async with db.acquire() as conn, conn.transaction():
        msg = await repo.message_for_unsubscribe(conn, message_id)
        if msg is None or msg["channel"] != "email":
            return None
        added = await repo.add_suppression(
            conn,
            msg["tenant_id"],
            msg["to_number"],
            "unsubscribe",
            origin=origin,
            message_id=msg["id"],
        )
        if added:
            await emit(
                conn,
                NewEvent(
                    msg["tenant_id"],
                    "email.unsubscribed",
                    str(msg["id"]),
                    msg["trace_id"],
                    {"address": msg["to_number"], "source": origin},
                ),
            )
        return Unsubscribed(msg["to_number"], msg["tenant"], added)


async def apply_mail_report(db: asyncpg.Pool, report: MailReport, *, source: str) -> bool:
    """A bounce, complaint, delay or delivery report applied to the email it names (through
    the status machine: forward, or a recorded no-op; a bounce or complaint suppresses the
    address). False: it names no email of ours."""
    ref = report.message_id or report.envelope_id
    if not ref:
        return False
    async with db.acquire() as conn, conn.transaction():
        msg = await repo.message_by_rfc_id(conn, ref)
        if msg is None and report.envelope_id and report.envelope_id != ref:
            msg = await repo.message_by_rfc_id(conn, report.envelope_id)
        if msg is None:
            return False
        if report.recipient and report.recipient.lower() != msg["to_number"].lower():
            log.info(
                "mail report names another recipient than the email's",
                message_id=str(msg["id"]),
                reported=report.recipient,
            )
        status = _STATUS[report.kind]
        if status is None:
            await emit(
                conn,
                NewEvent(
                    msg["tenant_id"],
                    "message.delivery_delayed",
                    str(msg["id"]),
                    msg["trace_id"],
                    {"source": source, "status": report.status, "detail": report.diagnostic},
                ),
            )
            return True
        await apply_status(
            conn,
            msg,
            status,
            source=source,
            error_code=report.status if status in ("bounced", "failed") else None,
            error_detail=report.diagnostic,
        )
        return True
