"""Predictive pacing and the abandonment rate (16 CFR 310.4(b)(4)).

A call answered by a person and not connected to its `on_answer` target within 2 s of the
answer is *abandoned* (gateway/pipeline/calls/control.py `_op_abandon_check` plays the
campaign's `abandon_message` and hangs up; the prospect ends `abandoned`, never re-dialled).
The rate is abandoned ÷ answered by a person, per campaign over a rolling 30 days: SQL over
`campaign_attempts` (outcome 'answered', detail 'abandoned'), on the database's clock.

The dial ratio (dials per free agent) is a pure function of what the database says now — no
pacer state to lose when a worker dies (DESIGN principle 3). Like VICIdial's adaptive modes it
starts from the live answer rate (1 / answer rate, at most `max_ratio`) and gives it up as the
abandonment rate nears the cap: the rate is projected as if the next answer were abandoned
too, (abandoned + 1) ÷ (answered + 1); at or under half the cap the full ratio is used, at the
cap 1:1 (progressive), linearly in between. So a new campaign starts at 1:1 and earns its
ratio with answers; an abandon lowers it at once.

The ratio is a bet on the *mean* answer rate, and that alone does not keep the cap: answers
come in bursts, and every dial already ringing may be answered before the ratio can react —
an earlier seat check (an answer with no free agent session abandoned) crossed 3 % that way,
each burst abandoning up to (ratio − 1) × free agents at once. So the extra dials (those
beyond the free agents) are also capped by the worst case: if every dial in flight were
answered, the F that find a free agent are answered and the E others abandoned, and the rate
must still hold: (abandoned + E) ÷ (answered + F + E) ≤ cap, i.e.
E ≤ (cap × (answered + F) − abandoned) ÷ (1 − cap). Agent sessions are enforced when a call
is connected (`take_seat`: at most `max_agent_sessions` of a campaign's answered calls hold
one; gateway/pipeline/calls/control.py), so an answer beyond them is abandoned for real — and
within that budget.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

# Attempts the live answer rate is read over (the most recent ones of the campaign).
LIVE_WINDOW = 200
# Dials before the answer rate is trusted; until then 1:1.
MIN_DIALS = 20

STATS_SQL = """
WITH recent AS MATERIALIZED (
    SELECT outcome FROM campaign_attempts
     WHERE campaign_id = $1 AND outcome IS NOT NULL
       AND outcome NOT IN ('refused', 'suppressed', 'canceled')
     ORDER BY ended_at DESC LIMIT $2)
SELECT (SELECT count(*) FROM recent) AS recent_dials,
       (SELECT count(*) FROM recent WHERE outcome = 'answered') AS recent_answered,
       count(*) FILTER (WHERE a.outcome = 'answered') AS answered_30d,
       count(*) FILTER (WHERE a.outcome = 'answered' AND a.detail = 'abandoned') AS abandoned_30d
  FROM campaign_attempts a
 WHERE a.campaign_id = $1 AND a.ended_at > now() - interval '30 days'
"""

LIVE_SQL = """
SELECT count(*) FILTER (WHERE c.status = 'answered') AS talking,
       count(*) FILTER (WHERE c.status IS NULL OR c.status NOT IN ('answered')) AS ringing
  FROM campaign_prospects p
  LEFT JOIN campaign_attempts a ON a.prospect_id = p.id AND a.n = p.attempts
  LEFT JOIN calls c ON c.id = a.call_id
 WHERE p.campaign_id = $1 AND p.status = 'dialing'
"""


SEATS_SQL = """
SELECT count(*)
  FROM campaign_prospects p
  JOIN campaign_attempts a ON a.prospect_id = p.id AND a.n = p.attempts
  JOIN calls c ON c.id = a.call_id
 WHERE p.campaign_id = $1 AND p.status = 'dialing' AND c.status = 'answered'
   AND c.agent IS NOT NULL
