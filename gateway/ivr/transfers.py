"""An IVR transfer is an outbound call like any other (DESIGN: "a transfer out is an outbound
action like any other"): a call record, the guardrail chain at accept and again at dispatch,
an attempt, its status moving forward, and a `call.*` event for each step.

What differs from `POST /v1/calls` is only who dials: the leg is dialled from the caller's own
channel by the IVR transport (AGI `EXEC Dial` on Asterisk, `<Dial>` in Twilio's TwiML), and
only with the ClearedAction the dispatch-stage chain issued. So the record is written here
(accept), cleared again right before the dial (dispatch: the world may have changed while the
caller listened to a prompt), and finished with what the dial came to. A refusal at either
stage is the call's `rejected` status with the chain's verdict event, and the flow takes its
fallback: never a silent bypass.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.calls import repo
from gateway.calls.service import event
from gateway.core.actions import OutboundAction
from gateway.core.ids import new_id
from gateway.events.outbox import emit
from gateway.settings import Settings
from guardrails.chain import Decision, GuardrailChain
from guardrails.verdicts import Deny
from ivr.engine import Session, Transfer
from ivr.runner import TransferTicket
from sip import calls as sip_calls

TRANSFER_POOL = "ivr"  # the leg is the inbound call's: counted with the IVR's channels


@dataclass
class PipelineTransfers:
    db: asyncpg.Pool
    chain: GuardrailChain
    settings: Settings

    def _action(self, call: Any) -> OutboundAction:
        meta = call["metadata"] or {}
        return OutboundAction(
            tenant_id=call["tenant_id"],
            subject=str(call["id"]),
            channel="voice",
            to=call["to"],
            from_=call["from"],
            purpose=call["purpose"],
            trace_id=call["trace_id"],
            extra={
                "provider": call["provider"],
                "ivr_session": meta.get("ivr_session"),
                "ivr_node": meta.get("ivr_node"),
            },
        )

    async def accept(self, session: Session, cmd: Transfer, provider: str) -> TransferTicket:
        """The call record, with the accept-stage verdict (a deferral refuses: a caller on
        the line cannot wait for calling hours to open)."""
        row: dict[str, Any] = {
            "id": new_id(),
            "tenant_id": uuid.UUID(session.tenant_id),
            "to": cmd.to,
            "from": cmd.from_,
            "purpose": cmd.purpose,
            "status": "queued",
            "pool": TRANSFER_POOL,
            "provider": provider,
            "ring_timeout": cmd.timeout,
            "max_duration": self.settings.calls.max_duration,
            "on_answer": None,
            "amd": False,
            "on_machine": "continue",
            "error_code": None,
            "error_detail": None,
            "send_at": None,
            "trace_id": session.trace_id,
            "metadata": {"ivr_session": session.id, "ivr_node": session.node or ""},
            "state": None,
        }
        decision = await self.chain.evaluate(self._action(row), stage="accept", when_closed="deny")
        refused = _refusal(decision)
        if refused is not None:
            row |= {"status": "rejected", "error_code": refused[0], "error_detail": refused[1]}
        kind = "rejected" if refused else "accepted"
        data = {"to": cmd.to, "pool": TRANSFER_POOL, "provider": provider, "ivr": row["metadata"]}
        async with self.db.acquire() as conn, conn.transaction():
            await repo.insert_call(conn, row)
            await emit(conn, event(row, kind, data), decision.event)
        return TransferTicket(str(row["id"]), _reason(refused))

    async def dispatch(self, ticket: TransferTicket) -> Any:
        """The chain again, right before the dial; the ClearedAction to dial with, or None
        (the call rejected, `ticket.refused` saying why). Cleared: an attempt is opened and
        the call is `dialing` before the transport dials."""
        call_id = uuid.UUID(ticket.call_id)
        call = await repo.get_call(self.db, call_id)
        assert call is not None
        decision = await self.chain.evaluate(
            self._action(call), stage="dispatch", when_closed="deny"
        )
        refused = _refusal(decision)
        async with self.db.acquire() as conn, conn.transaction():
            await emit(conn, decision.event)
            if refused is not None:
                moved = await repo.move_status(
                    conn, call_id, "rejected", error_code=refused[0], error_detail=refused[1]
                )
                if moved is not None:
                    data = {"source": "dispatch", "error_code": refused[0], "error": refused[1]}
                    await emit(conn, event(moved, "rejected", data))
                ticket.refused = _reason(refused)
                return None
            attempt = await repo.open_attempt(
                conn, call_id, call["provider"], sip_calls.attempt_key
            )
            await emit(
                conn,
                event(
                    call,
                    "attempt_started",
                    {"n": attempt["n"], "provider": call["provider"], "source": "ivr"},
                ),
            )
            moved = await repo.move_status(conn, call_id, "dialing")
            if moved is not None:
                await emit(conn, event(moved, "dialing", {"source": "ivr", "n": attempt["n"]}))
        ticket.attempt = attempt["n"]
        return decision.cleared

    async def finish(self, ticket: TransferTicket, status: str, detail: str | None = None) -> None:
        """What the dial came to: answered then over (`completed`), or busy / no_answer /
        failed / canceled."""
        call_id = uuid.UUID(ticket.call_id)
        async with self.db.acquire() as conn, conn.transaction():
            if ticket.attempt is not None:
                await repo.close_attempt(
                    conn, call_id, ticket.attempt, "originated", only_open=True
                )
            if status == "completed":
                answered = await repo.move_status(conn, call_id, "answered")
                if answered is not None:
                    await emit(conn, event(answered, "answered", {"source": "ivr"}))
            fields = {"error_detail": detail[:500]} if detail else {}
            moved = await repo.move_status(conn, call_id, status, **fields)
            if moved is not None:
                await emit(conn, event(moved, status, {"source": "ivr", "detail": detail}))


def _refusal(decision: Decision) -> tuple[str, str] | None:
    if decision.allowed:
        return None
    verdict = decision.verdict
    if isinstance(verdict, Deny):
        return str(verdict.code), verdict.reason
    return "deferred", f"deferred: {getattr(verdict, 'reason', '')}"


def _reason(refused: tuple[str, str] | None) -> str | None:
    return None if refused is None else f"{refused[0]}: {refused[1]}"
