"""Campaigns: create, read, add prospects, and the lifecycle draft → running ⇄ paused → end.

Every state change and its event (`campaign.*`) commit together (outbox). A POST with an
Idempotency-Key claims the key in the same transaction as its work and stores the answer
(gateway/http/idempotency.py), like messages and calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from campaigns import repo
from campaigns.prospects import AddReport, CsvRows, RawProspect, add_prospects, from_list
from gateway.campaigns.schemas import (
    Campaign,
    CampaignIn,
    CampaignList,
    CampaignQuery,
    Prospect,
    ProspectList,
    ProspectQuery,
    ProspectsAdded,
    ProspectsIn,
    Reject,
)
from gateway.core.errors import Conflict, NotFound, ValidationFailed
from gateway.core.ids import new_id

# The DNC importer's chunked reader and progress callback: one way to stream a file in.
from gateway.dnc.importer import Progress
from gateway.events.outbox import NewEvent, emit
from gateway.http import idempotency
from gateway.http.pagination import decode_cursor, page_of

# Lifecycle moves: action → (allowed from, to, event).
MOVES: dict[str, tuple[frozenset[str], str, str]] = {
    "start": (frozenset({"draft"}), "running", "campaign.started"),
    "pause": (frozenset({"running"}), "paused", "campaign.paused"),
    "resume": (frozenset({"paused"}), "running", "campaign.resumed"),
    "cancel": (frozenset({"draft", "running", "paused"}), "canceled", "campaign.canceled"),
}


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such campaign", code="campaign_not_found") from None


def campaign_event(row: Any, kind: str, data: dict[str, Any] | None = None) -> NewEvent:
    return NewEvent(
        row["tenant_id"],
        kind,
        str(row["id"]),
        None,
        {"campaign_id": str(row["id"]), "name": row["name"], "status": row["status"]}
        | (data or {}),
    )


def campaign_from_row(row: Any, counts: dict[str, int]) -> Campaign:
    return Campaign(
        id=row["id"],
        name=row["name"],
        channel=row["channel"],
        purpose=row["purpose"],
        status=row["status"],
        config=row["config"],
        prospects=counts,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )


def _refuse_unsupported(body: CampaignIn) -> None:
    """What this build does not do yet is refused, never silently ignored (issue 11)."""
    unsupported: dict[str, bool] = {}  # every option of issue 11 is built now
    named = [name for name, used in unsupported.items() if used]
    if named:
        raise ValidationFailed(
            f"not available yet: {', '.join(named)}", code="campaign_feature_unavailable"
        )
    if body.on_answer is not None and body.on_answer.agent is not None and body.channel == "sms":
        raise ValidationFailed("on_answer is for voice campaigns")


async def _check_caller_id(db: asyncpg.Pool, tenant_id: uuid.UUID, body: CampaignIn) -> None:
    """The caller id fallback (the number local presence falls back to, and every dial's
    without it) must be one of the tenant's DIDs: refused now, not at each dial."""
    fallback = body.caller_id.fallback
    if fallback is None:
        return
    if await db.fetchval(
        "SELECT 1 FROM dids WHERE number = $1 AND tenant_id = $2", str(fallback), tenant_id
    ):
        return
    raise ValidationFailed(
        f"caller_id.fallback {fallback} is not one of your numbers (GET /v1/dids)",
        code="unknown_caller_id",
    )


# Run `work` in a transaction that also claims and answers the Idempotency-Key.
_idempotent = idempotency.in_transaction


