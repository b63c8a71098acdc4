"""The Twilio transport: Twilio's signed voice webhooks in, TwiML out, one document per step.

A number's Voice URL is `/webhooks/twilio/ivr`: the first request starts a session on the flow
bound to the number called (`dids.ivr_flow`), keyed by the CallSid in Redis. Each document's
`<Gather>`/`<Record>` posts back to `/webhooks/twilio/ivr/step?session=…&step=…`; the step
number makes a retried request (Twilio retries on a timeout) replay the document already
answered (kept ten minutes per request) instead of feeding the same input twice. Webhook and transfer nodes are settled here,
before the document is rendered: the tenant's webhook is called, the transfer goes through the
guardrail chain and becomes a `<Dial>` only when cleared. The number's status callback
(`/webhooks/twilio/ivr/status`) ends the session when the caller hangs up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlencode

import redis.asyncio as aioredis

from gateway.core.phone import normalize_e164
from ivr import repo
from ivr.asyncagi import AgentConnector
from ivr.engine import (
    Bridge,
    CallerHangup,
    Command,
    Digits,
    Input,
    NoInput,
    Recorded,
    Transfer,
    TransferVerdict,
    Webhook,
)
from ivr.flow import bridge_allowed
from ivr.runner import FlowRunner, Stepped, TransferTicket
from ivr.sessions import SessionConflict
from ivr.twiml import render

INBOUND_PATH = "/webhooks/twilio/ivr"
STEP_PATH = "/webhooks/twilio/ivr/step"
STATUS_PATH = "/webhooks/twilio/ivr/status"
DIAL_PATH = "/webhooks/twilio/ivr/dial"
# <Dial action>'s DialCallStatus → the transfer call's end
DIAL_STATUS = {
    "completed": "completed",
    "answered": "completed",
    "busy": "busy",
    "no-answer": "no_answer",
    "canceled": "canceled",
}
HANGUP = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
KEY_TTL = 6 * 3600
DOC_TTL = 600
ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def _call_key(call_sid: str) -> str:
    return f"ivr:twilio:{call_sid}"


def _transfer_key(session_id: str) -> str:
    return f"ivr:twilio:transfer:{session_id}"


def _doc_key(session_id: str, step: int) -> str:
    return f"ivr:twiml:{session_id}:{step}"


class TwilioIvr:
    def __init__(
        self,
        runner: FlowRunner,
        redis: aioredis.Redis,
        public_base_url: str,
        agents: AgentConnector | None = None,
        bridge_hosts: tuple[str, ...] = (),
    ) -> None:
        self.runner = runner
        self.redis = redis
        self.base = public_base_url.rstrip("/")
        self.agents = agents
        self.bridge_hosts = bridge_hosts

    async def inbound(self, form: Mapping[str, str]) -> str:
        call_sid = form.get("CallSid", "")
        try:
            to = normalize_e164(form.get("To", ""))
        except ValueError:
            return HANGUP
        if not call_sid:
            return HANGUP
        known = await self.redis.get(_call_key(call_sid))
        if known is not None:  # Twilio retried the first request: answer it again
            cached = await self.redis.get(_doc_key(known.decode(), 0))
            return cached.decode() if cached else EMPTY
        row = await repo.flow_for_number(self.runner.db, to)
        if row is None:
            return HANGUP
        stepped = await self.runner.start(
            row, caller=form.get("From", "unknown"), called=to, transport="twilio"
        )
        await self.redis.set(_call_key(call_sid), stepped.session.id.encode(), ex=KEY_TTL)
        return await self._document(stepped, answering=0)

    async def step(self, query: Mapping[str, str], form: Mapping[str, str]) -> str:
        session_id, call_sid = query.get("session", ""), form.get("CallSid", "")
        owner = await self.redis.get(_call_key(call_sid)) if call_sid else None
        if owner is None or owner.decode() != session_id:
            return HANGUP  # not this call's session
        try:
            step = int(query.get("step", ""))
        except ValueError:
            return HANGUP
        answered = await self.redis.get(_doc_key(session_id, step))
        if answered is not None:  # a retried request: the answer it already got
            return answered.decode()
        session = await self.runner.store.load(session_id)
        if session is None or session.ended is not None or session.steps != step:
            return HANGUP
        event: Input
        if session.waiting == "gather":
            digits = form.get("Digits", "")
            event = Digits(digits) if digits else NoInput()
        elif session.waiting == "record" and form.get("RecordingUrl"):
            event = Recorded(form["RecordingUrl"], float(form.get("RecordingDuration") or 0))
        else:
            event = NoInput()
        try:
            stepped = await self.runner.feed(session, event)
        except SessionConflict:  # the same request, twice at once: the other one answers
            return await self._answer_of(session_id, step)
        return await self._document(stepped, answering=step)

    async def _agent(self, session: object, cmd: Command) -> Command:
        """An agent node: a new agent session, dialled by its SIP URI (none: hang up). A
        bridge_to only to agents.bridge_hosts (a bridge passes no guardrail)."""
        if not isinstance(cmd, Bridge):
            return cmd
        if cmd.kind == "sip":
            uri = str(cmd.target.get("uri", ""))
            return cmd if bridge_allowed(uri, self.bridge_hosts) else Bridge("agent", {})
        if self.agents is None:
            return Bridge("agent", {})
        try:
            return Bridge("sip", {"uri": await self.agents(session, cmd.target)})
        except Exception:
            return Bridge("agent", {})

    async def _answer_of(self, session_id: str, step: int, wait: float = 5.0) -> str:
        """The document another request is writing for this step (bounded wait)."""
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            answered = await self.redis.get(_doc_key(session_id, step))
            if answered is not None:
                return answered.decode()
            await asyncio.sleep(0.05)
        return EMPTY

    async def dial(self, query: Mapping[str, str], form: Mapping[str, str]) -> str:
        """A transfer's <Dial> is over (its `action`): the call record ends with Twilio's
        DialCallStatus, and so does the caller's call (the IVR ended when it transferred)."""
        session_id, call_sid = query.get("session", ""), form.get("CallSid", "")
        owner = await self.redis.get(_call_key(call_sid)) if call_sid else None
        if owner is None or owner.decode() != session_id:
            return HANGUP  # not this call's session
        transfer = await self.redis.getdel(_transfer_key(session_id))
        if transfer is not None and self.runner.transfers is not None:
            got = form.get("DialCallStatus", "")
            status = DIAL_STATUS.get(got, "failed")
            await self.runner.transfers.finish(
                TransferTicket(transfer.decode()), status, f"DialCallStatus {got or 'none'}"
            )
        return HANGUP

    async def status(self, form: Mapping[str, str]) -> None:
        if form.get("CallStatus") not in ENDED:
            return
        known = await self.redis.get(_call_key(form.get("CallSid", "")))
        session = await self.runner.store.load(known.decode()) if known else None
        if session is not None and session.ended is None:
            await self.runner.feed(session, CallerHangup("caller_hangup"))
        transfer = await self.redis.getdel(_transfer_key(known.decode())) if known else None
        if transfer is not None and self.runner.transfers is not None:
            # a <Dial> lasts as long as the caller's call: the transfer ends with it
            ticket = TransferTicket(transfer.decode())
            detail = f"the caller's call {form.get('CallStatus')}"
            await self.runner.transfers.finish(ticket, "completed", detail)

    async def _document(self, stepped: Stepped, *, answering: int) -> str:
        """Settle webhooks and transfers, then render everything said until the caller is
        asked something (or the call ends)."""
        commands: list[Command] = []
        while True:
            session = stepped.session
            commands += [c for c in stepped.commands if not isinstance(c, Transfer | Webhook)]
            if session.ended is not None or session.waiting not in ("webhook", "transfer"):
                break
            if session.waiting == "webhook":
                (cmd,) = [c for c in stepped.commands if isinstance(c, Webhook)][-1:]
                stepped = await self.runner.feed(
                    session, await self.runner.call_webhook(session, cmd)
                )
                continue
            (transfer,) = [c for c in stepped.commands if isinstance(c, Transfer)][-1:]
            refused, ticket, cleared = await self.runner.place_transfer(session, transfer, "twilio")
            if refused is not None or ticket is None:
                verdict = refused or TransferVerdict("refused", "transfers are not configured")
            else:
                action = cleared.verify()  # only what the chain cleared becomes a <Dial>
                commands.append(Transfer(action.to, action.from_, transfer.timeout, "-"))
                # the leg is Twilio's from here: its record ends with the caller's call
                await self.redis.set(_transfer_key(session.id), ticket.call_id, ex=KEY_TTL)
                verdict = TransferVerdict("transferred", "dialled by <Dial>", ticket.call_id)
            stepped = await self.runner.feed(session, verdict)
        session = stepped.session
        commands = [await self._agent(session, c) for c in commands]
        query = urlencode({"session": session.id, "step": session.steps})
        dial = f"{self.base}{DIAL_PATH}?{urlencode({'session': session.id})}"
        doc = render(commands, f"{self.base}{STEP_PATH}?{query}", dial)
        # kept for the request it answers (0: the first), so that a retry gets it again
        await self.redis.set(_doc_key(session.id, answering), doc.encode(), ex=DOC_TTL)
        return doc
