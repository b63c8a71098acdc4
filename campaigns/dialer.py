"""The campaign dialer: a stateless worker loop; any number of them, killable at any moment.

Each step, on a NOTIFY of the event log (every call or message change emits one) or every
`interval`:

1. **Outcomes** (campaigns/outcomes.py): attempts whose call or message is final are settled
   set-based into the prospect's outcome and what the retry policy says follows; a campaign
   with no prospect left to move is `completed`.
2. **Orphans.** A prospect claimed by a worker that died before its call committed is still
   `dialing` with no attempt row for its n: it is dialled again, under the SAME
   Idempotency-Key — which cannot create a second call (DESIGN principle 4).
3. **Claims** (done right after the outcomes, before the orphans and the DID reviews, so
   that upkeep never sits between a call's end and the next dial). Per running campaign, under its row lock (FOR UPDATE SKIP LOCKED: another worker
   takes another campaign meanwhile): free = max_concurrent − prospects `dialing`; tokens from
   the campaign's `cps` bucket; claim min(free, tokens) due prospects inside the campaign window
   in their own zones (FOR UPDATE SKIP LOCKED), `attempts + 1`. Commit; then each is an
   ordinary call through the one pipeline, `accept(..., wait_for_pool=True)` in pool
   `campaign` (guardrails at accept and at dispatch; the dispatch waits for a channel, never
   a 429), with the key `campaign:<prospect>:<n>` and the attempt row written by `attach` in
   the call's own transaction.

Concurrency: a prospect stays `dialing` until its call is final, so a campaign's live calls
never exceed `max_concurrent`; the pool's semaphore bounds all campaigns together.
The window is read on the injected clock — the guardrail chain's, so a test pins both.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from campaigns import didhealth, outcomes, pacing, repo
from campaigns.callerid import CallerIds
from campaigns.model import CampaignConfig
from campaigns.outcomes import prospect_event
from gateway import db as dbmod
from gateway.calls.schemas import PlaceCall
from gateway.core.errors import Problem
from gateway.core.ids import new_trace_id
from gateway.events.outbox import NOTIFY_CHANNEL, emit
from gateway.events.wake import Wakeup
from gateway.logs import get_logger
from gateway.messages.schemas import SendMessage
from gateway.messages.templates import render
from gateway.providers.contracts import ReputationProvider
from gateway.tenants.service import Principal

log = get_logger(__name__)

POOL = "campaign"

_CLAIM = """
UPDATE campaign_prospects p
   SET status = 'dialing', attempts = p.attempts + 1, claimed_at = now(), updated_at = now()
  FROM (SELECT id FROM campaign_prospects
         WHERE campaign_id = $1 AND status IN ('pending', 'retry_scheduled')
           AND next_attempt_at <= now()
           AND campaign_window_open($3::jsonb, zones, $4)
         ORDER BY next_attempt_at, id
         LIMIT $2
         FOR UPDATE SKIP LOCKED) s
 WHERE p.id = s.id
RETURNING p.id, p.number, p.variables, p.attempts, p.state
"""

_ORPHANS = """
SELECT p.id, p.number, p.variables, p.attempts, p.state, p.campaign_id,
       c.status AS campaign_status
  FROM campaign_prospects p JOIN campaigns c ON c.id = p.campaign_id
 WHERE p.status = 'dialing' AND p.claimed_at < now() - make_interval(secs => $1)
   AND NOT EXISTS (SELECT 1 FROM campaign_attempts a
                    WHERE a.prospect_id = p.id AND a.n = p.attempts)
 ORDER BY p.claimed_at
 LIMIT $2
"""


class CallAcceptor(Protocol):
    async def accept(
        self,
        tenant_id: uuid.UUID,
        key_id: str | None,
        req: PlaceCall,
        *,
        trace_id: str,
        idempotency_key: str | None = None,
        request_digest: bytes = b"",
        wait_for_pool: bool = False,
        attach: Callable[[asyncpg.Connection, uuid.UUID], Awaitable[None]] | None = None,
    ) -> Any: ...


class MessageAcceptor(Protocol):
    async def accept(
        self,
        principal: Principal,
        req: SendMessage,
        *,
        trace_id: str,
        idempotency_key: str | None = None,
        request_digest: bytes = b"",
        attach: Callable[[asyncpg.Connection, uuid.UUID], Awaitable[None]] | None = None,
    ) -> Any: ...


class _Wake(Wakeup):
    """The event log's wake-ups; `running` only for a campaign's start or resume."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__(conn, NOTIFY_CHANNEL)
        self.running = asyncio.Event()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        super()._notified(conn, pid, channel, payload)
        if payload == repo.RUNNING_WAKE:
            self.running.set()

    def clear(self) -> None:
        super().clear()
        self.running.clear()


