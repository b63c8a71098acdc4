"""Accept (API): decide outside any transaction, then commit with the other accepts in flight.

One transaction holds the idempotency claim, the call row, the guardrail verdict event,
the acceptance event and the dispatch job (see groupcommit.py). The channel is taken from
the trunk pool first (``try_acquire``, holder = call id): a full pool answers 429
``pool_exhausted`` with Retry-After and nothing is stored, so the same Idempotency-Key may
simply retry. A keyed request claims its key before all of that (keygate.py): concurrent
duplicates, in any process, wait for its answer and replay it without taking a channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway import queue
from gateway.calls import repo
from gateway.calls.schemas import PlaceCall
from gateway.calls.service import (
    CALL_DISPATCH_QUEUE,
    call_from_row,
    event,
)
from gateway.core.actions import OutboundAction
from gateway.core.errors import ValidationFailed
from gateway.core.ids import new_id
from gateway.events.outbox import NewEvent, emit
from gateway.http import idempotency
from gateway.pipeline.accept import denial
from gateway.pipeline.calls.route import PoolFull, route_call, sip_host
from gateway.pipeline.didcache import DidCache
from gateway.pipeline.groupcommit import GroupCommitter, Outcome
from gateway.pipeline.keygate import KeyGate
from gateway.providers.agents.sandbox import SandboxAgents
from gateway.providers.registry import ProviderRegistry, ProviderUnavailable
from gateway.settings import Settings
from guardrails.chain import GuardrailChain
from guardrails.verdicts import Defer, Deny, Verdict
from sip.asterisk import AsteriskVoice
from sip.pools import (
    PoolExhausted,
    TrunkPools,
    UnknownPool,
)

# Writes a caller's row (e.g. a campaign attempt) for the new call id, in the call's transaction.
Attach = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[None]]


@dataclass
class CallPipeline:
    db: asyncpg.Pool
    chain: GuardrailChain
    registry: ProviderRegistry
    settings: Settings
    pools: TrunkPools
    dids: DidCache | None = None  # routes from memory (didcache.py); None: read every time
    committer: GroupCommitter[CallPlan] = field(init=False)
    gate: KeyGate = field(init=False)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(self.db, self._persist_many, name="calls")
        http = self.settings.http
        self.gate = KeyGate(self.db, lease=http.idempotency_lease, wait=http.idempotency_wait)

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
        attach: Attach | None = None,
    ) -> Outcome:
        """Accept a call. ``wait_for_pool`` (campaigns): take no channel now, the dispatch
        waits for one; otherwise a full pool raises PoolFull (429). ``attach`` (campaigns)
        writes its own row in the transaction that creates the call (the campaign attempt:
        the two exist together or not at all).

        Decide outside any transaction (the guardrail chain and the pool use PostgreSQL and
        Redis themselves: a request holding a pooled connection while they wait for another
        would deadlock the pool under load), then commit with the other accepts in flight.
        A keyed request owns its key before it takes a channel; duplicates replay its answer.
        """

        async def work(claim: idempotency.Claim | None) -> Outcome:
            return await self._accept(
                tenant_id, key_id, req, trace_id, wait_for_pool, claim, attach
            )

        if idempotency_key is None:
            return await work(None)
        return await self.gate.run(
            idempotency.Claim(tenant_id, idempotency_key, "POST", "/v1/calls", request_digest),
            work,
        )

    async def _accept(
        self,
        tenant_id: uuid.UUID,
        key_id: str | None,
        req: PlaceCall,
        trace_id: str,
        wait_for_pool: bool,
        claim: idempotency.Claim | None,
        attach: Attach | None = None,
    ) -> Outcome:
        taken: list[tuple[str, str]] = []
        try:
            plan = await self._plan(tenant_id, key_id, req, trace_id, wait_for_pool, taken)
            if attach is not None:
                plan = dataclasses.replace(plan, attach=attach)
            outcome = await self.committer.submit(plan, claim)
            if not outcome.replayed:
                taken.clear()  # committed: the call owns its channel now
            return outcome
        finally:
            for pool, holder in taken:  # refused, replayed or failed: give it back
                await self.pools.get(pool).release(holder)

    async def _plan(
        self,
        tenant_id: uuid.UUID,
        key_id: str | None,
        req: PlaceCall,
        trace_id: str,
        wait_for_pool: bool,
        taken: list[tuple[str, str]],
    ) -> CallPlan:
        try:
            pool = self.pools.get(req.pool)
        except UnknownPool as exc:
            raise ValidationFailed(str(exc), code="unknown_pool") from None
        if req.on_answer is not None and req.on_answer.bridge_to is not None:
            host = sip_host(req.on_answer.bridge_to)
            allowed = self.settings.agents.bridge_hosts
            if host is None or not any(fnmatch.fnmatchcase(host, p) for p in allowed):
                raise ValidationFailed(
                    f"on_answer.bridge_to may only reach {', '.join(allowed) or 'no host'}"
                    " (agents.bridge_hosts)",
                    code="bridge_target_not_allowed",
                )
        if req.on_answer is not None and req.on_answer.agent is not None:
            name = req.on_answer.agent.provider or self.settings.agents.provider
            try:
                self.registry.agent(name)
            except ProviderUnavailable:
                raise ValidationFailed(
                    f"agent provider {name!r} is not configured", code="agents_not_configured"
                ) from None
        call_id = new_id()
        # The channel (Redis) and the route (PostgreSQL) are independent: ask both at once.
        acquire = None
        if not wait_for_pool:
            acquire = asyncio.ensure_future(pool.try_acquire(str(call_id)))
        try:
            route = await route_call(self.db, self.registry, tenant_id, req.from_, self.dids)
        finally:
            if acquire is not None:
                await asyncio.wait({acquire})
                if not acquire.cancelled() and acquire.exception() is None:
                    taken.append((req.pool, str(call_id)))  # given back if anything fails
        if req.on_answer is not None and req.on_answer.agent is not None:
            self._agent_can_hear(req.on_answer.agent.provider, route.provider)
        if acquire is not None and (exc := acquire.exception()) is not None:
            if isinstance(exc, PoolExhausted):
                # The pool is shared by every tenant: say that it is full and when to retry,
                # not how many channels and queued calls the others have (GET /v1/pools).
                raise PoolFull(
                    f"pool {exc.pool!r} has no free channel (size {exc.size})",
                    # Rounded up, as rate limits do: never sooner than the pool can help.
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
                    pool=exc.pool,
                    size=exc.size,
                    retry_after=exc.retry_after,
                ) from None
            raise exc
        action = OutboundAction(
            tenant_id=tenant_id,
            subject=str(call_id),
            channel="voice",
            to=req.to,
            from_=route.from_number,
            purpose=req.purpose,
            trace_id=trace_id,
            key_id=key_id,
            address_state=req.state,
            extra={"provider": route.provider},
        )
        decision = await self.chain.evaluate(action, stage="accept", when_closed=req.when_closed)
        verdict = decision.verdict
        status, send_at = "queued", None
        error_code = error_detail = None
        if isinstance(verdict, Deny):
            status, error_code, error_detail = "rejected", str(verdict.code), verdict.reason
        elif isinstance(verdict, Defer):
            status, send_at = "scheduled", verdict.until
        if status != "queued" and taken:  # not dialling now: the dispatch takes a channel later
            await pool.release(str(call_id))
            taken.clear()
        on_answer = req.on_answer.model_dump(exclude_none=True) if req.on_answer else None
        row: dict[str, Any] = {
            "id": call_id,
            "tenant_id": tenant_id,
            "to": req.to,
            "from": route.from_number,
            "purpose": req.purpose,
            "status": status,
            "pool": req.pool,
            "provider": route.provider,
            "ring_timeout": req.ring_timeout,
            "max_duration": self._max_duration(req),
            "on_answer": on_answer,
            "amd": req.amd,
            "on_machine": req.on_machine,
            "error_code": error_code,
            "error_detail": error_detail,
            "send_at": send_at,
            "trace_id": trace_id,
            "metadata": req.metadata,
            "state": req.state,
        }
        kind = {"queued": "accepted", "scheduled": "scheduled", "rejected": "rejected"}[status]
        accepted = event(
            row,
            kind,
            {
                "to": req.to,
                "pool": req.pool,
                "provider": route.provider,
                "key_id": key_id,
                "on_answer": on_answer,
                "amd": req.amd,
            },
        )
        return CallPlan(row, [accepted, decision.event], verdict, decision.defer_delay())

    def _agent_can_hear(self, agent_provider: str | None, voice_provider: str) -> None:
        """The sandbox agent provider has no media server: its sessions' SIP URIs
        (``…@agents.sandbox.invalid``) are answered only by the sandbox voice provider. Behind
        a real Asterisk the called party would be answered, then dropped as ``agent_left`` a
        moment later: refuse that up front, saying which setting to change."""
        name = agent_provider or self.settings.agents.provider
        if not isinstance(self.registry.agent(name), SandboxAgents):
            return
        if isinstance(self.registry.voice(voice_provider), AsteriskVoice):
            raise ValidationFailed(
                f"on_answer.agent: the sandbox agent provider cannot take the audio of a call "
                f'on {voice_provider}; configure a real one (agents.provider = "ultravox") '
                f"or use on_answer.bridge_to",
                code="agent_provider_unsupported",
            )

    def _max_duration(self, req: PlaceCall) -> int:
        """The call's own cap, fixed now: what it asked for, never above calls.max_duration."""
        cap = self.settings.calls.max_duration
        return cap if req.max_duration is None else min(req.max_duration, cap)

    async def _persist_many(self, conn: asyncpg.Connection, plans: list[CallPlan]) -> list[Outcome]:
        return [await self._persist(conn, plan) for plan in plans]

    async def _persist(self, conn: asyncpg.Connection, plan: CallPlan) -> Outcome:
        row, verdict = plan.row, plan.verdict
        inserted = await repo.insert_call(conn, row)
        if plan.attach is not None:
            await plan.attach(conn, row["id"])
        await emit(conn, *plan.events)
        if isinstance(verdict, Deny):
            return denial(verdict, "/v1/calls", call_id=str(row["id"]), trace_id=row["trace_id"])
        await queue.enqueue(
            conn,
            CALL_DISPATCH_QUEUE,
            {"call_id": str(row["id"])},
            tenant_id=row["tenant_id"],
            trace_id=row["trace_id"],
            max_attempts=self.settings.calls.max_attempts,
            run_after=plan.delay,  # the deferral's wait, on the queue's clock (queue.NewJob)
        )
        body = call_from_row(inserted)
        return Outcome(201, json.loads(body.model_dump_json(by_alias=True)), {})


@dataclass(frozen=True)
class CallPlan:
    """What accept decided before its transaction: the row, its events, the verdict."""

    row: dict[str, Any]
    events: list[NewEvent]
    verdict: Verdict
    delay: float | None = None  # a deferral's wait in seconds (None: due now)
    attach: Attach | None = None  # a row of the caller's, written in the call's transaction
