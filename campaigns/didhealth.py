"""DID health: each call's end per DID (`did_health_events`, migration 0019), rests and restores.

* `record` runs inside the transaction that moves a call to its final status (gateway/calls/
  service.py `_ended`): a call placed from one of its tenant's DIDs leaves one row — answered,
  short_call (answered, < 6 s of talk), no_answer, busy or failed. Nothing for a call that was
  never dialled (rejected by the chain) or canceled before it rang out.
* `review` (the dialer runs it every few seconds, in any number of workers): a DID whose
  answer rate over at least `min_calls` calls in the window — counted since its last restore —
  is below `min_answer_rate` is rested for `cool_off` (`did.rested`); a rest whose time is up
  ends (`did.restored`). Local presence (campaigns/callerid.py) does not choose a resting DID.
  Both sides of each decision read one clock: the database's `now()`, or `at` (tests).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from gateway.providers.contracts import ReputationProvider, TransientProviderError

log = get_logger(__name__)

SHORT_CALL_SECONDS = 6

_RECORD = """
INSERT INTO did_health_events (did, tenant_id, call_id, outcome, at)
SELECT c.from_number, c.tenant_id, c.id,
       CASE WHEN c.status = 'completed' AND c.answered_at IS NOT NULL THEN
                CASE WHEN coalesce(c.ended_at, now()) - c.answered_at
                          < make_interval(secs => $2) THEN 'short_call' ELSE 'answered' END
            WHEN c.status = 'completed' THEN 'answered'
            ELSE c.status END,
       coalesce(c.ended_at, now())
  FROM calls c JOIN dids d ON d.number = c.from_number AND d.tenant_id = c.tenant_id
 WHERE c.id = $1 AND c.status IN ('completed', 'busy', 'no_answer', 'failed')
ON CONFLICT (call_id) DO NOTHING
"""

# DIDs to rest: enough calls since max(window start, last restore), answer rate too low.
_TO_REST = """
WITH at AS (SELECT coalesce($4::timestamptz, now()) AS now),
since AS (
    SELECT d.number AS did, d.tenant_id,
           greatest((SELECT now FROM at) - make_interval(secs => $1),
                    (SELECT max(r.restored_at) FROM did_rests r WHERE r.did = d.number))
               AS since
      FROM dids d
     WHERE NOT EXISTS (SELECT 1 FROM did_rests r WHERE r.did = d.number
                                                 AND r.restored_at IS NULL)
)
SELECT s.did, s.tenant_id, count(*) AS calls,
       (count(*) FILTER (WHERE e.outcome IN ('answered', 'short_call')))::float8 / count(*)
           AS answer_rate
  FROM since s JOIN did_health_events e ON e.did = s.did AND e.tenant_id = s.tenant_id
 WHERE e.at > s.since AND e.at <= (SELECT now FROM at)
 GROUP BY s.did, s.tenant_id
HAVING count(*) >= $2
   AND (count(*) FILTER (WHERE e.outcome IN ('answered', 'short_call')))::float8 / count(*) < $3
"""

_REST = """
INSERT INTO did_rests (did, tenant_id, reason, calls, answer_rate, rested_at, until)
VALUES ($1, $2, $7, $3, $4, coalesce($6::timestamptz, now()),
        coalesce($6::timestamptz, now()) + make_interval(secs => $5))
ON CONFLICT (did) WHERE restored_at IS NULL DO NOTHING
RETURNING did, tenant_id, calls, answer_rate, rested_at, until
"""

# Flagged by the reputation provider since the DID's last restore: rested too.
_FLAGGED = """
SELECT r.did, r.tenant_id, r.flags, r.score
  FROM did_reputation r JOIN dids d ON d.number = r.did AND d.tenant_id = r.tenant_id
 WHERE cardinality(r.flags) > 0
   AND NOT EXISTS (SELECT 1 FROM did_rests x WHERE x.did = r.did AND x.restored_at IS NULL)
   AND r.checked_at > coalesce((SELECT max(x.restored_at) FROM did_rests x WHERE x.did = r.did),
                               '-infinity')
"""

_STALE_REPUTATION = """
SELECT d.number, d.tenant_id FROM dids d
  LEFT JOIN did_reputation r ON r.did = d.number
 WHERE 'voice' = ANY(d.capabilities)
   AND (r.did IS NULL OR r.checked_at < coalesce($1::timestamptz, now()) - make_interval(secs => $2))
 ORDER BY r.checked_at NULLS FIRST, d.number
 LIMIT $3
"""

_SAVE_REPUTATION = """
INSERT INTO did_reputation (did, tenant_id, provider, flags, score, line_type, raw, checked_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8::timestamptz, now()))
ON CONFLICT (did) DO UPDATE SET provider = EXCLUDED.provider, flags = EXCLUDED.flags,
    score = EXCLUDED.score, line_type = EXCLUDED.line_type, raw = EXCLUDED.raw,
    checked_at = EXCLUDED.checked_at
"""

_RESTORE = """
UPDATE did_rests SET restored_at = coalesce($1::timestamptz, now())
 WHERE restored_at IS NULL AND until <= coalesce($1::timestamptz, now())
