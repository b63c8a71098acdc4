"""Dispatch (worker): guardrails again, a channel, the attempt row, then the providers in order.

The chain runs again (the world changes between accept and dial), the permit is (re)acquired
— a campaign call waits for a channel, fairly, up to ``calls.pool_wait`` — and the attempt
row with its key is committed *before* the provider is asked. See the package docstring
for what each provider answer leads to.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway import queue
from gateway.calls import repo
from gateway.calls.service import (
    CALL_CONTROL_QUEUE,
    CallService,
    event,
)
from gateway.calls.states import FINAL
from gateway.core.actions import OutboundAction
from gateway.events.outbox import NewEvent, emit
from gateway.logs import bind, get_logger
from gateway.providers.contracts import (
    CallSpec,
    PermanentProviderError,
    ProviderError,
)
from gateway.providers.health import ProviderHealth
from gateway.providers.registry import ProviderRegistry
from gateway.settings import Settings
from guardrails.chain import GuardrailChain
from guardrails.verdicts import Defer, Deny
from sip import calls as sip_calls
from sip.pools import (
    PoolExhausted,
    UnknownPool,
)

log = get_logger(__name__)


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
            address_state=call["state"],
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
            raise queue.Reschedule(until, decision.verdict.reason, now=decision.at)
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
        unreachable: list[str] = []  # our connection to it is down: our outage, not a try
        verdict_event: NewEvent | None = decision.event
        for i, name in enumerate(candidates):
            last = i == len(candidates) - 1
            if last and not await self._connected(name):
                unreachable.append(name)
                continue
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
                amd_after_greeting=call["amd"] and call["on_machine"] == "continue",
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
                if last and exc.code == "ami_not_connected":  # lost between check and send
                    unreachable.append(name)
                    continue
                errors.append(f"{name}: {exc.detail}")
                continue
            latency = time.perf_counter() - started
            await asyncio.gather(
                breaker.record(permit, "success", latency),
                self._originated(call_id, attempt, name, result.provider_call_id, latency),
            )
            return
        if unreachable and not errors:
            await self._wait_for_connection(call, unreachable)  # Reschedule, or fails it
            return
        raise queue.RetryableError("; ".join(errors) or "no voice provider admitted the call")

    async def _connected(self, name: str) -> bool:
        """Is the way to this provider up (the AMI session), waiting a little for it (a
        restart takes seconds)? Providers without a connection of ours always are."""
        wait_ready = getattr(self.registry.voice(name), "wait_ready", None)
        if wait_ready is None:
            return True
        return bool(await wait_ready(self.settings.calls.connect_wait))

    async def _wait_for_connection(self, call: asyncpg.Record, names: list[str]) -> None:
        """No provider could be reached through our own connection: the job comes back in a
        few seconds without spending a try (principle 11), until the call has waited
        ``calls.unavailable_max`` in all — then it fails as provider_unavailable."""
        limit = self.settings.calls.unavailable_max
        waited = await self.db.fetchval(
            "SELECT extract(epoch FROM now() - $1::timestamptz)::float8", call["created_at"]
        )
        what = ", ".join(names)
        if waited >= limit:
            detail = f"no connection to {what} for {waited:.0f} s (calls.unavailable_max)"
            await self._finish(call, "failed", "provider_unavailable", detail)
            return
        delay = min(limit - waited, random.uniform(1.0, 3.0))
        now = datetime.now(UTC)
        raise queue.Reschedule(
            now + timedelta(seconds=delay), f"waiting for the connection to {what}", now=now
        )

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
            now = datetime.now(UTC)
            until = now + timedelta(seconds=max(0.5, exc.retry_after))
            raise queue.Reschedule(until, f"pool {exc.pool} is full", now=now) from exc

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
