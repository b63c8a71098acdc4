"""Outcomes: what a final call or message means for its prospect, settled set-based.

The call's end becomes the attempt's outcome — completed → answered (or machine when AMD said
so), busy, no_answer, failed; rejected by the chain → suppressed for DNC / opt-out, else
refused and tried again after `refused_retry` — and the retry policy decides what follows:
a retry at now + `retry.<outcome>.after` (the database's clock), `max_attempts`, or `done`.
A late or repeated settle of an earlier attempt changes nothing (the UPDATE compares `attempts`
and `status = 'dialing'`). Rows are taken FOR UPDATE SKIP LOCKED, so any number of workers
settle at once without settling anything twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from campaigns import pacing
from campaigns.model import CampaignConfig
from gateway.events.outbox import NewEvent, emit

CALL_FINAL = ["completed", "busy", "no_answer", "failed", "canceled", "rejected"]
MESSAGE_FINAL = ["delivered", "undelivered", "failed", "rejected"]
SUPPRESSING = frozenset({"dnc_listed", "opted_out"})

_SETTLE_CALLS = """
SELECT a.prospect_id, a.n, a.campaign_id, a.call_id AS ref,
       c.status AS end_status, c.amd_result, c.error_code,
       cp.tenant_id, cp.name, cp.status AS campaign_status, cp.channel, cp.purpose, cp.config,
       p.number,
       (SELECT count(*) FROM campaign_attempts x
         WHERE x.prospect_id = a.prospect_id
           AND x.outcome IS DISTINCT FROM 'refused') AS dials
  FROM campaign_attempts a
  JOIN calls c ON c.id = a.call_id
  JOIN campaign_prospects p ON p.id = a.prospect_id
  JOIN campaigns cp ON cp.id = a.campaign_id
 WHERE a.outcome IS NULL AND c.status = ANY($1::text[])
 ORDER BY a.prospect_id, a.n
 LIMIT $2
   FOR UPDATE OF a, p SKIP LOCKED
"""
_SETTLE_MESSAGES = (
    _SETTLE_CALLS.replace("a.call_id AS ref", "a.message_id AS ref")
    .replace("JOIN calls c ON c.id = a.call_id", "JOIN messages c ON c.id = a.message_id")
    .replace("c.amd_result", "NULL::text AS amd_result")
)

_APPLY_ATTEMPTS = """
UPDATE campaign_attempts a SET outcome = u.outcome, detail = u.detail, ended_at = now()
  FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[]) AS u(pid, n, outcome, detail)
 WHERE a.prospect_id = u.pid AND a.n = u.n
"""
_APPLY_PROSPECTS = """
UPDATE campaign_prospects p
   SET status = u.status, reason = u.reason, updated_at = now(),
       next_attempt_at = CASE WHEN u.delay IS NULL THEN p.next_attempt_at
                              ELSE now() + make_interval(secs => u.delay) END
  FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::float8[])
       AS u(id, n, status, reason, delay)
 WHERE p.id = u.id AND p.attempts = u.n AND p.status = 'dialing'
"""
_COMPLETE = """
UPDATE campaigns c SET status = 'completed', ended_at = now(), updated_at = now()
 WHERE c.status = 'running'
   AND NOT EXISTS (SELECT 1 FROM campaign_prospects p
                    WHERE p.campaign_id = c.id
                      AND p.status IN ('pending', 'dialing', 'retry_scheduled'))
RETURNING c.id, c.tenant_id, c.name, c.status
"""


def prospect_event(
    tenant_id: uuid.UUID, campaign_id: uuid.UUID, kind: str, data: dict[str, Any]
) -> NewEvent:
    return NewEvent(
        tenant_id,
        f"campaign.prospect.{kind}",
        str(campaign_id),
        None,
        {"campaign_id": str(campaign_id)} | data,
    )


@dataclass(frozen=True)
class Settled:
    """What one final call or message means for its prospect."""

    outcome: str  # the attempt's outcome (campaign_attempts.outcome)
    status: str  # where the prospect lands
    reason: str | None
    delay: float | None  # seconds to the next attempt (retry_scheduled)


def settle(row: Any, cfg: CampaignConfig, refused_retry: float) -> Settled:
    """The prospect's next state from its attempt's final call/message (pure)."""
    end, code = row["end_status"], row["error_code"]
    canceled = row["campaign_status"] == "canceled"
    if cfg.channel == "sms":
        outcome = "delivered" if end == "delivered" else "failed"
        if end == "rejected" and code in SUPPRESSING:
            return Settled("suppressed", "suppressed", code, None)
        return Settled(outcome, "done", end if code is None else f"{end}:{code}", None)
    if end == "rejected":
        if code in SUPPRESSING:
            return Settled("suppressed", "suppressed", code, None)
        if canceled:
            return Settled("refused", "canceled", "campaign_canceled", None)
        return Settled("refused", "retry_scheduled", f"refused:{code}", refused_retry)
    outcome = {
        "completed": "machine" if row["amd_result"] == "machine" else "answered",
        "busy": "busy",
        "no_answer": "no_answer",
    }.get(end, "failed")
    if outcome == "machine" and code == "voicemail_dropped":
        return Settled("machine", "done", "voicemail_dropped", None)
    if outcome == "answered" and code == "abandoned":
        # Answered by a person, no agent within 2 s: the abandon message was played. Never
        # re-dialled as if unanswered (16 CFR 310.4(b)(4)).
        return Settled("answered", "abandoned", "abandoned", None)
    if outcome in ("answered", "failed"):
        return Settled(outcome, "done", outcome if end != "canceled" else "failed:canceled", None)
    delay = cfg.retry.delay_for(outcome)
    if outcome == "machine" and cfg.on_machine != "retry":
        delay = None
    if delay is None:
        return Settled(outcome, "done", outcome, None)
    if canceled:
        return Settled(outcome, "canceled", "campaign_canceled", None)
    if row["dials"] >= cfg.retry.max_attempts:
        return Settled(outcome, "max_attempts", outcome, None)
    return Settled(outcome, "retry_scheduled", outcome, delay)


async def settle_outcomes(db: asyncpg.Pool, batch: int, refused_retry: float) -> int:
    """Settle every attempt whose call or message is final (up to `batch` of each kind)."""
    total = 0
    for sql, final in ((_SETTLE_CALLS, CALL_FINAL), (_SETTLE_MESSAGES, MESSAGE_FINAL)):
        async with db.acquire() as conn, conn.transaction():
            rows = await conn.fetch(sql, final, batch)
            if rows:
                await _apply(conn, rows, refused_retry)
                await _progress(conn, {r["campaign_id"] for r in rows})
        total += len(rows)
    return total


# At most one campaign.progress a second per campaign, whichever worker settles: the row's
# updated_at (the campaign's last change) is the throttle, moved under the row's lock.
_PROGRESS = """
WITH due AS (
    UPDATE campaigns SET updated_at = now()
     WHERE id = ANY($1::uuid[]) AND updated_at < now() - interval '1 second'
    RETURNING id, tenant_id, name, status, config
)
SELECT d.id, d.tenant_id, d.name, d.status, d.config,
       (SELECT json_object_agg(s.status, s.n) FROM (
            SELECT status, count(*) AS n FROM campaign_prospects
             WHERE campaign_id = d.id GROUP BY status) s) AS counts
  FROM due d