async def create(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    body: CampaignIn,
    *,
    idempotency_key: str | None = None,
    digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    _refuse_unsupported(body)
    await _check_caller_id(db, tenant_id, body)
    config = body.model_dump(mode="json", exclude={"name", "channel", "purpose"})

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        row = await repo.insert_campaign(
            conn,
            {
                "id": new_id(),
                "tenant_id": tenant_id,
                "name": body.name,
                "channel": body.channel,
                "purpose": body.purpose,
                "config": config,
            },
        )
        await emit(conn, campaign_event(row, "campaign.created", {"channel": body.channel}))
        return json.loads(campaign_from_row(row, {"total": 0}).model_dump_json())

    return await _idempotent(db, tenant_id, idempotency_key, "/v1/campaigns", digest, 201, work)


async def get(db: asyncpg.Pool, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> Campaign:
    row = await repo.get_campaign(db, tenant_id, campaign_id)
    if row is None:
        raise NotFound("no such campaign", code="campaign_not_found")
    counts = await repo.counts(db, [campaign_id])
    out = campaign_from_row(row, counts[campaign_id])
    out.stats = await repo.rates(db, campaign_id)
    return out


async def list_campaigns(db: asyncpg.Pool, tenant_id: uuid.UUID, q: CampaignQuery) -> CampaignList:
    after = decode_cursor("campaigns", q.cursor, (datetime, uuid.UUID))
    rows = await repo.list_campaigns(db, tenant_id, limit=q.limit + 1, status=q.status, after=after)
    page, cursor = page_of("campaigns", rows, q.limit, lambda r: (r["created_at"], r["id"]))
    counts = await repo.counts(db, [r["id"] for r in page])
    return CampaignList(
        data=[campaign_from_row(r, counts[r["id"]]) for r in page], next_cursor=cursor
    )


async def move(
    db: asyncpg.Pool, tenant_id: uuid.UUID, campaign_id: uuid.UUID, action: str
) -> Campaign:
    """start | pause | resume | cancel. Asking for the state it is already in is a no-op;
    any other move the lifecycle does not have is 409 campaign_state_conflict."""
    sources, target, kind = MOVES[action]
    async with db.acquire() as conn, conn.transaction():
        row = await repo.get_campaign(conn, tenant_id, campaign_id, lock=True)
        if row is None:
            raise NotFound("no such campaign", code="campaign_not_found")
        if row["status"] == target:
            pass
        elif row["status"] not in sources:
            raise Conflict(
                f"a {row['status']} campaign cannot {action}",
                code="campaign_state_conflict",
            )
        else:
            data: dict[str, Any] = {"from": row["status"]}
            if action == "cancel":
                data["prospects_canceled"] = await repo.cancel_open_prospects(conn, campaign_id)
            row = await repo.set_status(conn, campaign_id, target)
            await emit(conn, campaign_event(row, kind, data))
    counts = await repo.counts(db, [campaign_id])
    return campaign_from_row(row, counts[campaign_id])


def _added(report: AddReport) -> ProspectsAdded:
    return ProspectsAdded(
        received=report.received,
        added=report.added,
        duplicates=report.duplicates,
        suppressed=report.suppressed,
        rejected=report.rejected,
        rejects=[Reject(index=i, value=v, reason=why) for i, v, why in report.rejects],
    )


async def add_to(conn: asyncpg.Connection, campaign: Any, rows: Any, *, origin: str) -> AddReport:
    """Merge prospects into a campaign that may still take them; one summary event."""
    if campaign["status"] in ("completed", "canceled"):
        raise Conflict(
            f"a {campaign['status']} campaign takes no prospects", code="campaign_state_conflict"
        )
    report = await add_prospects(
        conn, campaign["id"], campaign["tenant_id"], campaign["purpose"], rows
    )
    await emit(
        conn,
        campaign_event(
            campaign,
            "campaign.prospects_added",
            {
                "origin": origin,
                "added": report.added,
                "duplicates": report.duplicates,
                "suppressed": report.suppressed,
                "rejected": report.rejected,
            },
        ),
    )
    return report


async def add(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    body: ProspectsIn,
    *,
    idempotency_key: str | None = None,
    digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    items = [
        RawProspect(i, p.number, p.variables, p.state, p.zip) for i, p in enumerate(body.prospects)
    ]

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        # FOR SHARE: a concurrent cancel waits for this merge (and sees its prospects).
        campaign = await conn.fetchrow(
            "SELECT * FROM campaigns WHERE id = $1 AND tenant_id = $2 FOR SHARE",
            campaign_id,
            tenant_id,
        )
        if campaign is None:
            raise NotFound("no such campaign", code="campaign_not_found")
        report = await add_to(conn, campaign, from_list(items), origin="api")
        return _added(report).model_dump(mode="json")

    path = f"/v1/campaigns/{campaign_id}/prospects"
    return await _idempotent(db, tenant_id, idempotency_key, path, digest, 200, work)


async def prospects(
    db: asyncpg.Pool, tenant_id: uuid.UUID, campaign_id: uuid.UUID, q: ProspectQuery
) -> ProspectList:
    if await repo.get_campaign(db, tenant_id, campaign_id) is None:
        raise NotFound("no such campaign", code="campaign_not_found")
    resource = f"prospects:{campaign_id}"  # a cursor of one campaign is no cursor of another
    (after,) = decode_cursor(resource, q.cursor, (int,))
    rows = await repo.list_prospects(
        db, campaign_id, limit=q.limit + 1, status=q.status, after=after
    )
    page, cursor = page_of(resource, rows, q.limit, lambda r: (r["id"],))
    return ProspectList(data=[Prospect(**dict(r)) for r in page], next_cursor=cursor)


class ImportFailed(Exception):
    """The file could not be imported; nothing was added."""


async def import_file(
    db: asyncpg.Pool,
    campaign_id: uuid.UUID,
    path: str,
    *,
    progress: Progress | None = None,
) -> AddReport:
    """`trunkline campaigns import`: a CSV file streamed through the same merge as the API,
    in one transaction, read in chunks with the DNC importer's reader and progress bar."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        total = os.fstat(fh.fileno()).st_size
        rows = CsvRows(fh, total, progress)
        async with db.acquire() as conn, conn.transaction():
            campaign = await conn.fetchrow(
                "SELECT * FROM campaigns WHERE id = $1 FOR SHARE", campaign_id
            )
            if campaign is None:
                raise ImportFailed(f"no campaign {campaign_id}")
            report = await add_to(conn, campaign, rows.__aiter__(), origin=f"import:{path}")
            if rows.unreadable is not None:
                raise ImportFailed(f"{rows.unreadable}; nothing was imported")
        return report
    finally:
        fh.close()
