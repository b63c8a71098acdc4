"""The runner: the engine's pure steps, with the session in Redis and the events in PostgreSQL.

Each step loads nothing but the session and its flow version (immutable, so cached per
process), asks the engine, then commits: the step's events (`ivr.started`, `ivr.node`,
`ivr.input`, `ivr.transfer`, `ivr.ended`) in one PostgreSQL transaction, the session saved
to Redis first (compare-and-set on its step count; no database connection is held across it),
and — when the session has ended — its summary row in the same transaction. The commands are
handed back only once that transaction has committed; a step that fails to commit sets the
session back where it was, so the input can be fed again by any worker.

The clock is the guardrail chain's (DESIGN principle 12): a business-hours condition and the
calling-hours check of a transfer read the same time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from gateway.core.ids import new_id, new_trace_id
from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from guardrails.chain import GuardrailChain
from ivr import repo
from ivr.engine import (
    CallStarted,
    Command,
    Input,
    Session,
    Transfer,
    TransferVerdict,
    Webhook,
    WebhookAnswer,
    step,
)
from ivr.flow import Flow
from ivr.sessions import SessionMissing, SessionStore
from ivr.webhook import WebhookCaller

log = get_logger(__name__)


@dataclass(frozen=True)
class LoadedFlow:
    id: str
    tenant_id: str
    name: str
    version: int
    flow: Flow
    secret: str


@dataclass(frozen=True)
class Stepped:
    commands: list[Command]
    session: Session
    notes: list[dict[str, Any]]


class FlowNotFound(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FlowRunner:
    def __init__(
        self,
        db: asyncpg.Pool,
        store: SessionStore,
        chain: GuardrailChain,
        webhooks: WebhookCaller,
        clock: Callable[[], datetime] | None = None,
        transfers: TransferDesk | None = None,
    ) -> None:
        self.db = db
        self.transfers = transfers
        self.store = store
        self.chain = chain
        self.webhooks = webhooks
        self._clock = clock
        self._flows: dict[str, LoadedFlow] = {}  # versions are immutable: safe to keep

    def now(self) -> datetime:
        return (self._clock or self.chain.clock or _utcnow)()

    async def flow(self, flow_id: str) -> LoadedFlow:
        loaded = self._flows.get(flow_id)
        if loaded is None:
            row = await repo.flow_by_id(self.db, uuid.UUID(flow_id))
            if row is None:
                raise FlowNotFound(flow_id)
            loaded = loaded_flow(row)
            if len(self._flows) > 1000:
                self._flows.clear()
            self._flows[flow_id] = loaded
        return loaded

    async def start(
        self,
        row: asyncpg.Record,
        *,
        caller: str,
        called: str | None,
        transport: str,
        trace_id: str | None = None,
        holder: str | None = None,
        pool: str = "ivr",
    ) -> Stepped:
        """A new session on this flow version, stepped once (the call has started). A call that
        holds a trunk pool permit names its `holder`: the call is listed in `ivr_live` with its
        start, so the pools are rebuilt with it after Redis loses them."""
        loaded = loaded_flow(row)
        self._flows.setdefault(loaded.id, loaded)
        session = Session(
            id=str(new_id()),
            tenant_id=loaded.tenant_id,
            flow_id=loaded.id,
            flow_name=loaded.name,
            version=loaded.version,
            caller=caller,
            called=called,
            transport=transport,
            started_at=self.now().isoformat(),
            trace_id=trace_id or new_trace_id(),
        )
        live = (holder, pool) if holder is not None else None
        return await self._step(loaded, session, CallStarted(), new=True, live=live)

    async def feed(
        self, session: Session, event: Input, extra: tuple[NewEvent, ...] = ()
    ) -> Stepped:
        """One input to a live session (as loaded from Redis or returned by the last step)."""
        return await self._step(await self.flow(session.flow_id), session, event, extra=extra)

    async def _step(
        self,
        loaded: LoadedFlow,
        session: Session,
        event: Input,
        *,
        new: bool = False,
        extra: tuple[NewEvent, ...] = (),
        live: tuple[str, str] | None = None,
    ) -> Stepped:
        now = self.now()
        commands, after, notes = step(loaded.flow, session, event, now)
        events = [*self._events(after, notes, started=new), *extra]
        # The compare-and-set first, with no database connection held (a burst of steps
        # queued for the pool while each held one across its Redis round trip): a session
        # someone else moved first writes nothing. Then the durable write, and only then are
        # the commands handed back; should it fail, the session is set back (_undo) so the
        # same input can be fed again.
        previous = None if new else session.steps
        try:
            await self.store.save(after, previous_steps=previous)
        except SessionMissing:
            # Redis lost it (restarted empty) while this worker held the call: the copy
            # stepped from is the latest there is, as long as the call is still live.
            if not await repo.is_live(self.db, session.id):
                raise
            previous = None
            await self.store.save(after, previous_steps=None)
        try:
            async with self.db.acquire() as conn, conn.transaction():
                await emit(conn, *events)
                if live is not None:
                    await repo.insert_live(conn, live[0], after, live[1])
                if after.ended is not None:
                    await repo.insert_summary(conn, after, now)
        except BaseException:
            await asyncio.shield(self._undo(session, after, previous))
            raise
        if after.ended is not None:
            await self.store.drop(after.id)
        return Stepped(commands, after, notes)

    async def _undo(self, session: Session, after: Session, previous: int | None) -> None:
        """Set the session back to `session` (or remove it, if the step created it) after its
        step's events could not be stored, unless another step moved it since. If Redis is
        away too, the session stays one step ahead of its events, as a crash between the two
        writes leaves it."""
        try:
            await self.store.restore(after, session if previous is not None else None)
        except Exception as exc:
            log.warning("IVR session not set back", session_id=after.id, error=repr(exc))

    def _events(self, s: Session, notes: list[dict[str, Any]], *, started: bool) -> list[NewEvent]:
        base = {"session_id": s.id, "flow": s.flow_name, "version": s.version}
        out: list[NewEvent] = []

        def add(kind: str, data: dict[str, Any]) -> None:
            out.append(NewEvent(uuid.UUID(s.tenant_id), kind, s.id, s.trace_id, base | data))

        if started:
            add("ivr.started", {"from": s.caller, "to": s.called, "transport": s.transport})
        for note in notes:
            if "ignored" in note:
                continue
            if "resumed" in note:  # another worker carries the call on
                add("ivr.resumed", note)
                continue
            if "end" in note:
                add(
                    "ivr.ended", {"reason": note["end"], "node": note.get("node"), "steps": s.steps}
                )
            elif "transfer" in note:
                add("ivr.transfer", note)
            elif "input" in note or "webhook" in note:
                add("ivr.input", note)
            elif "kind" in note:
                add("ivr.node", note)
        return out

    # --- what the outside world answers: the webhook node and the transfer ------------------

    async def call_webhook(self, session: Session, cmd: Webhook) -> WebhookAnswer:
        loaded = await self.flow(session.flow_id)
        return await self.webhooks.call(cmd, loaded.secret)

    async def place_transfer(
        self, session: Session, cmd: Transfer, provider: str
    ) -> tuple[TransferVerdict | None, TransferTicket | None, Any]:
        """A transfer is an outbound call through the pipeline (`transfers`): the call record
        and the chain at accept, the chain again at dispatch. Returns the refusal for the
        engine (None: cleared), the ticket the transport finishes once the dial is over, and
        the ClearedAction to dial with. No pipeline configured: refused, never a bypass."""
        if self.transfers is None:
            return TransferVerdict("refused", "transfers are not configured"), None, None
        ticket = await self.transfers.accept(session, cmd, provider)
        if ticket.refused is None:
            cleared = await self.transfers.dispatch(ticket)
            if cleared is not None:
                return None, ticket, cleared
        return TransferVerdict("refused", ticket.refused, ticket.call_id), ticket, None


@dataclass
class TransferTicket:
    """A transfer's call record, between its accept and the end of its dial."""

    call_id: str
    refused: str | None = None  # why the chain said no (at accept or dispatch)
    attempt: int | None = None


class TransferDesk(Protocol):
    """The outbound pipeline as a transfer uses it (gateway/ivr/transfers.py)."""

    async def accept(self, session: Session, cmd: Transfer, provider: str) -> TransferTicket: ...

    async def dispatch(self, ticket: TransferTicket) -> Any: ...

    async def finish(
        self, ticket: TransferTicket, status: str, detail: str | None = None
    ) -> None: ...


def loaded_flow(row: Any) -> LoadedFlow:
    return LoadedFlow(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        name=row["name"],
        version=row["version"],
        flow=Flow.model_validate(row["document"]),
        secret=row["signing_secret"],
    )