"""


async def _progress(conn: asyncpg.Connection, campaign_ids: set[uuid.UUID]) -> None:
    """`campaign.progress` with the prospects by status, for SSE and webhook subscribers."""
    rows = await conn.fetch(_PROGRESS, sorted(campaign_ids))
    events = []
    for r in rows:
        data: dict[str, Any] = {
            "campaign_id": str(r["id"]),
            "name": r["name"],
            "status": r["status"],
            "prospects": r["counts"] or {},
        }
        if r["config"]["pacing"].get("mode") == "predictive":
            s = await pacing.stats(conn, r["id"])
            data["dial_ratio"] = pacing.dial_ratio(
                s,
                float(r["config"]["pacing"].get("max_abandon_rate", 0.03)),
                float(r["config"]["pacing"].get("max_ratio", 3.0)),
            )
            data["abandon_rate_30d"] = s.abandon_rate
            data["answered_30d"] = s.answered_30d
            data["abandoned_30d"] = s.abandoned_30d
            data["recent_dials"] = s.recent_dials  # the live answer rate's window
            data["recent_answered"] = s.recent_answered
        else:
            data["dial_ratio"] = 1.0
        events.append(NewEvent(r["tenant_id"], "campaign.progress", str(r["id"]), None, data))
    await emit(conn, *events)


async def _apply(
    conn: asyncpg.Connection, rows: list[asyncpg.Record], refused_retry: float
) -> None:
    configs: dict[uuid.UUID, CampaignConfig] = {}
    attempts: list[tuple[int, int, str, str | None]] = []
    prospects: list[tuple[int, int, str, str | None, float | None]] = []
    events: list[NewEvent] = []
    for row in rows:
        cfg = configs.get(row["campaign_id"])
        if cfg is None:
            cfg = configs[row["campaign_id"]] = CampaignConfig.from_row(
                row["channel"], row["purpose"], row["config"]
            )
        s = settle(row, cfg, refused_retry)
        attempts.append((row["prospect_id"], row["n"], s.outcome, row["error_code"]))
        prospects.append((row["prospect_id"], row["n"], s.status, s.reason, s.delay))
        data = {
            "prospect_id": row["prospect_id"],
            "number": row["number"],
            "n": row["n"],
            "ref": str(row["ref"]),
        }
        if s.outcome not in ("refused", "suppressed"):
            events.append(prospect_event(row["tenant_id"], row["campaign_id"], s.outcome, data))
        events.append(
            prospect_event(
                row["tenant_id"],
                row["campaign_id"],
                s.status,
                data | {"outcome": s.outcome, "reason": s.reason, "retry_in_s": s.delay},
            )
        )
    await conn.execute(_APPLY_ATTEMPTS, *map(list, zip(*attempts, strict=True)))
    await conn.execute(_APPLY_PROSPECTS, *map(list, zip(*prospects, strict=True)))
    await emit(conn, *events)


async def complete_finished(db: asyncpg.Pool) -> None:
    """A running campaign with no prospect left to move is completed (campaign.completed)."""
    async with db.acquire() as conn, conn.transaction():
        done = await conn.fetch(_COMPLETE)
        await emit(
            conn,
            *(
                NewEvent(
                    r["tenant_id"],
                    "campaign.completed",
                    str(r["id"]),
                    None,
                    {"campaign_id": str(r["id"]), "name": r["name"], "status": r["status"]},
                )
                for r in done
            ),
        )
