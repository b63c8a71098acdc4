"""The outbound path for calls: accept → guardrails → pool → dispatch → provider → tracking.

Accept (API): one transaction holds the idempotency claim, the call row, the guardrail verdict
event, the acceptance event and the dispatch job (shared with the other accepts in flight:
see groupcommit.py). The channel is taken from the trunk pool
first (``try_acquire``, holder = call id): a full pool answers 429 ``pool_exhausted`` with
Retry-After and nothing is stored, so the same Idempotency-Key may simply retry.

Dispatch (worker): the guardrail chain runs again (the world changes between accept and dial),
the permit is (re)acquired — the dispatch of a campaign call waits for a channel, fairly, up to
``calls.pool_wait`` — and the attempt row with its key is committed *before* the provider is
asked. Then providers are tried in order:

- the provider took the call: done; its progress comes as reports (``CallService``);
- it failed before doing anything (not connected, refused, 5xx, breaker open): the next
  provider is tried at once (failover);
- it may have acted (timeout, connection lost after the request): the attempt stays open and
  the job is retried *on the same provider under the same key* — never elsewhere, which could
  ring the person twice;
- it refused for good (bad number, no caller id): the call fails.

Control (worker): hangup, bridge two calls, connect the answered call to its AI agent (create
the agent session, dial its SIP URI, bridge when it answers), and the deadlines of an answered
call (max_duration, amd_timeout: jobs with a run_at, committed with the answer). Each is a
queued job, so an API process never needs the AMI connection and a worker that dies mid-action
loses nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from gateway import queue
from gateway.calls import repo
from gateway.calls.schemas import PlaceCall
from gateway.calls.service import (
    CALL_CONTROL_QUEUE,
    CALL_DISPATCH_QUEUE,
    CallService,
    call_from_row,
    event,
)
from gateway.calls.states import FINAL
from gateway.core.actions import OutboundAction
from gateway.core.errors import Problem, ValidationFailed
from gateway.core.ids import new_id
from gateway.events.outbox import NewEvent, emit
from gateway.http import idempotency
from gateway.logs import bind, get_logger
from gateway.messages import repo as messages_repo
from gateway.pipeline.accept import denial
from gateway.pipeline.groupcommit import GroupCommitter, Outcome
from gateway.providers.agents.base import AgentError
from gateway.providers.agents.sandbox import SandboxAgents
from gateway.providers.contracts import (
    CallRef,
    CallSpec,
    PermanentProviderError,
    ProviderError,
    SipTarget,
    VoiceProvider,
)
from gateway.providers.health import ProviderHealth
from gateway.providers.registry import ProviderRegistry, ProviderUnavailable
from gateway.providers.sandbox.voice import SandboxVoice
from gateway.resources import Resources
from gateway.settings import Settings
from gateway.supervisor import TaskFactory, periodic
from guardrails.chain import GuardrailChain
from guardrails.verdicts import Defer, Deny, Verdict
from sip import calls as sip_calls
from sip.ami import AMIClient
from sip.asterisk import AsteriskConfig, AsteriskVoice
from sip.calls import CallTracker, LeaderLease
from sip.pools import (
    PoolConfig,
    PoolExhausted,
    TrunkPools,
    TrunkPoolsConfig,
    UnknownPool,
)

log = get_logger(__name__)
# Providers whose own events say when two legs are bridged (AMI BridgeEnter, the sandbox).
_REPORTS_BRIDGES = (AsteriskVoice, SandboxVoice)


class PoolFull(Problem):
    status, code, title = 429, "pool_exhausted", "No channel is free in this pool"


@dataclass(frozen=True)
class CallRoute:
    provider: str
    from_number: str | None


async def route_call(
    conn: asyncpg.Connection | asyncpg.Pool,
    registry: ProviderRegistry,
    tenant_id: uuid.UUID,
    from_: str | None,
) -> CallRoute:
    """A caller id the tenant owns decides the provider (the `dids` table); otherwise config."""
    cfg = registry.route("voice")
    did = await messages_repo.did_for_sending(conn, tenant_id, "voice", from_)
    if from_ is not None and did is None:
        raise ValidationFailed(
            f"{from_} is not one of this tenant's numbers able to make calls",
            code="unknown_sender",
        )
    provider = did["provider"] if did is not None else cfg.primary
    if not registry.has_voice(provider):
        raise ProviderUnavailable(f"voice provider {provider!r} is not configured")
    return CallRoute(provider, did["number"] if did is not None else cfg.default_from)


_SIP_HOST = re.compile(r"^sips?:(?:[^@]+@)?(?P<host>[A-Za-z0-9.\-]+)(?::\d+)?(?:[;?].*)?$")


def sip_host(uri: str) -> str | None:
    match = _SIP_HOST.match(uri)
    return match["host"].lower() if match else None


def call_ref(call: asyncpg.Record | dict[str, Any], *, leg: str = "customer") -> CallRef:
    if leg == "agent":
        agent = call["agent"] or {}
        return CallRef(
            call["provider"],
            _attempt_key(call),
            agent.get("leg_key"),
            agent.get("channel"),
            "agent",
        )
    return CallRef(call["provider"], _attempt_key(call), call["provider_call_id"], call["channel"])


def _attempt_key(call: asyncpg.Record | dict[str, Any]) -> str:
    return sip_calls.attempt_key(call["id"], call["attempt_n"])


# --- accept --------------------------------------------------------------------------------


@dataclass
class CallPipeline:
    db: asyncpg.Pool
    chain: GuardrailChain
    registry: ProviderRegistry
    settings: Settings
    pools: TrunkPools
    committer: GroupCommitter[_Plan] = field(init=False)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(self.db, self._persist_many, name="calls")

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
    ) -> Outcome:
        """Accept a call. ``wait_for_pool`` (campaigns): take no channel now, the dispatch
        waits for one; otherwise a full pool raises PoolFull (429).

        Decide outside any transaction (the guardrail chain and the pool use PostgreSQL and
        Redis themselves: a request holding a pooled connection while they wait for another
        would deadlock the pool under load), then commit with the other accepts in flight.
        """
        claim = None
        if idempotency_key is not None:
            replay = await idempotency.lookup(self.db, tenant_id, idempotency_key, request_digest)
            if replay is not None:
                return Outcome.replay(replay)
            claim = idempotency.Claim(
                tenant_id, idempotency_key, "POST", "/v1/calls", request_digest
            )
        taken: list[tuple[str, str]] = []
        try:
            plan = await self._plan(tenant_id, key_id, req, trace_id, wait_for_pool, taken)
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
    ) -> _Plan:
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
            route = await route_call(self.db, self.registry, tenant_id, req.from_)
        finally:
            if acquire is not None:
                await asyncio.wait({acquire})
                if not acquire.cancelled() and acquire.exception() is None:
                    taken.append((req.pool, str(call_id)))  # given back if anything fails
        if acquire is not None and (exc := acquire.exception()) is not None:
            if isinstance(exc, PoolExhausted):
                # The pool is shared by every tenant: say that it is full and when to retry,
                # not how many channels and queued calls the others have (GET /v1/pools).
                raise PoolFull(
                    f"pool {exc.pool!r} has no free channel (size {exc.size})",
                    headers={"Retry-After": str(max(1, round(exc.retry_after)))},
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
        return _Plan(row, [accepted, decision.event], verdict)

    def _max_duration(self, req: PlaceCall) -> int:
        """The call's own cap, fixed now: what it asked for, never above calls.max_duration."""
        cap = self.settings.calls.max_duration
        return cap if req.max_duration is None else min(req.max_duration, cap)

    async def _persist_many(self, conn: asyncpg.Connection, plans: list[_Plan]) -> list[Outcome]:
        return [await self._persist(conn, plan) for plan in plans]

    async def _persist(self, conn: asyncpg.Connection, plan: _Plan) -> Outcome:
        row, verdict = plan.row, plan.verdict
        inserted = await repo.insert_call(conn, row)
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
            run_at=row["send_at"],
        )
        body = call_from_row(inserted)
        return Outcome(202, json.loads(body.model_dump_json(by_alias=True)), {})


