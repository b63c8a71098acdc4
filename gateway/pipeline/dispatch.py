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

Jobs run concurrently (the queue worker's slots), and their database steps are shared
(gateway/batching.py): the jobs in flight load their messages with one query, open their
attempts in one transaction and record their outcomes — attempt rows, the provider's ids,
usage, events, status moves, early receipts — in one more, with set-based statements. The
provider calls themselves run side by side. Each job still decides and fails on its own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway import queue
from gateway.batching import Coalescer
from gateway.core.actions import EmailContent, OutboundAction
from gateway.emails.unsubscribe import UnsubscribeLinks
from gateway.events.outbox import NewEvent, emit
from gateway.logs import bind, get_logger
from gateway.messages import batch_repo, repo
from gateway.messages.batch_repo import AttemptOutcome
from gateway.messages.service import StatusMove, apply_status, apply_statuses
from gateway.messages.states import FINAL
from gateway.outage import unavailable
from gateway.providers.breaker import (
    Admission,
    AllProvidersOpen,
    CircuitBreaker,
    Outcome,
    Permit,
    choose,
)
from gateway.providers.contracts import PermanentProviderError, ProviderError, SendResult
from gateway.providers.health import ProviderHealth
from gateway.providers.registry import ProviderRegistry
from guardrails.chain import GuardrailChain
from guardrails.verdicts import Defer, Deny

log = get_logger(__name__)
USAGE_UNIT = {"sms": "sms_segment", "whatsapp": "whatsapp_message", "email": "email"}


@dataclass(frozen=True)
class _Opening:
    msg: asyncpg.Record  # as batch_repo.messages_for_dispatch loaded it
    provider: str  # for a new attempt
    decision: NewEvent  # the dispatch-time allow, with what decided it


@dataclass(frozen=True)
class _Sent:
    msg: asyncpg.Record
    n: int
    provider: str
    latency_ms: float
    permit: Permit  # the breaker's, given back with `health` (see _record_many)
    health: Outcome
    result: SendResult | None = None
    error: ProviderError | None = None


@dataclass
class MessageDispatcher:
    db: asyncpg.Pool
    chain: GuardrailChain
    registry: ProviderRegistry
    health: ProviderHealth
    max_batch: int = 256
    links: UnsubscribeLinks | None = None  # email: the List-Unsubscribe link of each message
    _loads: Coalescer[uuid.UUID, asyncpg.Record | None] = field(init=False, repr=False)
    _opens: Coalescer[_Opening, dict] = field(init=False, repr=False)
    _outcomes: Coalescer[_Sent, None] = field(init=False, repr=False)
    # per breaker: the admissions of the sends in flight, one Redis round trip (their
    # outcomes go back with the outcomes' batch: _record_many)
    _admits: dict[str, Coalescer[None, Admission]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._loads = Coalescer(self._load_many, name="dispatch-load", max_batch=self.max_batch)
        self._opens = Coalescer(self._open_many, name="dispatch-open", max_batch=self.max_batch)
        self._outcomes = Coalescer(
            self._record_many, name="dispatch-outcome", max_batch=self.max_batch
        )

    async def _email(self, msg: asyncpg.Record) -> EmailContent | None:
        if msg["channel"] != "email":
            return None
        url = await self.links.url(msg["id"]) if self.links is not None else None
        return EmailContent(
            subject=msg["subject"] or "",
            text=msg["body"] or None,
            html=msg["html"],
            unsubscribe_url=url,
        )

    async def aclose(self) -> None:
        batchers = [self._loads, self._opens, self._outcomes]
        for batcher in [*batchers, *self._admits.values()]:
            await batcher.aclose()

    async def _admit_shared(self, breaker: CircuitBreaker) -> Admission:
        batcher = self._admits.get(breaker.name)
        if batcher is None:
            batcher = self._admits[breaker.name] = Coalescer(
                lambda items: breaker.admit_many(len(items)), name=f"admit:{breaker.name}"
            )
        return await batcher.submit(None)

    async def __call__(self, job: queue.Job) -> None:
        message_id = uuid.UUID(job.payload["message_id"])
        bind(message_id=str(message_id))
        # Read by the claim (batch_repo.DISPATCH_ATTACH) unless it could not match the id.
        msg = job.attached if job.attached is not None and job.attached["id"] is not None else None
        if msg is None:
            msg = await self._loads.submit(message_id)
        if msg is None or msg["status"] in FINAL:
            return
        if msg["status"] == "dead_lettered":  # an operator replayed its dead letter
            await self._requeue(msg, job)
        if msg["handed_over"]:
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
            email=await self._email(msg),
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
        attempt = await self._opens.submit(
            _Opening(
                msg,
                msg["provider"] or self.registry.route(msg["channel"]).primary,
                decision.event,
            )
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
            await self._outcomes.submit(
                _Sent(msg, attempt["n"], provider_name, latency, permit, outcome, error=exc)
            )
            if isinstance(exc, PermanentProviderError):
                return
            raise queue.RetryableError(f"{provider_name}: {exc.detail}") from exc
        latency = (time.perf_counter() - started) * 1000
        await self._outcomes.submit(
            _Sent(msg, attempt["n"], provider_name, latency, permit, "success", result)
        )

    async def _load_many(self, ids: list[uuid.UUID]) -> list[asyncpg.Record | None]:
        found = await batch_repo.messages_for_dispatch(self.db, ids)
        return [found.get(i) for i in ids]

    async def _open_many(self, openings: list[_Opening]) -> list[dict]:
        """Open (or reuse) each message's attempt and record that it started, in one
        transaction committed before any of these sends: a worker killed mid-send leaves
        the attempt that the next claim reuses, key and provider alike. Then ask the
        breakers (`_pre_admit`).

        An attempt with no outcome is reused (a crash mid-send: the provider may already
        have the request under its key); otherwise the next one starts."""
        attempts: list[dict] = []
        rows: list[tuple[uuid.UUID, int, str, str]] = []
        events: list[NewEvent] = []
        for opening in openings:
            msg = opening.msg
            last_n = msg["last_n"]
            if last_n is not None and msg["last_outcome"] is None:
                attempt = {
                    "n": last_n,
                    "attempt_key": msg["last_key"],
                    "provider": msg["last_provider"],
                    "reused": True,
                    "previous": None,
                }
            else:
                n = 1 if last_n is None else last_n + 1
                previous = None
                if last_n is not None:
                    previous = {
                        "n": last_n,
                        "provider": msg["last_provider"],
                        "outcome": msg["last_outcome"],
                    }
                attempt = {
                    "n": n,
                    "attempt_key": f"{msg['id']}:{n}",
                    "provider": opening.provider,
                    "reused": False,
                    "previous": previous,
                }
                rows.append((msg["id"], n, attempt["attempt_key"], opening.provider))
            attempts.append(attempt)
            events += [
                opening.decision,
                NewEvent(
                    msg["tenant_id"],
                    "message.attempt_started",
                    str(msg["id"]),
                    msg["trace_id"],
                    {"n": attempt["n"], "provider": attempt["provider"]},
                ),
            ]
        async with self.db.acquire() as conn, conn.transaction():
            await batch_repo.insert_attempts(conn, rows)
            await emit(conn, *events)
        await self._pre_admit(openings, attempts)
        return attempts

    async def _record_many(self, sends: list[_Sent]) -> list[None]:
        """The outcomes of these sends stored (_store_outcomes), and given to their breakers
        in the same batch (no round trip of their own per send) — once: after the write, or
        when it failed for good. A batch that failed otherwise is run again one send at a
        time (gateway/batching.py), and each feeds its breaker then."""
        try:
            await self._store_outcomes(sends)
        except Exception as exc:
            if len(sends) == 1 or unavailable(exc) is not None:
                await self._feed_breakers(sends)
            raise
        await self._feed_breakers(sends)
        return [None] * len(sends)

    async def _store_outcomes(self, sends: list[_Sent]) -> None:
        """Every outcome of these sends in one transaction: the attempts closed; for an
        accepted send the provider's id, the usage and the `message.dispatched` event, then
        the receipts that came before the id was stored; for a failure its event and, when
        permanent, the message `failed`."""
        outcomes: list[AttemptOutcome] = []
        events: list[NewEvent] = []
        for sent in sends:
            msg = sent.msg
            if sent.result is not None:
                ref = sent.result.provider_message_id
                outcomes.append(
                    AttemptOutcome(
                        msg["id"],
                        sent.n,
                        "accepted",
                        sent.latency_ms,
                        provider=sent.provider,
                        provider_message_id=ref,
                        usage=(
                            msg["tenant_id"],
                            msg["channel"],
                            USAGE_UNIT[msg["channel"]],
                            msg["segments"] if msg["channel"] == "sms" else 1,  # an email: 1
                        ),
                    )
                )
                data = {
                    "n": sent.n,
                    "provider": sent.provider,
                    "provider_message_id": ref,
                    "latency_ms": round(sent.latency_ms, 2),
                }
                events.append(_event(msg, "message.dispatched", data))
            else:
                exc = sent.error
                assert exc is not None
                outcomes.append(
                    AttemptOutcome(
                        msg["id"],
                        sent.n,
                        "transient_error" if exc.transient else "permanent_error",
                        sent.latency_ms,
                        error=f"{exc.code}: {exc.detail}",
                    )
                )
                data = {
                    "n": sent.n,
                    "provider": sent.provider,
                    "transient": exc.transient,
                    "code": exc.code,
                    "error": exc.detail,
                    "latency_ms": round(sent.latency_ms, 2),
                }
                events.append(_event(msg, "message.attempt_failed", data))
        refs = [(s.provider, s.result.provider_message_id) for s in sends if s.result is not None]
        by_id = {s.msg["id"]: s for s in sends}
        async with self.db.acquire() as conn, conn.transaction():
            await batch_repo.lock_provider_refs(conn, refs)
            orphans = await batch_repo.record_outcomes(conn, outcomes)
            await emit(conn, *events)
            moves = []  # the moves the sends decided, then the receipts that came early
            for sent in sends:
                if sent.error is not None and not sent.error.transient:
                    moves.append(
                        StatusMove(
                            sent.msg,
                            sent.error.outcome,  # failed, or an email's hard bounce
                            source=f"send:{sent.provider}",
                            error_code=sent.error.code,
                            error_detail=sent.error.detail,
                        )
                    )
                elif sent.result is not None and sent.result.status != "queued":
                    moves.append(
                        StatusMove(sent.msg, sent.result.status, source=f"send:{sent.provider}")
                    )
            for orphan in orphans:  # receipts that arrived before their message had the id
                sent = by_id[orphan["message_id"]]
                moves.append(
                    StatusMove(
                        sent.msg,
                        orphan["status"],
                        source=f"receipt:{sent.provider}",
                        error_code=orphan["error_code"],
                    )
                )
            await apply_statuses(conn, moves)

    async def _feed_breakers(self, sends: list[_Sent]) -> None:
        """Give each breaker its sends' outcomes, one round trip per provider. The provider's
        answers matter more than samples of its health: with Redis away (or a breaker that
        fails otherwise) the samples are dropped and the outcomes are still recorded."""
        by_provider: dict[str, list[tuple[Permit, Outcome, float]]] = {}
        for sent in sends:
            by_provider.setdefault(sent.provider, []).append(
                (sent.permit, sent.health, sent.latency_ms / 1000)
            )
        for provider, outcomes in by_provider.items():
            try:
                await self.health.breaker(provider).record_many(outcomes)
            except Exception as exc:
                if unavailable(exc) is None:
                    log.exception("breaker outcomes not recorded", provider=provider)
                else:
                    log.debug("breaker outcomes not recorded (Redis away)", provider=provider)

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

    def _breakers(
        self, msg: asyncpg.Record, attempt: dict
    ) -> tuple[CircuitBreaker, CircuitBreaker | None]:
        """The breakers to ask, in order (see `_admit`)."""
        primary = attempt["provider"]
        fallback = self.registry.route(msg["channel"]).fallback
        usable = (
            fallback if fallback and fallback != primary and self.registry.has(fallback) else None
        )
        if attempt["reused"] or usable is None:
            return self.health.breaker(primary), None
        previous = attempt["previous"]
        failed_here = (
            previous is not None
            and previous["provider"] == primary
            and previous["outcome"] == "transient_error"
        )
        first, second = self.health.breaker(primary), self.health.breaker(usable)
        return (second, first) if failed_here else (first, second)

    async def _pre_admit(self, openings: list[_Opening], attempts: list[dict]) -> None:
        """Ask each attempt's first breaker (`_breakers`) in the openings' batch, one
        admit_many per breaker, the answer (or the error asking met) kept as the attempt's
        "admission" for `_admit`: no batcher, future and loop turn of its own per send."""
        asks: dict[str, tuple[CircuitBreaker, list[dict]]] = {}
        for opening, attempt in zip(openings, attempts, strict=True):
            try:  # never raises: the attempts are committed, a batch run again would reopen them
                first, _ = self._breakers(opening.msg, attempt)
            except Exception:
                continue  # `_admit` meets it again, for this send alone
            asks.setdefault(first.name, (first, []))[1].append(attempt)
        for breaker, asking in asks.values():
            try:
                answers: list[Admission | Exception] = list(await breaker.admit_many(len(asking)))
            except Exception as exc:  # each send meets it, as it would have asking alone
                answers = [exc] * len(asking)
            for attempt, answer in zip(asking, answers, strict=True):
                attempt["admission"] = answer

    async def _admit(self, msg: asyncpg.Record, attempt: dict) -> tuple[str, Permit]:
        """The attempt's provider, or its fallback while the provider's breaker is open.

        An attempt reclaimed after a crash (no outcome yet) may already have reached the
        provider under its key, so it stays with that provider whatever the breaker says.
        A retry after a transient failure on the primary tries the fallback first: the
        breaker's half-open trials should be fresh traffic, not the message that just failed.
        The first breaker was asked with the attempt's opening (`_pre_admit`).
        """
        primary = attempt["provider"]
        first, second = self._breakers(msg, attempt)
        asked = attempt.pop("admission", None)

        async def admit(breaker: CircuitBreaker) -> Admission:
            if asked is None or breaker.name != first.name:
                return await self._admit_shared(breaker)
            if isinstance(asked, Exception):
                raise asked
            return asked

        try:
            breaker, permit = await choose(first, second, admit=admit)
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


def _event(msg: asyncpg.Record, kind: str, data: dict) -> NewEvent:
    return NewEvent(msg["tenant_id"], kind, str(msg["id"]), msg["trace_id"], data)
