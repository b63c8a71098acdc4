"""Plain SQL over campaigns, campaign_prospects and campaign_attempts (migration 0015)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from campaigns import pacing
from gateway.db import defer_wake
from gateway.events.outbox import NOTIFY_CHANNEL

Conn = asyncpg.Connection | asyncpg.Pool

_CAMPAIGN_COLUMNS = (
    "id, tenant_id, name, channel, purpose, status, config, created_at, updated_at, "
    "started_at, ended_at"
)


async def insert_campaign(conn: Conn, row: dict[str, Any]) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        INSERT INTO campaigns (id, tenant_id, name, channel, purpose, config)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING {_CAMPAIGN_COLUMNS}
        """,
        row["id"],
        row["tenant_id"],
        row["name"],
        row["channel"],
        row["purpose"],
        row["config"],
    )


async def get_campaign(
    conn: Conn, tenant_id: uuid.UUID, campaign_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2"
        + (" FOR UPDATE" if lock else ""),
        campaign_id,
        tenant_id,
    )


async def get_campaign_any_tenant(conn: Conn, campaign_id: uuid.UUID) -> asyncpg.Record | None:
    """For the operator's CLI (it names the campaign by id, as the database holds it)."""
    return await conn.fetchrow(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1", campaign_id
    )


async def list_campaigns(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    status: str | None,
    after: tuple[datetime | None, uuid.UUID | None],
) -> list[asyncpg.Record]:
    """Newest first on (created_at, id), after the key `after` of the previous page's last."""
    return await conn.fetch(
        f"""
        SELECT {_CAMPAIGN_COLUMNS} FROM campaigns c
         WHERE c.tenant_id = $1 AND ($2::text IS NULL OR c.status = $2)
           AND ($3::timestamptz IS NULL OR (c.created_at, c.id) < ($3, $5::uuid))
         ORDER BY c.created_at DESC, c.id DESC
         LIMIT $4
        """,
        tenant_id,
        status,
        after[0],
        limit,
        after[1],
    )


async def counts(conn: Conn, campaign_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Prospects by status per campaign (progress is a query, DESIGN principle 3)."""
    rows = await conn.fetch(
        """
        SELECT campaign_id, status, count(*)::int AS n FROM campaign_prospects
         WHERE campaign_id = ANY($1::uuid[]) GROUP BY campaign_id, status
        """,
        campaign_ids,
    )
    out: dict[uuid.UUID, dict[str, int]] = {c: {"total": 0} for c in campaign_ids}
    for r in rows:
        out[r["campaign_id"]][r["status"]] = r["n"]
        out[r["campaign_id"]]["total"] += r["n"]
    return out


# The payload of the event log's NOTIFY that says a campaign started or resumed: an idle
# dialer listens for it alone (campaigns/dialer.py), not for every message's and call's.
RUNNING_WAKE = "campaign_running"


async def set_status(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, status: str
) -> asyncpg.Record:
    if status == "running" and not defer_wake(conn, NOTIFY_CHANNEL, RUNNING_WAKE):
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, RUNNING_WAKE)
    return await conn.fetchrow(
        f"""
        UPDATE campaigns SET status = $2, updated_at = now(),
               started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now())
                                 ELSE started_at END,
               ended_at = CASE WHEN $2 IN ('completed', 'canceled') THEN now() ELSE ended_at END,
               pace_at = CASE WHEN $2 = 'running' THEN NULL ELSE pace_at END
         WHERE id = $1
        RETURNING {_CAMPAIGN_COLUMNS}
        """,
        campaign_id,
        status,
    )


async def cancel_open_prospects(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> int:
    """Pending and scheduled prospects of a canceled campaign: canceled (dialing ones end as
    their call ends, then see the campaign canceled)."""
    status = await conn.execute(
        """
        UPDATE campaign_prospects SET status = 'canceled', reason = 'campaign_canceled',
               updated_at = now()
         WHERE campaign_id = $1 AND status IN ('pending', 'retry_scheduled')
        """,
        campaign_id,
    )
    return int(status.split()[-1])


async def list_prospects(
    conn: Conn,
    campaign_id: uuid.UUID,
    *,
    limit: int,
    status: str | None,
    after: int | None,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT id, number, status, reason, attempts, variables, state,
               CASE WHEN status IN ('pending', 'retry_scheduled') AND next_attempt_at > now()
                    THEN next_attempt_at END AS next_attempt_at, updated_at
          FROM campaign_prospects
         WHERE campaign_id = $1 AND ($2::text IS NULL OR status = $2) AND id > $3
         ORDER BY id LIMIT $4
        """,
        campaign_id,
        status,
        after or 0,
        limit,
    )