"""

# What a call holding a seat carries in `calls.agent` until its agent leg is recorded.
SEAT = {"state": "requested", "seat": True}


@dataclass(frozen=True)
class Stats:
    recent_dials: int
    recent_answered: int
    answered_30d: int
    abandoned_30d: int

    @property
    def answer_rate(self) -> float | None:
        return self.recent_answered / self.recent_dials if self.recent_dials else None

    @property
    def abandon_rate(self) -> float | None:
        return self.abandoned_30d / self.answered_30d if self.answered_30d else None


def dial_ratio(stats: Stats, max_abandon_rate: float, max_ratio: float) -> float:
    """Dials per free agent (≥ 1): see the module doc."""
    if stats.recent_dials < MIN_DIALS or not stats.recent_answered or max_abandon_rate <= 0:
        return 1.0
    base = min(max_ratio, 1.0 / (stats.recent_answered / stats.recent_dials))
    projected = (stats.abandoned_30d + 1) / (stats.answered_30d + 1)
    half = max_abandon_rate / 2
    headroom = min(1.0, max(0.0, (max_abandon_rate - projected) / half))
    return round(1.0 + (base - 1.0) * headroom, 3)


async def stats(conn: asyncpg.Connection | asyncpg.Pool, campaign_id: uuid.UUID) -> Stats:
    row = await conn.fetchrow(STATS_SQL, campaign_id, LIVE_WINDOW)
    return Stats(
        row["recent_dials"], row["recent_answered"], row["answered_30d"], row["abandoned_30d"]
    )


def worst_case_extra(stats: Stats, free: int, max_abandon_rate: float) -> int:
    """Dials beyond the free agents that could all be answered and abandoned at once with the
    rolling rate still ≤ the cap (module doc)."""
    if max_abandon_rate <= 0:
        return 0
    budget = max_abandon_rate * (stats.answered_30d + free) - stats.abandoned_30d
    return max(0, math.floor(budget / (1 - max_abandon_rate)))


async def predictive_room(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, pacing: dict[str, Any]
) -> tuple[int, float]:
    """(dials to place now, the ratio): free agents × ratio, less the dials still ringing,
    and never more in flight than the free agents plus the worst case's extra dials."""
    s = await stats(conn, campaign_id)
    cap = float(pacing.get("max_abandon_rate", 0.03))
    ratio = dial_ratio(s, cap, float(pacing.get("max_ratio", 3.0)))
    live = await conn.fetchrow(LIVE_SQL, campaign_id)
    agents = int(pacing.get("max_agent_sessions") or pacing["max_concurrent"])
    free = max(0, agents - live["talking"])
    by_ratio = math.floor(free * ratio) - live["ringing"]
    worst = free + worst_case_extra(s, free, cap) - live["ringing"]
    return max(0, min(by_ratio, worst)), ratio


async def progressive_room(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, pacing: dict[str, Any]
) -> int:
    """Progressive with `max_agent_sessions`: one dial per free agent session, so no answer
    ever waits for one."""
    live = await conn.fetchrow(LIVE_SQL, campaign_id)
    return max(0, int(pacing["max_agent_sessions"]) - live["talking"] - live["ringing"])


async def take_seat(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, call_id: uuid.UUID, seats: int
) -> bool | None:
    """Reserve one of the campaign's `seats` agent sessions for an answered call (in the
    caller's transaction; serialised per campaign, so two workers cannot take the last one):
    True taken, False all taken, None the call has an agent already or is not answered."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('campaign-seats:' || $1::text, 0))",
        str(campaign_id),
    )
    free = await conn.fetchval(
        "SELECT agent IS NULL AND status = 'answered' FROM calls WHERE id = $1 FOR UPDATE",
        call_id,
    )
    if not free:
        return None
    if await conn.fetchval(SEATS_SQL, campaign_id) >= seats:
        return False
    await conn.execute(
        "UPDATE calls SET agent = $2::jsonb, updated_at = now() WHERE id = $1", call_id, SEAT
    )
    return True


async def ratio_of(
    conn: asyncpg.Connection | asyncpg.Pool, campaign_id: uuid.UUID, pacing: dict[str, Any]
) -> float:
    """The current dial ratio (1.0 for a progressive campaign), for GET and campaign.progress."""
    if pacing.get("mode") != "predictive":
        return 1.0
    return dial_ratio(
        await stats(conn, campaign_id),
        float(pacing.get("max_abandon_rate", 0.03)),
        float(pacing.get("max_ratio", 3.0)),
    )