RETURNING did, tenant_id, rested_at, until, restored_at
"""


@dataclass(frozen=True)
class HealthPolicy:
    window: float = 86400.0
    min_calls: int = 20
    min_answer_rate: float = 0.15
    cool_off: float = 14400.0

    @classmethod
    def from_settings(cls, s: Any) -> HealthPolicy:
        return cls(s.window, s.min_calls, s.min_answer_rate, s.cool_off)


async def record(conn: asyncpg.Connection, call_id: uuid.UUID) -> None:
    """The call's outcome for its DID, in the caller's transaction (no row if not a DID)."""
    await conn.execute(_RECORD, call_id, SHORT_CALL_SECONDS)


def _event(tenant_id: uuid.UUID, kind: str, did: str, data: dict[str, Any]) -> NewEvent:
    return NewEvent(tenant_id, kind, did, None, {"did": did} | data)


async def review(
    db: asyncpg.Pool, policy: HealthPolicy, *, at: datetime | None = None
) -> tuple[list[str], list[str]]:
    """Rest what answers too seldom or is flagged, restore what has rested enough:
    (rested, restored), each sorted."""
    rested: list[str] = []
    restored: list[str] = []
    async with db.acquire() as conn, conn.transaction():
        for r in await conn.fetch(_RESTORE, at):
            restored.append(r["did"])
            await emit(
                conn,
                _event(
                    r["tenant_id"],
                    "did.restored",
                    r["did"],
                    {
                        "rested_at": r["rested_at"].isoformat(),
                        "restored_at": r["restored_at"].isoformat(),
                    },
                ),
            )
        for c in await conn.fetch(
            _TO_REST, policy.window, policy.min_calls, policy.min_answer_rate, at
        ):
            row = await conn.fetchrow(
                _REST,
                c["did"],
                c["tenant_id"],
                c["calls"],
                c["answer_rate"],
                policy.cool_off,
                at,
                "low_answer_rate",
            )
            if row is None:
                continue
            rested.append(row["did"])
            await emit(
                conn,
                _event(
                    row["tenant_id"],
                    "did.rested",
                    row["did"],
                    {
                        "reason": "low_answer_rate",
                        "calls": row["calls"],
                        "answer_rate": round(row["answer_rate"], 4),
                        "threshold": policy.min_answer_rate,
                        "until": row["until"].isoformat(),
                    },
                ),
            )
        for f in await conn.fetch(_FLAGGED):
            reason = "flagged:" + ",".join(f["flags"])
            row = await conn.fetchrow(
                _REST, f["did"], f["tenant_id"], 0, None, policy.cool_off, at, reason
            )
            if row is None:
                continue
            rested.append(row["did"])
            await emit(
                conn,
                _event(
                    row["tenant_id"],
                    "did.rested",
                    row["did"],
                    {
                        "reason": reason,
                        "flags": list(f["flags"]),
                        "score": f["score"],
                        "until": row["until"].isoformat(),
                    },
                ),
            )
    return sorted(rested), sorted(restored)


async def refresh_reputation(
    db: asyncpg.Pool,
    provider: ReputationProvider,
    *,
    max_age: float,
    limit: int = 20,
    at: datetime | None = None,
) -> int:
    """Look up the voice DIDs not looked up for `max_age` seconds (a few per pass: providers
    rate-limit lookups); a lookup that fails transiently is tried at the next pass."""
    done = 0
    for d in await db.fetch(_STALE_REPUTATION, at, max_age, limit):
        try:
            rep = await provider.lookup(d["number"])
        except TransientProviderError as exc:
            log.warning(
                "reputation lookup failed; tried again later", did=d["number"], error=str(exc)
            )
            continue
        await db.execute(
            _SAVE_REPUTATION,
            d["number"],
            d["tenant_id"],
            rep.provider,
            list(rep.flags),
            rep.score,
            rep.line_type,
            rep.raw,
            at,
        )
        done += 1
    return done


async def health_of(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: uuid.UUID, numbers: list[str], window: float
) -> dict[str, dict[str, Any]]:
    """GET /v1/dids: each DID's rates over the window and its rest, if resting."""
    rows = await conn.fetch(
        """
        SELECT d.number, h.calls, h.answered, h.short_calls, h.answer_rate, h.short_call_rate,
               r.until AS resting_until, r.reason AS rest_reason,
               rp.flags, rp.score AS reputation_score, rp.checked_at AS reputation_checked_at
          FROM unnest($2::text[]) AS d(number)
          LEFT JOIN did_reputation rp ON rp.did = d.number AND rp.tenant_id = $1
          LEFT JOIN did_health_over(make_interval(secs => $3)) h
                 ON h.did = d.number AND h.tenant_id = $1
          LEFT JOIN did_rests r ON r.did = d.number AND r.tenant_id = $1
                               AND r.restored_at IS NULL
        """,
        tenant_id,
        numbers,
        window,
    )
    return {
        r["number"]: {
            "calls": r["calls"] or 0,
            "answered": r["answered"] or 0,
            "short_calls": r["short_calls"] or 0,
            "answer_rate": None if r["answer_rate"] is None else round(r["answer_rate"], 4),
            "short_call_rate": None
            if r["short_call_rate"] is None
            else round(r["short_call_rate"], 4),
            "window_seconds": window,
            "status": "rested" if r["resting_until"] is not None else "ok",
            "rested_until": r["resting_until"].isoformat() if r["resting_until"] else None,
            "rest_reason": r["rest_reason"],
            "reputation": None
            if r["reputation_checked_at"] is None
            else {
                "flags": list(r["flags"]),
                "score": r["reputation_score"],
                "checked_at": r["reputation_checked_at"].isoformat(),
            },
        }
        for r in rows
    }