async def insert_attempt(
    conn: asyncpg.Connection,
    prospect_id: int,
    n: int,
    campaign_id: uuid.UUID,
    *,
    call_id: uuid.UUID | None = None,
    message_id: uuid.UUID | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO campaign_attempts (prospect_id, n, campaign_id, call_id, message_id)
        VALUES ($1, $2, $3, $4, $5)
        """,
        prospect_id,
        n,
        campaign_id,
        call_id,
        message_id,
    )


async def running_campaigns(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id FROM campaigns WHERE status = 'running' ORDER BY started_at, id"
    )


async def now(conn: Conn) -> datetime:
    return await conn.fetchval("SELECT now()")


async def rates(conn: Conn, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Attempt outcomes, the answer and machine rates over dials, and an ETA from the last
    minute's dial rate (None while nothing was dialled in it)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE outcome IN ('answered', 'busy', 'no_answer', 'machine',
                                                  'failed', 'delivered')) AS dials,
               count(*) FILTER (WHERE outcome = 'answered') AS answered,
               count(*) FILTER (WHERE outcome = 'answered' AND detail = 'abandoned')
                   AS abandoned,
               count(*) FILTER (WHERE outcome = 'machine') AS machine,
               count(*) FILTER (WHERE outcome = 'busy') AS busy,
               count(*) FILTER (WHERE outcome = 'no_answer') AS no_answer,
               count(*) FILTER (WHERE outcome = 'failed') AS failed,
               count(*) FILTER (WHERE created_at > now() - interval '60 seconds') AS last_minute,
               (SELECT count(*) FROM campaign_prospects
                 WHERE campaign_id = $1 AND status IN ('pending', 'dialing', 'retry_scheduled'))
                   AS open
          FROM campaign_attempts WHERE campaign_id = $1
        """,
        campaign_id,
    )
    dials = row["dials"]
    per_s = row["last_minute"] / 60.0
    config = await conn.fetchval("SELECT config FROM campaigns WHERE id = $1", campaign_id)
    s = await pacing.stats(conn, campaign_id)
    answered = row["answered"]
    return {
        "dials": dials,
        "outcomes": {k: row[k] for k in ("answered", "machine", "busy", "no_answer", "failed")},
        "answer_rate": round(row["answered"] / dials, 4) if dials else None,
        "machine_rate": round(row["machine"] / dials, 4) if dials else None,
        # abandoned ÷ answered by a person (16 CFR 310.4(b)(4)): the campaign's, and over the
        # rolling 30 days the cap is read on
        "abandoned": row["abandoned"],
        "abandon_rate": round(row["abandoned"] / answered, 4) if answered else None,
        "abandon_rate_30d": None if s.abandon_rate is None else round(s.abandon_rate, 4),
        "dial_ratio": pacing.dial_ratio(
            s,
            float(config["pacing"].get("max_abandon_rate", 0.03)),
            float(config["pacing"].get("max_ratio", 3.0)),
        )
        if config["pacing"].get("mode") == "predictive"
        else 1.0,
        "dials_per_s": round(per_s, 3),
        "eta_seconds": round(row["open"] / per_s) if per_s and row["open"] else None,
    }