@dataclass(frozen=True)
class _Plan:
    """What accept decided before its transaction: the row, its events, the verdict."""

    row: dict[str, Any]
    events: list[NewEvent]
    verdict: Verdict


# --- dispatch ------------------------------------------------------------------------------


@dataclass
class CallDispatcher:
    db: asyncpg.Pool
    chain: GuardrailChain
    registry: ProviderRegistry
    health: ProviderHealth
    service: CallService
    settings: Settings

    async def __call__(self, job: queue.Job) -> None:
        call_id = uuid.UUID(job.payload["call_id"])
        bind(call_id=str(call_id))
        call, attempts = await asyncio.gather(
            repo.get_call(self.db, call_id), repo.attempts(self.db, call_id)
        )
        if call is None or call["status"] in FINAL:
            return
        if attempts and attempts[-1]["outcome"] == "originated":
            return  # placed already: reports take it from here
        if call["hangup_requested_at"] is not None:
            await self._finish(call, "canceled", "canceled", "hung up before it was dialled")
            return
        action = OutboundAction(
            tenant_id=call["tenant_id"],
            subject=str(call_id),
            channel="voice",
            to=call["to"],
            from_=call["from"],
            purpose=call["purpose"],
            trace_id=call["trace_id"],
            extra={"provider": call["provider"]},
        )
        # The guardrails (PostgreSQL, Redis) and the channel (Redis) at once; a refusal gives
        # the channel back below.
        decision, admitted = await asyncio.gather(
            self.chain.evaluate(action, stage="dispatch"),
            self._admit(call),
            return_exceptions=True,
        )
        if isinstance(decision, BaseException):
            raise decision
        if isinstance(decision.verdict, Deny):
            async with self.db.acquire() as conn, conn.transaction():
                await emit(conn, decision.event)
            await self._finish(
                call, "rejected", str(decision.verdict.code), decision.verdict.reason
            )
            return
        if isinstance(decision.verdict, Defer):
            until = decision.verdict.until
            async with self.db.acquire() as conn, conn.transaction():
                await emit(conn, decision.event)
                await conn.execute(
                    "UPDATE calls SET status = 'scheduled', send_at = $2, updated_at = now() "
                    "WHERE id = $1 AND status IN ('queued', 'scheduled')",
                    call_id,
                    until,
                )
            await self.service.release_permit(call_id, call["pool"])
            raise queue.Reschedule(until, decision.verdict.reason)
        assert decision.cleared is not None
        if isinstance(admitted, BaseException):
            raise admitted
        if call["status"] == "scheduled":
            async with self.db.acquire() as conn, conn.transaction():
                moved = await repo.move_status(conn, call_id, "queued")
                if moved is not None:
                    await emit(conn, event(moved, "queued", {"source": "dispatch"}))
        failed_over = {a["provider"] for a in attempts if a["outcome"] == "failed_over"}
        first = attempts[0]["provider"] if attempts else call["provider"]
        reused = attempts[-1] if attempts and attempts[-1]["outcome"] is None else None
        if reused is not None:  # an ambiguous try: only its own provider may be asked again
            candidates = [reused["provider"]]
        else:
            candidates = [
                p for p in self.service.candidates(call, first=first) if p not in failed_over
            ]
        if not candidates:
            await self._finish(call, "failed", "no_provider", "every voice provider failed")
            return
        errors: list[str] = []
        verdict_event: NewEvent | None = decision.event
        for name in candidates:
            breaker = self.health.breaker(name)
            permit = await breaker.allow()
            if permit is None:
                errors.append(f"{name}: circuit breaker open")
                continue
            async with self.db.acquire() as conn, conn.transaction():
                attempt = await repo.open_attempt(conn, call_id, name, sip_calls.attempt_key)
                if verdict_event is not None:  # the dispatch-stage verdict, recorded once
                    await emit(conn, verdict_event)
                    verdict_event = None
                await emit(
                    conn,
                    event(
                        call,
                        "attempt_started",
                        {
                            "n": attempt["n"],
                            "provider": name,
                            "attempt_key": attempt["attempt_key"],
                        },
                    ),
                )
            provider = self.registry.voice(name)
            spec = CallSpec(
                call_id=str(call_id),
                trace_id=call["trace_id"],
                ring_timeout=call["ring_timeout"],
                amd=call["amd"],
                retry=attempt["reused"],
                max_duration=call["max_duration"],
            )
            started = time.perf_counter()
            try:
                result = await provider.originate(decision.cleared, attempt["attempt_key"], spec)
            except ProviderError as exc:
                latency = time.perf_counter() - started
                outcome = "timeout" if exc.code == "timeout" else "failure"
                if isinstance(exc, PermanentProviderError):
                    outcome = "success"  # the provider worked; the request was wrong
                await breaker.record(permit, outcome, latency)  # type: ignore[arg-type]
                await self._attempt_failed(call, attempt, name, exc, latency)
                if not exc.transient:
                    await self._finish(call, "failed", exc.code or "provider_refused", exc.detail)
                    return
                if exc.ambiguous:
                    raise queue.RetryableError(
                        f"{name}: {exc.detail} (may have been placed; retrying under the same key)"
                    ) from exc
                errors.append(f"{name}: {exc.detail}")
                continue
            latency = time.perf_counter() - started
            await asyncio.gather(
                breaker.record(permit, "success", latency),
                self._originated(call_id, attempt, name, result.provider_call_id, latency),
            )
            return
        raise queue.RetryableError("; ".join(errors) or "no voice provider admitted the call")

    async def _admit(self, call: asyncpg.Record) -> None:
        """Hold a channel of the call's pool: refresh the API's permit, or wait fairly."""
        try:
            pool = self.service.pools.get(call["pool"])
        except UnknownPool:
            await self._finish(call, "failed", "unknown_pool", f"no pool {call['pool']!r}")
            raise queue.PermanentError(f"unknown pool {call['pool']}") from None
        try:
            await pool.acquire(str(call["id"]), timeout=self.settings.calls.pool_wait)
        except PoolExhausted as exc:
            async with self.db.acquire() as conn, conn.transaction():
                await emit(
                    conn,
                    # The pool's size, not the trunk's load: that is other tenants' traffic.
                    event(call, "waiting_for_pool", {"pool": exc.pool, "size": exc.size}),
                )
            until = datetime.now(UTC) + timedelta(seconds=max(0.5, exc.retry_after))
            raise queue.Reschedule(until, f"pool {exc.pool} is full") from exc

    async def _attempt_failed(
        self,
        call: asyncpg.Record,
        attempt: dict[str, Any],
        provider: str,
        exc: ProviderError,
        latency: float,
    ) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            if not (exc.transient and exc.ambiguous):  # an ambiguous attempt stays open
                await repo.close_attempt(
                    conn,
                    call["id"],
                    attempt["n"],
                    "transient_error" if exc.transient else "permanent_error",
                    latency_ms=latency * 1000,
                    error=f"{exc.code}: {exc.detail}",
                )
            await emit(
                conn,
                event(
                    call,
                    "attempt_failed",
                    {
                        "n": attempt["n"],
                        "provider": provider,
                        "transient": exc.transient,
                        "ambiguous": exc.transient and exc.ambiguous,
                        "code": exc.code,
                        "error": exc.detail,
                        "latency_ms": round(latency * 1000, 2),
                    },
                ),
            )

    async def _originated(
        self,
        call_id: uuid.UUID,
        attempt: dict[str, Any],
        provider: str,
        provider_call_id: str,
        latency: float,
    ) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            # Call row first, then its attempt: the order every report takes (repo.
            # call_by_attempt_key), so a callback racing this commit waits instead of
            # deadlocking against it.
            call = await repo.get_call(conn, call_id, lock=True)
            assert call is not None
            closed = await repo.close_attempt(
                conn,
                call_id,
                attempt["n"],
                "originated",
                latency_ms=latency * 1000,
                provider_call_id=provider_call_id,
                only_open=True,
            )
            if not closed:
                return  # its reports were faster: it ended or failed over already
            await emit(
                conn,
                event(
                    call,
                    "originated",
                    {
                        "n": attempt["n"],
                        "provider": provider,
                        "provider_call_id": provider_call_id,
                        "latency_ms": round(latency * 1000, 2),
                    },
                ),
            )
            moved = await repo.move_status(
                conn,
                call_id,
                "dialing",
                provider_call_id=None if call["provider_call_id"] else provider_call_id,
            )
            if moved is not None:
                await emit(conn, event(moved, "dialing", {"source": "dispatch", "n": attempt["n"]}))
            elif call["provider_call_id"] is None:
                await repo.update_call(conn, call_id, provider_call_id=provider_call_id)
            hangup = call["hangup_requested_at"] is not None or call["status"] == "canceled"
            if hangup:  # hung up while we were dialling: the control job may have found nothing
                await queue.enqueue(
                    conn,
                    CALL_CONTROL_QUEUE,
                    {"op": "hangup", "call_id": str(call_id), "force": True},
                    tenant_id=call["tenant_id"],
                    trace_id=call["trace_id"],
                    max_attempts=self.settings.calls.max_attempts + 2,
                )

    async def _finish(self, call: asyncpg.Record, status: str, code: str, detail: str) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            moved = await repo.move_status(
                conn, call["id"], status, error_code=code, error_detail=detail[:500]
            )
            if moved is None:
                return
            await repo.close_attempt(
                conn, call["id"], moved["attempt_n"], "permanent_error", only_open=True
            )
            await emit(
                conn,
                event(moved, status, {"source": "dispatch", "error_code": code, "error": detail}),
                event(moved, "permit_released", {"pool": moved["pool"]}),
            )
        await self.service.release_permit(call["id"], call["pool"])

    async def on_dead(self, job: queue.Job, reason: str) -> None:
        """The retry budget is spent: the call fails, and its channel is given back."""
        call = await repo.get_call(self.db, uuid.UUID(job.payload["call_id"]))
        if call is not None and call["status"] not in FINAL:
            await self._finish(call, "failed", "retries_exhausted", reason)