def attempt_key(prospect_id: int, n: int) -> str:
    """The Idempotency-Key of one attempt: the same on every re-send of it, by any worker."""
    return f"campaign:{prospect_id}:{n}"


@dataclass
class Dialer:
    db: asyncpg.Pool
    database_url: str
    calls: CallAcceptor | None
    messages: MessageAcceptor | None
    clock: Callable[[], datetime]
    interval: float = 0.5
    settle_delay: float = 0.05  # after a NOTIFY, to take a burst of events in one step
    orphan_after: float = 20.0
    orphan_every: float = 2.0
    refused_retry: float = 600.0
    batch: int = 500
    max_claim: int = 200
    pool_size: int = 0  # the campaign pool's channels (0: unknown, no lead)
    dial_lead: float = 0.0  # share of the pool dialled ahead when the pool bounds a campaign
    caller_ids: CallerIds | None = None  # local presence (campaigns/callerid.py)
    health: didhealth.HealthPolicy | None = None  # DID rests and restores, when set
    health_every: float = 5.0
    lookup: ReputationProvider | None = None  # DID reputation (flagged: rested)
    lookup_max_age: float = 86400.0
    _orphans_at: float = field(default=0.0, init=False)
    _health_at: float = field(default=0.0, init=False)
    # Attempts being sent (accept in flight): owned here, awaited or cancelled on the way out.
    _sending: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    idle: bool = field(default=False, init=False)  # set by each step (see `step`)

    async def run(self, stopping: asyncio.Event) -> None:
        """The supervised task: step on every NOTIFY of the event log, at least every
        `interval`, until `stopping`."""
        conn = await dbmod.connect(self.database_url)
        try:
            wake = _Wake(conn)
            await wake.listen()
            while not stopping.is_set():
                wake.clear()
                await self.step()
                if self.idle:  # see `step`: only a campaign's start (or the timer) matters
                    await wake.wait(stopping, self.interval, on=wake.running)
                else:
                    await wake.wait(stopping, self.interval, self.settle_delay)
        finally:
            try:
                await self.drain(timeout=5.0)
            finally:
                await conn.close()
                if self.lookup is not None:
                    await self.lookup.close()

    async def drain(self, timeout: float) -> None:
        """Let attempts being sent finish (up to `timeout`), then cancel the rest: a cancelled
        one is an orphan that another worker re-sends under the same key."""
        if self._sending:
            _, pending = await asyncio.wait(self._sending, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def step(self) -> int:
        """One pass; returns how many prospects it moved (settled + dialled).

        With no campaign running and nothing settled the dialer is `idle`: `run` then steps
        on the timer or when a campaign starts or resumes (repo.set_status's NOTIFY), not on
        each of the event log's wake-ups — every message's and call's change sends one, and a
        step is ~8 round trips that find nothing. An attempt still in flight (a paused
        campaign's) is settled by the timer's step, `interval` after its call or message ends."""
        moved = await self.settle_outcomes()
        await self.complete_finished()
        # Dials first: what the settling freed is claimed before the upkeep below (orphans,
        # DID reviews), which would otherwise sit between a call's end and the next dial.
        running = await repo.running_campaigns(self.db)
        for campaign in running:
            moved += await self.dial_campaign(campaign["id"])
        if time.monotonic() - self._orphans_at >= self.orphan_every:
            self._orphans_at = time.monotonic()
            moved += await self.redial_orphans()
        if self.health is not None and time.monotonic() - self._health_at >= self.health_every:
            self._health_at = time.monotonic()
            await self.review_dids()
        self.idle = not running and not moved and not self._sending
        return moved

    # --- 1. outcomes -------------------------------------------------------------------

    async def settle_outcomes(self) -> int:
        return await outcomes.settle_outcomes(self.db, self.batch, self.refused_retry)

    async def complete_finished(self) -> None:
        await outcomes.complete_finished(self.db)

    async def review_dids(self, at: datetime | None = None) -> tuple[list[str], list[str]]:
        """Rest DIDs answered too seldom, restore rested ones (campaigns/didhealth.py); a
        change is seen by local presence at once in this worker, within its ttl in others."""
        if self.lookup is not None:
            await didhealth.refresh_reputation(
                self.db, self.lookup, max_age=self.lookup_max_age, at=at
            )
        rested, restored = await didhealth.review(
            self.db, self.health or didhealth.HealthPolicy(), at=at
        )
        if (rested or restored) and self.caller_ids is not None:
            self.caller_ids.forget()
        return rested, restored

    # --- 2. orphans --------------------------------------------------------------------

    async def redial_orphans(self) -> int:
        rows = await self.db.fetch(_ORPHANS, self.orphan_after, self.max_claim)
        sent = 0
        for row in rows:
            campaign = await self.db.fetchrow(
                "SELECT id, tenant_id, name, status, channel, purpose, config, "
                "(SELECT t.name FROM tenants t WHERE t.id = campaigns.tenant_id) AS tenant_name "
                "FROM campaigns WHERE id = $1",
                row["campaign_id"],
            )
            if campaign["status"] == "canceled":
                await self._give_up(campaign, row, "canceled", "campaign_canceled")
                continue
            if campaign["status"] != "running":
                continue  # paused: sent when it resumes
            log.info(
                "campaign prospect claimed but never sent: sending it now",
                prospect_id=row["id"],
                n=row["attempts"],
            )
            await self._place_attempt(campaign, row)
            sent += 1
        return sent

    # --- 3. claims and dials -------------------------------------------------------------

    async def dial_campaign(self, campaign_id: uuid.UUID) -> int:
        claimed: list[asyncpg.Record] = []
        async with self.db.acquire() as conn, conn.transaction():
            c = await conn.fetchrow(
                """
                SELECT id, tenant_id, name, status, channel, purpose, config, pace_tokens, pace_at,
                       now() AS now,
                       (SELECT t.name FROM tenants t WHERE t.id = campaigns.tenant_id) AS tenant_name
                  FROM campaigns WHERE id = $1 AND status = 'running' FOR UPDATE SKIP LOCKED
                """,
                campaign_id,
            )
            if c is None:
                return 0
            cfg = CampaignConfig.from_row(c["channel"], c["purpose"], c["config"])
            dialing = await conn.fetchval(
                "SELECT count(*) FROM campaign_prospects WHERE campaign_id = $1 "
                "AND status = 'dialing'",
                campaign_id,
            )
            elapsed = 1.0 if c["pace_at"] is None else (c["now"] - c["pace_at"]).total_seconds()
            tokens = min(max(1.0, cfg.cps), c["pace_tokens"] + max(0.0, elapsed) * cfg.cps)
            k = min(self.dial_limit(cfg.max_concurrent) - dialing, int(tokens), self.max_claim)
            mode = c["config"]["pacing"].get("mode")
            if k > 0 and mode == "predictive":
                room, _ratio = await pacing.predictive_room(
                    conn, campaign_id, c["config"]["pacing"]
                )
                k = min(k, room)
            elif k > 0 and c["config"]["pacing"].get("max_agent_sessions"):
                k = min(k, await pacing.progressive_room(conn, campaign_id, c["config"]["pacing"]))
            if k > 0:
                claimed = await conn.fetch(_CLAIM, campaign_id, k, cfg.window, self.clock())
                tokens -= len(claimed)
            await conn.execute(
                "UPDATE campaigns SET pace_tokens = $2, pace_at = $3 WHERE id = $1",
                campaign_id,
                tokens,
                c["now"],
            )
            await emit(
                conn,
                *(
                    prospect_event(
                        c["tenant_id"],
                        campaign_id,
                        "dialing",
                        {"prospect_id": p["id"], "number": p["number"], "n": p["attempts"]},
                    )
                    for p in claimed
                ),
            )
        for p in claimed:  # sent concurrently; the next step need not wait for them
            task = asyncio.create_task(self._place_attempt(c, p), name=f"campaign-send:{p['id']}")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return len(claimed)

    def dial_limit(self, max_concurrent: int) -> int:
        """Prospects a campaign may have `dialing` at once. Normally max_concurrent; when the
        campaign pool is the tighter bound, the pool plus a lead of dials accepted ahead: they
        wait in the dispatcher for a channel (FIFO, never a 429) and take one the moment it is
        given back, where a dial claimed only after the call's end is settled would leave the
        channel idle for a dialer step, an accept and a dispatch. Live calls still never exceed
        the pool, hence max_concurrent."""
        if not self.pool_size or not self.dial_lead or max_concurrent < self.pool_size:
            return max_concurrent
        return self.pool_size + max(1, math.ceil(self.pool_size * self.dial_lead))

    async def _place_attempt(self, campaign: Any, prospect: Any) -> None:
        """One attempt as an ordinary call or message; never raises (an attempt that could
        not be sent stays `dialing` without its attempt row, and the orphan pass re-sends it
        under the same key)."""
        cfg = CampaignConfig.from_row(campaign["channel"], campaign["purpose"], campaign["config"])
        pid, n = prospect["id"], prospect["attempts"]
        key = attempt_key(pid, n)
        digest = hashlib.sha256(key.encode()).digest()
        metadata = {"campaign_id": str(campaign["id"]), "prospect_id": str(pid), "attempt": str(n)}
        try:
            if cfg.channel == "sms":
                await self._text(campaign, cfg, prospect, key, digest, metadata)
            else:
                await self._call(campaign, cfg, prospect, key, digest, metadata)
        except Problem as exc:
            if exc.status in (409, 429) or exc.status >= 500:
                log.warning("campaign attempt not sent yet", prospect_id=pid, n=n, error=exc.code)
                return
            # Refused for good (a template variable missing, no agent provider…): it fails.
            await self._give_up(campaign, prospect, "done", f"failed:{exc.code}", outcome="failed")
        except Exception:
            log.exception("campaign attempt not sent yet", prospect_id=pid, n=n)

    async def _call(
        self,
        campaign: Any,
        cfg: CampaignConfig,
        prospect: Any,
        key: str,
        digest: bytes,
        metadata: dict[str, str],
    ) -> None:
        if self.calls is None:
            raise RuntimeError("no call pipeline in this process")
        caller_id = cfg.caller_id
        if cfg.local_presence and self.caller_ids is not None:
            caller_id, _why = await self.caller_ids.choose(
                campaign["id"],
                campaign["tenant_id"],
                cfg.caller_id,
                prospect["number"],
                prospect["state"],
                prospect["id"],
            )
        req = PlaceCall.model_validate(
            {
                "to": prospect["number"],
                "from": caller_id,
                "pool": POOL,
                "on_answer": cfg.on_answer,
                "amd": cfg.amd,
                # voicemail_drop: the machine's call goes on, to the message (calls/service.py)
                "on_machine": "hangup"
                if cfg.amd and cfg.on_machine != "voicemail_drop"
                else "continue",
                "ring_timeout": cfg.ring_timeout,
                "max_duration": cfg.max_duration,
                "purpose": cfg.purpose,
                "when_closed": "deny",
                "metadata": metadata,
            }
        )
        pid, n, campaign_id = prospect["id"], prospect["attempts"], campaign["id"]

        async def attach(conn: asyncpg.Connection, call_id: uuid.UUID) -> None:
            await repo.insert_attempt(conn, pid, n, campaign_id, call_id=call_id)

        await self.calls.accept(
            campaign["tenant_id"],
            None,
            req,
            trace_id=new_trace_id(),
            idempotency_key=key,
            request_digest=digest,
            wait_for_pool=True,
            attach=attach,
        )

    async def _text(
        self,
        campaign: Any,
        cfg: CampaignConfig,
        prospect: Any,
        key: str,
        digest: bytes,
        metadata: dict[str, str],
    ) -> None:
        """An sms campaign's text, its attempt row written by `attach` in the message's own
        transaction (as a call's): a worker that dies at any moment leaves either both or
        neither, and an orphan's re-send replays the same message (same key)."""
        if self.messages is None:
            raise RuntimeError("no message pipeline in this process")
        variables = dict(prospect["variables"] or {})
        body: dict[str, Any] = {
            "channel": "sms",
            "to": prospect["number"],
            "from": cfg.caller_id,
            "purpose": cfg.purpose,
            "when_closed": "deny",
            "metadata": metadata,
        }
        if cfg.template is not None:
            body |= {"template": cfg.template, "variables": variables}
        else:
            body["body"] = render(f"campaign {campaign['name']}", cfg.body or "", variables)
        # The tenant's own name: its guardrail policy is chosen by it (guardrails/policy.py).
        principal = Principal(
            campaign["tenant_id"], campaign["tenant_name"], f"campaign:{campaign['id']}", ("*",)
        )
        pid, n, campaign_id = prospect["id"], prospect["attempts"], campaign["id"]

        async def attach(conn: asyncpg.Connection, message_id: uuid.UUID) -> None:
            # Grouped with other accepts in one transaction: a conflict must not fail theirs.
            await conn.execute(
                "INSERT INTO campaign_attempts (prospect_id, n, campaign_id, message_id) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                pid,
                n,
                campaign_id,
                message_id,
            )

        await self.messages.accept(
            principal,
            SendMessage.model_validate(body),
            trace_id=new_trace_id(),
            idempotency_key=key,
            request_digest=digest,
            attach=attach,
        )

    async def _give_up(
        self,
        campaign: Any,
        prospect: Any,
        status: str,
        reason: str,
        *,
        outcome: str | None = None,
    ) -> None:
        """Close an attempt that was never sent (no call, no attempt row)."""
        async with self.db.acquire() as conn, conn.transaction():
            moved = await conn.execute(
                """
                UPDATE campaign_prospects SET status = $3, reason = $4, updated_at = now()
                 WHERE id = $1 AND attempts = $2 AND status = 'dialing'
                """,
                prospect["id"],
                prospect["attempts"],
                status,
                reason,
            )
            if moved.endswith(" 0"):
                return
            data = {"prospect_id": prospect["id"], "number": prospect["number"]}
            events = (
                []
                if outcome is None
                else [prospect_event(campaign["tenant_id"], campaign["id"], outcome, data)]
            )
            events.append(
                prospect_event(
                    campaign["tenant_id"], campaign["id"], status, data | {"reason": reason}
                )
            )
            await emit(conn, *events)
