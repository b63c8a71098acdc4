"""Accepting an outbound message: everything up to a durable, queued (or refused) message.

Everything is decided before any transaction (template, route, guardrail chain); then
the message row, its verdict and acceptance events, its dispatch job and its
idempotency record are committed together — with whatever other accepts are in
flight, by the group committer (groupcommit.py) — and the 201 is sent only once all
of it is durable.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway import queue
from gateway.core.actions import EmailContent, OutboundAction
from gateway.core.errors import Problem, ValidationFailed
from gateway.core.ids import new_id
from gateway.core.segments import count_segments
from gateway.emails.compose import compose
from gateway.emails.unsubscribe import UnsubscribeLinks
from gateway.events.outbox import NewEvent, emit
from gateway.http import idempotency
from gateway.http.metrics import Registry
from gateway.messages import repo
from gateway.messages.schemas import SendMessage
from gateway.messages.service import message_from_row
from gateway.messages.templates import render
from gateway.pipeline import acceptwrite
from gateway.pipeline.didcache import DidCache
from gateway.pipeline.groupcommit import GroupCommitter, Outcome
from gateway.pipeline.keygate import KeyGate
from gateway.pipeline.router import route_message
from gateway.providers.registry import ProviderRegistry
from gateway.settings import Settings
from gateway.tenants.service import Principal
from guardrails.chain import GuardrailChain
from guardrails.verdicts import Defer, Deny, Verdict

DISPATCH_QUEUE = "dispatch"
EMAIL_ENCODING = "utf-8"  # an email's `encoding`; it is one unit (`segments` 1) whatever its size
_DENY_STATUS = {"rate_limited": 429, "frequency_cap": 429}


def denial(verdict: Deny, instance: str, **ids: str) -> Outcome:
    """A guardrail denial as the API answers it: problem+json with the deny code, and
    Retry-After (rounded up, never shorter than the real wait) for rate limits."""
    problem = Problem(
        verdict.reason,
        status=_DENY_STATUS.get(str(verdict.code), 422),
        code=str(verdict.code),
        title="Refused by a guardrail",
        rule=verdict.rule,
        **ids,
    )
    headers = {}
    retry_after = verdict.inputs.get("retry_after_s")
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(float(retry_after))))
    return Outcome(problem.status, problem.body(instance=instance), headers)


@dataclass
class MessagePipeline:
    db: asyncpg.Pool
    chain: GuardrailChain
    registry: ProviderRegistry
    settings: Settings
    metrics: Registry | None = None
    dids: DidCache | None = None  # routes from memory (didcache.py); None: read every time
    committer: GroupCommitter[_Plan] = field(init=False)
    gate: KeyGate = field(init=False)
    links: UnsubscribeLinks = field(init=False)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(
            self.db,
            self._persist_many,
            name="messages",
            metrics=self.metrics,
            write_many=self._write_many,
        )
        http = self.settings.http
        self.gate = KeyGate(self.db, lease=http.idempotency_lease, wait=http.idempotency_wait)
        self.links = UnsubscribeLinks(self.db, self.settings)

    async def start(self) -> None:
        await self.committer.start()

    async def close(self) -> None:
        await self.committer.close(self.settings.http.shutdown_timeout)
        await self.gate.close()

    async def accept(
        self,
        principal: Principal,
        req: SendMessage,
        *,
        trace_id: str,
        idempotency_key: str | None = None,
        request_digest: bytes = b"",
        attach: Attach | None = None,
    ) -> Outcome:
        """Decide outside any transaction, then commit with the other accepts in flight.

        The guardrail chain reads PostgreSQL and Redis itself, so it must not run while
        this request holds a pooled connection in a transaction (N such requests would
        wait on each other for the pool). A keyed request claims its key first (keygate.py):
        duplicates in any process wait for the first try and replay its answer, so the
        chain (and its rate-limit tokens) runs once per key, and the answer is the one
        that was counted.
        """

        async def plan() -> _Plan:
            made = await self._plan(principal, req, trace_id)
            return made if attach is None else dataclasses.replace(made, attach=attach)

        if idempotency_key is None:
            return await self.committer.submit(await plan())

        async def work(claim: idempotency.Claim) -> Outcome:
            return await self.committer.submit(await plan(), claim)

        return await self.gate.run(
            idempotency.Claim(
                principal.tenant_id, idempotency_key, "POST", "/v1/messages", request_digest
            ),
            work,
        )

    async def _plan(self, principal: Principal, req: SendMessage, trace_id: str) -> _Plan:
        message_id = new_id()
        email: EmailContent | None = None
        if req.channel == "email":
            email = await compose(self.db, self.links, principal.tenant_id, req, message_id)
            text = email.text or ""
            encoding, n_segments = EMAIL_ENCODING, 1
        else:
            text = await self._body(principal, req)
            segments = count_segments(text)
            encoding, n_segments = segments.encoding, segments.segments
        route = await route_message(
            self.db, self.registry, principal.tenant_id, req.channel, req.from_, self.dids
        )
        action = OutboundAction(
            tenant_id=principal.tenant_id,
            subject=str(message_id),
            channel=req.channel,
            to=req.to,
            from_=route.from_number,
            purpose=req.purpose,
            trace_id=trace_id,
            body=text,
            address_state=req.state,
            key_id=principal.key_id,
            extra={"provider": route.provider},  # the provider-CPS bucket of the routed provider
            email=email,
        )
        decision = await self.chain.evaluate(action, stage="accept", when_closed=req.when_closed)
        verdict = decision.verdict
        status, send_at, error_code, error_detail = "queued", None, None, None
        if isinstance(verdict, Deny):
            status, error_code, error_detail = "rejected", str(verdict.code), verdict.reason
        elif isinstance(verdict, Defer):
            status, send_at = "scheduled", verdict.until
        row = {
            "id": message_id,
            "tenant_id": principal.tenant_id,
            "direction": "outbound",
            "channel": req.channel,
            "to": req.to,
            "from": route.from_number,
            "body": text,
            "template": req.template,
            "purpose": req.purpose,
            "status": status,
            "provider": route.provider,
            "provider_message_id": None,
            "encoding": encoding,
            "segments": n_segments,
            "send_at": send_at,
            "trace_id": trace_id,
            "metadata": req.metadata,
            "state": req.state,
            "error_code": error_code,
            "error_detail": error_detail,
            "subject": email.subject if email else None,
            "html": email.html if email else None,
        }
        accepted = NewEvent(
            principal.tenant_id,
            f"message.{'rejected' if status == 'rejected' else 'accepted'}",
            str(message_id),
            trace_id,
            {
                "channel": req.channel,
                "to": req.to,
                "provider": route.provider,
                "segments": n_segments,
                "key_id": principal.key_id,
            },
        )
        return _Plan(row, [accepted, decision.event], verdict, decision.defer_delay())

    async def _persist_many(self, conn: asyncpg.Connection, plans: list[_Plan]) -> list[Outcome]:
        """Every plan's rows in set-based statements: messages, events, dispatch jobs."""
        stamps = await repo.insert_messages(conn, [p.row for p in plans])
        await emit(conn, *(e for p in plans for e in p.events))
        for p in plans:
            if p.attach is not None:
                await p.attach(conn, p.row["id"])
        await queue.enqueue_many(
            conn,
            [
                queue.NewJob(
                    DISPATCH_QUEUE,
                    {"message_id": str(p.row["id"])},
                    tenant_id=p.row["tenant_id"],
                    trace_id=p.row["trace_id"],
                    max_attempts=self.settings.messaging.max_attempts,
                    # the deferral's wait, counted on the queue's clock (see queue.NewJob)
                    run_after=p.delay,
                )
                for p in plans
                if not isinstance(p.verdict, Deny)
            ],
        )
        return [self._outcome(p, stamps[p.row["id"]]) for p in plans]

    async def _write_many(
        self,
        conn: asyncpg.Connection,
        plans: list[_Plan],
        claims: list[idempotency.Claim | None],
    ) -> list[Outcome | None] | None:
        """The batch in one statement (acceptwrite.py); None if a plan attaches a row of
        its caller's (a campaign attempt): that needs the committer's transaction."""
        if any(p.attach is not None for p in plans):
            return None
        answers = [self._answer(p) for p in plans]
        written, at = await acceptwrite.write_batch(
            conn,
            [p.row for p in plans],
            jobs=[not isinstance(p.verdict, Deny) for p in plans],
            delays=[p.delay for p in plans],
            claims=[
                None if c is None else (c, a.status, a.body, stamped)
                for c, (a, stamped) in zip(claims, answers, strict=True)
            ],
            events=[p.events for p in plans],
            queue=DISPATCH_QUEUE,
            max_attempts=self.settings.messaging.max_attempts,
        )
        out: list[Outcome | None] = []
        for i, (answer, stamped) in enumerate(answers):
            if i not in written:
                out.append(None)
                continue
            if stamped:
                answer.body["created_at"] = answer.body["updated_at"] = at
            out.append(answer)
        return out

    @staticmethod
    def _answer(plan: _Plan) -> tuple[Outcome, bool]:
        """The answer before the write, and whether it still needs the rows' timestamps."""
        row = plan.row
        if isinstance(plan.verdict, Deny):
            ids = {"message_id": str(row["id"]), "trace_id": row["trace_id"]}
            return denial(plan.verdict, "/v1/messages", **ids), False
        body = message_from_row(row | _UNSTAMPED).model_dump(mode="json", by_alias=True)
        return Outcome(201, body, {}), True

    async def _body(self, principal: Principal, req: SendMessage) -> str:
        """An SMS/WhatsApp body: the request's own, or its template rendered."""
        text = req.body
        if req.template is not None:
            tpl = await repo.get_template(self.db, principal.tenant_id, req.template)
            if tpl is None:
                raise ValidationFailed(
                    f"no template named {req.template!r}", code="unknown_template"
                )
            text = render(req.template, tpl["body"], req.variables)
        assert text is not None
        if not text.strip():
            raise ValidationFailed("the message body is empty", code="empty_body")
        return text

    @staticmethod
    def _outcome(plan: _Plan, stamps: asyncpg.Record) -> Outcome:
        row = plan.row
        if isinstance(plan.verdict, Deny):
            return denial(
                plan.verdict, "/v1/messages", message_id=str(row["id"]), trace_id=row["trace_id"]
            )
        body = message_from_row(
            row | {"created_at": stamps["created_at"], "updated_at": stamps["updated_at"]}
        )
        return Outcome(201, body.model_dump(mode="json", by_alias=True), {})


# Stand-ins for the timestamps PostgreSQL gives the row (acceptwrite.py sets the real ones).
_UNSTAMPED = {
    "created_at": datetime.fromtimestamp(0, UTC),
    "updated_at": datetime.fromtimestamp(0, UTC),
}

# A row of the caller's written in the accepted message's own transaction (campaigns: the
# attempt row), so the two commit together or not at all.
Attach = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[None]]


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the transaction: the row, its events, the verdict."""

    row: dict[str, Any]
    events: list[NewEvent]
    verdict: Verdict
    delay: float | None = None  # a deferral's wait in seconds (None: due now)
    attach: Attach | None = None  # a row of the caller's, written in the message's transaction