# --- control -------------------------------------------------------------------------------


@dataclass
class CallController:
    db: asyncpg.Pool
    registry: ProviderRegistry
    service: CallService
    settings: Settings

    async def __call__(self, job: queue.Job) -> None:
        op = job.payload["op"]
        call_id = uuid.UUID(job.payload["call_id"])
        bind(call_id=str(call_id), op=op)
        call = await repo.get_call(self.db, call_id)
        if call is None:
            return
        try:
            await getattr(self, f"_op_{op}")(call, job.payload)
        except (ProviderError, AgentError) as exc:
            transient = exc.transient
            if transient:
                raise queue.RetryableError(f"{op}: {exc}") from exc
            await self._failed(call, op, exc)

    async def _failed(self, call: asyncpg.Record, op: str, exc: Exception) -> None:
        code = getattr(exc, "code", None)
        async with self.db.acquire() as conn, conn.transaction():
            await emit(
                conn, event(call, "control_failed", {"op": op, "code": code, "error": str(exc)})
            )
            if op in ("connect", "bridge_legs"):  # an AI call with no AI: end it
                fresh = await repo.get_call(conn, call["id"], lock=True)
                if fresh is not None and fresh["status"] not in FINAL:
                    await self.service._request_hangup(conn, fresh, reason="agent_unavailable")

    def _voice(self, call: asyncpg.Record) -> VoiceProvider:
        return self.registry.voice(call["provider"])

    async def _op_hangup(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        if call["status"] in FINAL and not payload.get("force"):
            return
        if call["attempt_n"] == 0:
            return  # never dialled: the dispatcher cancels it
        # The called party's leg; its end hangs up an agent leg still ringing (hangup_agent),
        # and a bridged agent leg goes with it anyway (04).
        await self._voice(call).hangup(call_ref(call))

    async def _op_max_duration(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        await self.service.max_duration_reached(call["id"])

    async def _op_amd_timeout(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        await self.service.amd_timed_out(call["id"])

    async def _op_hangup_agent(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        agent = call["agent"] or {}
        if agent.get("leg_key") and agent.get("state") != "ended":
            await self._voice(call).hangup(call_ref(call, leg="agent"))

    async def _op_end_agent_session(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        agent = call["agent"] or {}
        if agent.get("session_id") and agent.get("provider"):
            try:
                await self.registry.agent(agent["provider"]).end_session(agent["session_id"])
            except ProviderUnavailable:
                pass

    async def _op_connect(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        """The answered call goes to its AI agent: a new session, or the SIP URI given."""
        if call["status"] != "answered":
            return
        agent: dict[str, Any] = dict(call["agent"] or {})
        if agent and agent.get("state") != "requested":
            return  # dialled already
        if not agent:
            agent = await self._new_agent_leg(call)
            if not agent:
                return
        voice = self._voice(call)
        result = await voice.bridge(call_ref(call), SipTarget(agent["sip_uri"], agent["leg_key"]))
        await self.db.execute(
            """
            UPDATE calls SET agent = jsonb_set(agent, '{state}', to_jsonb($2::text)),
                             updated_at = now()
            WHERE id = $1 AND agent->>'state' = 'requested'
            """,
            call["id"],
            "bridged" if result.joined else "dialing",
        )
        if result.joined:
            await self._joined(call, voice, "agent")

    async def _new_agent_leg(self, call: asyncpg.Record) -> dict[str, Any] | None:
        """Create the agent session (if asked for one) and record the leg about to be dialled."""
        on_answer = call["on_answer"] or {}
        key = _attempt_key(call)
        agent: dict[str, Any] = {"leg_key": sip_calls.agent_key(key), "state": "requested"}
        events = []
        if "agent" in on_answer:
            spec = on_answer["agent"]
            name = spec.get("provider") or self.settings.agents.provider
            session = await self.registry.agent(name).create_session(
                spec, call_id=str(call["id"]), trace_id=call["trace_id"], idempotency_key=key
            )
            agent |= {
                "provider": session.provider,
                "session_id": session.session_id,
                "sip_uri": session.sip_uri,
            }
            events.append(
                event(
                    call,
                    "agent_session_created",
                    {"provider": session.provider, "session_id": session.session_id},
                )
            )
        else:
            agent["sip_uri"] = on_answer["bridge_to"]
        async with self.db.acquire() as conn, conn.transaction():
            fresh = await repo.get_call(conn, call["id"], lock=True)
            if fresh is None or fresh["agent"] or fresh["status"] != "answered":
                return None
            await repo.update_call(conn, call["id"], agent=agent)
            events.append(event(call, "agent_dialing", {"sip_uri": agent["sip_uri"]}))
            await emit(conn, *events)
        return agent

    async def _op_bridge_legs(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        """The agent leg answered: join it with the call."""
        agent = call["agent"] or {}
        if call["status"] != "answered" or agent.get("state") != "answered":
            return
        voice = self._voice(call)
        result = await voice.bridge(call_ref(call), call_ref(call, leg="agent"))
        if result.joined:
            await self._joined(call, voice, "agent")

    async def _op_bridge(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        other = await repo.get_call(self.db, uuid.UUID(payload["other"]))
        if other is None or call["status"] != "answered" or other["status"] != "answered":
            raise PermanentProviderError(
                "both calls must still be answered to be bridged", code="not_bridgeable"
            )
        voice = self._voice(call)
        result = await voice.bridge(call_ref(call), call_ref(other))
        if result.joined:
            await self._joined(call, voice, str(other["id"]))
            await self._joined(other, voice, str(call["id"]))

    async def _joined(self, call: asyncpg.Record, voice: VoiceProvider, with_: str) -> None:
        if isinstance(voice, _REPORTS_BRIDGES):
            return  # its BridgeEnter events report it
        await self.service.record_bridged(call["id"], with_=with_, source=f"control:{voice.name}")

    async def on_dead(self, job: queue.Job, reason: str) -> None:
        call = await repo.get_call(self.db, uuid.UUID(job.payload["call_id"]))
        if call is not None:
            await self._failed(call, job.payload.get("op", "?"), RuntimeError(reason))


# --- wiring --------------------------------------------------------------------------------


@dataclass
class VoiceRuntime:
    """The voice side of one process: pools, voice/agent adapters, AMI connections, trackers."""

    settings: Settings
    resources: Resources
    registry: ProviderRegistry
    pools: TrunkPools
    service: CallService
    pipeline: CallPipeline
    trackers: dict[str, CallTracker] = field(default_factory=dict)
    leases: list[LeaderLease] = field(default_factory=list)
    _started: list[Any] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        res: Resources,
        registry: ProviderRegistry,
        chain: GuardrailChain,
        *,
        track: bool,
    ) -> VoiceRuntime:
        cfg = settings.pools
        pools = TrunkPools(
            res.redis,
            TrunkPoolsConfig(
                trunk=cfg.trunk,
                pools={name: PoolConfig(size, cfg.lease) for name, size in cfg.sizes.items()},
                retry_after_min=cfg.retry_after_min,
                retry_after_max=cfg.retry_after_max,
                reconcile_min_age=cfg.reconcile_min_age,
            ),
        )
        service = CallService(res.db, pools, registry, settings)
        pipeline = CallPipeline(res.db, chain, registry, settings, pools)
        rt = cls(settings, res, registry, pools, service, pipeline)
        try:
            await pipeline.committer.start()
            await rt._start(track)
        except BaseException:
            await rt.close()
            raise
        return rt

    async def _start(self, track: bool) -> None:
        settings, registry, res = self.settings, self.registry, self.resources
        providers = settings.providers
        if providers.sandbox.enabled:
            registry.add_voice(
                SandboxVoice(
                    res.redis,
                    self.service.apply_report,
                    step_delay=providers.sandbox.receipt_delay,
                    call_duration=settings.calls.sandbox_call_duration,
                    ring_for=settings.calls.sandbox_ring_seconds,
                )
            )
        if providers.twilio.enabled and not settings.http.public_base_url:
            log.warning(
                "Twilio voice is off: it reports call progress only to http.public_base_url"
            )
        elif providers.twilio.enabled:
            from gateway.providers.twilio.adapter import TwilioMessaging
            from gateway.providers.twilio.voice import TwilioVoice

            registry.add_voice(
                TwilioVoice(
                    TwilioMessaging.from_settings(settings).config,
                    public_base_url=settings.http.public_base_url,
                    default_from=providers.voice.default_from,
                    hold_seconds=settings.calls.twilio_hold_seconds,
                )
            )
        for name, ast in settings.asterisk.items():
            client = AMIClient(
                ast.host,
                ast.port,
                ast.username,
                ast.secret.get_secret_value(),
                ping_interval=ast.ping_interval,
                action_timeout=ast.action_timeout,
                connect_timeout=ast.connect_timeout,
                reconnect_backoff_initial=ast.reconnect_backoff_initial,
                reconnect_backoff_max=ast.reconnect_backoff_max,
            )
            config = AsteriskConfig(
                name=name,
                endpoint=ast.endpoint,
                dial=ast.dial,
                context=ast.context,
                amd_context=ast.amd_context,
                agent_dial=ast.agent_dial,
                agent_context=ast.agent_context,
                caller_id_name=ast.caller_id_name,
            )
            registry.add_voice(AsteriskVoice(config, client))
        agents = settings.agents
        if agents.sandbox:
            registry.add_agent(SandboxAgents())
        if agents.ultravox.enabled:
            from gateway.providers.agents.ultravox import UltravoxAgents

            if agents.ultravox.api_key is None:
                from gateway.settings import ConfigError

                raise ConfigError("agents.ultravox.api_key", None, "required when enabled")
            registry.add_agent(
                UltravoxAgents(
                    api_base_url=agents.ultravox.api_base_url,
                    api_key=agents.ultravox.api_key.get_secret_value(),
                    timeout=agents.ultravox.timeout,
                )
            )
        for adapter in [*registry.voice_providers(), *registry.agent_providers()]:
            await adapter.start()
            self._started.append(adapter)
        for adapter in registry.voice_providers():
            if not isinstance(adapter, AsteriskVoice):
                continue
            if track:
                ast = settings.asterisk[adapter.config.name]
                tracker = CallTracker(
                    adapter.client,
                    adapter.name,
                    self.service,
                    concurrency=settings.calls.tracker_concurrency,
                )
                lease = LeaderLease(
                    res.redis,
                    f"tl:ami:{{{adapter.config.name}}}:tracker",
                    ttl=ast.tracker_lease,
                    on_gained=tracker.reconcile,
                )
                tracker.lease = lease
                tracker.attach()
                self.trackers[adapter.name] = tracker
                self.leases.append(lease)
                lease.start()
            # Only workers dial, hang up and bridge: an API process never opens AMI.
            if track:
                adapter.client.start_background()

    async def close(self) -> None:
        await self.pipeline.committer.close(self.settings.http.shutdown_timeout)
        for lease in self.leases:
            await lease.close()
        for tracker in self.trackers.values():
            await tracker.close()
        for adapter in reversed(self._started):
            try:
                if isinstance(adapter, AsteriskVoice):
                    await adapter.client.close()
                await adapter.close()
            except Exception:
                log.exception("voice adapter did not close cleanly", adapter=adapter.name)
        await self.pools.aclose()


VOICE = web.AppKey("voice", VoiceRuntime)


def call_tasks(
    app: web.Application, res: Resources, health: ProviderHealth, chain: GuardrailChain
) -> dict[str, TaskFactory]:
    """The worker tasks of the voice side."""
    rt = app[VOICE]
    settings = res.settings
    dispatcher = CallDispatcher(res.db, chain, rt.registry, health, rt.service, settings)
    controller = CallController(res.db, rt.registry, rt.service, settings)
    dispatch = queue.Worker(
        db=res.db,
        database_url=settings.database_url(),
        queue=CALL_DISPATCH_QUEUE,
        handler=dispatcher,
        on_dead=dispatcher.on_dead,
        concurrency=settings.calls.dispatch_concurrency,
        lease=settings.calls.lease_seconds,
    )
    control = queue.Worker(
        db=res.db,
        database_url=settings.database_url(),
        queue=CALL_CONTROL_QUEUE,
        handler=controller,
        on_dead=controller.on_dead,
        concurrency=settings.calls.control_concurrency,
        lease=settings.calls.lease_seconds,
    )
    return {
        "call-dispatch": dispatch.run,
        "call-control": control.run,
        "pool-renewer": lambda stopping: periodic(
            stopping, settings.pools.renew_interval, rt.service.renew_permits
        ),
    }
