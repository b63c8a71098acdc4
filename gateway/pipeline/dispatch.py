"""Dispatching a queued message: the guardrails again, then a provider, then tracking.

The chain runs again here because the world changes between accept and send
(a number added to DNC, an opt-out, a closed calling window). The attempt row
— with its provider idempotency key — is committed *before* the provider is
called, so a worker killed mid-send leaves a record that the next claim
reuses: the retry carries the same key and the provider does not send twice.

Our own outage (PostgreSQL or Redis unreachable, e.g. the breaker's state) is
raised as it is: the queue worker tells it from a provider failure and puts the
job back without spending an attempt (principle 11). Once the provider has
answered, a breaker that cannot record the outcome must not lose the answer.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway import queue
from gateway.core.actions import OutboundAction
from gateway.events.outbox import NewEvent, emit
from gateway.logs import bind, get_logger
from gateway.messages import repo
from gateway.messages.service import apply_orphans, apply_status
from gateway.messages.states import FINAL
from gateway.outage import unavailable
from gateway.providers.breaker import AllProvidersOpen, Outcome, Permit, choose
from gateway.providers.contracts import PermanentProviderError, ProviderError
from gateway.providers.health import ProviderHealth
from gateway.providers.registry import ProviderRegistry
from guardrails.chain import GuardrailChain
from guardrails.verdicts import Defer, Deny

log = get_logger(__name__)
USAGE_UNIT = {"sms": "sms_segment", "whatsapp": "whatsapp_message"}


@dataclass
class MessageDispatcher:
    db: asyncpg.Pool
    chain: GuardrailChain
    registry: ProviderRegistry
    health: ProviderHealth

    async def __call__(self, job: queue.Job) -> None:
        message_id = uuid.UUID(job.payload["message_id"])
        bind(message_id=str(message_id))
        msg = await repo.message_for_dispatch(self.db, message_id)
        if msg is None or msg["status"] in FINAL:
            return
        if msg["status"] == "dead_lettered":  # an operator replayed its dead letter
            await self._requeue(msg, job)
        if await self.db.fetchval(
            "SELECT 1 FROM message_attempts WHERE message_id = $1 AND outcome = 'accepted'",
            message_id,
        ):
            return  # already handed to a provider; receipts take it from here
        action = OutboundAction(
            tenant_id=msg["tenant_id"],
            subject=str(message_id),
            channel=msg["channel"],
            to=msg["to_number"],
            from_=msg["from_number"],
            purpose=msg["purpose"],
            trace_id=msg["trace_id"],
            body=msg["body"],
            address_state=msg["recipient_state"],
        )
        decision = await self.chain.evaluate(action, stage="dispatch")
        if isinstance(decision.verdict, Deny):
            async with self.db.acquire() as conn, conn.transaction():
                await emit(conn, decision.event)
                await apply_status(
                    conn,
                    msg,
                    "rejected",
                    source="guardrails:dispatch",
                    error_code=str(decision.verdict.code),
                    error_detail=decision.verdict.reason,
                )
            return
        if isinstance(decision.verdict, Defer):
            async with self.db.acquire() as conn, conn.transaction():
                await emit(conn, decision.event)
                await conn.execute(
                    "UPDATE messages SET status = 'scheduled', send_at = $2, updated_at = now() "
                    "WHERE id = $1 AND status IN ('queued', 'scheduled')",
                    message_id,
                    decision.verdict.until,
                )
            # Due after the same interval the chain measured on its own clock, counted on the
            # queue's (the database's): never at an instant another clock says is past.
            raise queue.Reschedule(decision.verdict.until, decision.verdict.reason, now=decision.at)
        assert decision.cleared is not None
        async with self.db.acquire() as conn, conn.transaction():
            attempt = await repo.open_attempt(
                conn, message_id, msg["provider"] or self.registry.route(msg["channel"]).primary
            )
            await emit(
                conn,
                decision.event,  # the dispatch-time allow, with what decided it
                NewEvent(
                    msg["tenant_id"],
                    "message.attempt_started",
                    str(message_id),
                    msg["trace_id"],
                    {"n": attempt["n"], "provider": attempt["provider"]},
                ),
            )
        provider_name, permit = await self._admit(msg, attempt)
        provider = self.registry.messaging(provider_name)
        started = time.perf_counter()
        try:
            result = await provider.send(decision.cleared, attempt["attempt_key"])
        except ProviderError as exc:
            latency = (time.perf_counter() - started) * 1000
            # A permanent refusal (bad number) is the provider working correctly.
            outcome = (
                "success"
                if isinstance(exc, PermanentProviderError)
                else ("timeout" if exc.code == "timeout" else "failure")
            )
            await self._record(provider_name, permit, outcome, latency / 1000)
            await self._failed_attempt(msg, attempt["n"], provider_name, exc, latency, job)
            if isinstance(exc, PermanentProviderError):
                return
            raise queue.RetryableError(f"{provider_name}: {exc.detail}") from exc
        await self._record(provider_name, permit, "success", time.perf_counter() - started)
        latency = (time.perf_counter() - started) * 1000
        async with self.db.acquire() as conn, conn.transaction():
            await repo.lock_provider_ref(conn, provider_name, result.provider_message_id)
            await repo.close_attempt(
                conn,
                message_id,
                attempt["n"],
                "accepted",
                latency_ms=latency,
                provider_message_id=result.provider_message_id,
            )
            await conn.execute(
                "UPDATE messages SET provider = $2, provider_message_id = $3, updated_at = now() WHERE id = $1",
                message_id,
                provider_name,
                result.provider_message_id,
            )
            await emit(
                conn,
                NewEvent(
                    msg["tenant_id"],
                    "message.dispatched",
                    str(message_id),
                    msg["trace_id"],
                    {
                        "n": attempt["n"],
                        "provider": provider_name,
                        "provider_message_id": result.provider_message_id,
                        "latency_ms": round(latency, 2),
                    },
                ),
            )
            await repo.record_usage(
                conn,
                msg["tenant_id"],
                str(message_id),
                msg["channel"],
                USAGE_UNIT[msg["channel"]],
                msg["segments"] if msg["channel"] == "sms" else 1,
                provider_name,
            )
            if result.status != "queued":
                await apply_status(conn, msg, result.status, source=f"send:{provider_name}")
            await apply_orphans(conn, msg, provider_name, result.provider_message_id)

    async def _record(
        self, provider: str, permit: Permit, outcome: Outcome, latency_s: float
    ) -> None:
        """Feed the breaker; with Redis away the provider's answer matters more than one
        sample of its health, so the outcome is dropped and the dispatch goes on."""
        try:
            await self.health.breaker(provider).record(permit, outcome, latency_s)
        except Exception as exc:
            if unavailable(exc) is None:
                raise
            log.debug("breaker outcome not recorded (Redis away)", provider=provider)

    async def _requeue(self, msg: asyncpg.Record, job: queue.Job) -> None:
        """Back from `dead_lettered` to `queued`: the one move back, an operator's replay."""
        async with self.db.acquire() as conn, conn.transaction():
            moved = await conn.fetchval(
                "UPDATE messages SET status = 'queued', error_code = NULL, error_detail = NULL,"
                " updated_at = now() WHERE id = $1 AND status = 'dead_lettered' RETURNING true",
                msg["id"],
            )
            if moved:
                await emit(
                    conn,
                    NewEvent(
                        msg["tenant_id"],
                        "message.requeued",
                        str(msg["id"]),
                        msg["trace_id"],
                        {"job_id": job.id, "reason": "dead_letter_replayed"},
                    ),
                )

    async def _admit(self, msg: asyncpg.Record, attempt: dict) -> tuple[str, Permit]:
        """The attempt's provider, or its fallback while the provider's breaker is open.

        An attempt reclaimed after a crash (no outcome yet) may already have reached the
        provider under its key, so it stays with that provider whatever the breaker says.
        A retry after a transient failure on the primary tries the fallback first: the
        breaker's half-open trials should be fresh traffic, not the message that just failed.
        """
        primary = attempt["provider"]
        fallback = self.registry.route(msg["channel"]).fallback
        usable = (
            fallback if fallback and fallback != primary and self.registry.has(fallback) else None
        )
        if attempt["reused"] or usable is None:
            first, second = self.health.breaker(primary), None
        else:
            previous = attempt["previous"]
            failed_here = (
                previous is not None
                and previous["provider"] == primary
                and previous["outcome"] == "transient_error"
            )
            first, second = self.health.breaker(primary), self.health.breaker(usable)
            if failed_here:
                first, second = second, first
        try:
            breaker, permit = await choose(first, second)
        except AllProvidersOpen as exc:
            now = datetime.now(UTC)
            until = now + timedelta(seconds=max(1.0, exc.retry_after_s))
            raise queue.Reschedule(
                until, f"every provider for {msg['channel']} is unavailable", now=now
            ) from exc
        if breaker.name != primary:
            async with self.db.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE message_attempts SET provider = $3 WHERE message_id = $1 AND n = $2",
                    msg["id"],
                    attempt["n"],
                    breaker.name,
                )
                await emit(
                    conn,
                    NewEvent(
                        msg["tenant_id"],
                        "message.rerouted",
                        str(msg["id"]),
                        msg["trace_id"],
                        {
                            "n": attempt["n"],
                            "from": primary,
                            "to": breaker.name,
                            "reason": "breaker_open",
                        },
                    ),
                )
        return breaker.name, permit

    async def _failed_attempt(
        self,
        msg: asyncpg.Record,
        n: int,
        provider: str,
        exc: ProviderError,
        latency: float,
        job: queue.Job,
    ) -> None:
        outcome = "transient_error" if exc.transient else "permanent_error"
        async with self.db.acquire() as conn, conn.transaction():
            await repo.close_attempt(
                conn, msg["id"], n, outcome, latency_ms=latency, error=f"{exc.code}: {exc.detail}"
            )
            await emit(
                conn,
                NewEvent(
                    msg["tenant_id"],
                    "message.attempt_failed",
                    str(msg["id"]),
                    msg["trace_id"],
                    {
                        "n": n,
                        "provider": provider,
                        "transient": exc.transient,
                        "code": exc.code,
                        "error": exc.detail,
                        "latency_ms": round(latency, 2),
                    },
                ),
            )
            if not exc.transient:
                await apply_status(
                    conn,
                    msg,
                    "failed",
                    source=f"send:{provider}",
                    error_code=exc.code,
                    error_detail=exc.detail,
                )

    async def on_bury(self, conn: asyncpg.Connection, job: queue.Job, reason: str) -> None:
        """The retry budget is spent: park the message as `dead_lettered` (unsent, waiting
        for an operator's replay) and say so with a `message.dead_lettered` event — in the
        transaction that buries the job, so the message never shows `queued` beside its dead
        letter (a crash between two transactions left it so for good)."""
        msg = await repo.message_for_dispatch(conn, uuid.UUID(job.payload["message_id"]))
        if msg is None or msg["status"] in FINAL:
            return
        await apply_status(
            conn,
            msg,
            "dead_lettered",
            source="queue",
            error_code="retries_exhausted",
            error_detail=reason[:500],
            data={"job_id": job.id, "attempts": job.attempts, "reason": reason},
        )
