"""Control (worker): hangup, bridge, connect to the AI agent, and an answered call's deadlines.

Each is a queued job, so an API process never needs the AMI connection and a worker that
dies mid-action loses nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from campaigns import pacing
from gateway import queue
from gateway.calls import repo
from gateway.calls.service import (
    CallService,
    event,
)
from gateway.calls.states import FINAL
from gateway.events.outbox import emit
from gateway.logs import bind, get_logger
from gateway.messages.templates import render
from gateway.pipeline.calls.route import attempt_key_of, call_ref
from gateway.providers.agents.base import AgentError
from gateway.providers.contracts import (
    CallRef,
    PermanentProviderError,
    ProviderError,
    SipTarget,
    VoiceProvider,
)
from gateway.providers.registry import ProviderRegistry, ProviderUnavailable
from gateway.providers.sandbox.voice import SandboxVoice
from gateway.settings import Settings
from sip import calls as sip_calls
from sip.asterisk import AsteriskVoice

log = get_logger(__name__)

SEAT_RETRY = 0.2  # seconds between tries for a free agent session (campaigns)

# Providers whose own events say when two legs are bridged (AMI BridgeEnter, the sandbox).
_REPORTS_BRIDGES = (AsteriskVoice, SandboxVoice)


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
            if isinstance(exc, ProviderError) and exc.code == "call_gone":
                await self._gone(call, op, exc)
                return
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
            if op == "bridge" and call["bridged_with"] is not None:
                # Not joined: neither call stays promised to the other (each may be bridged
                # again, or hung up, on its own).
                await conn.execute(
                    "UPDATE calls SET bridged_with = NULL, updated_at = now()"
                    " WHERE id = ANY($1::uuid[]) AND bridged_at IS NULL",
                    [call["id"], call["bridged_with"]],
                )

    async def _gone(self, call: asyncpg.Record, op: str, exc: ProviderError) -> None:
        """The provider no longer has a leg we saw up: its end was missed. A called party's
        leg closes its call (at the last moment we knew it alive); then the op failed unless
        it was a hangup, which got what it wanted."""
        ref = getattr(exc, "call", None)
        key = sip_calls.parse(ref.attempt_key) if ref is not None else None
        if key is not None and ref.leg == "customer":
            detail = "the provider no longer had the call's channel: it ended unobserved"
            await self.service.close_unobserved(
                key.call_id, key.n, detail=detail, source=f"control:{op}"
            )
        if op not in ("hangup", "hangup_agent"):
            fresh = await repo.get_call(self.db, call["id"])
            await self._failed(fresh or call, op, exc)

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

    async def _op_hangup_attempt(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        """Hang up one attempt's leg (superseded by a failover, yet it rang or answered),
        never the call's current one: it is addressed by that attempt's own key."""
        key = payload["attempt_key"]
        ref = CallRef(payload["provider"], key, key, payload.get("channel"))
        try:
            await self.registry.voice(payload["provider"]).hangup(ref)
        except ProviderError as exc:
            if exc.code not in ("no_channel", "call_gone"):
                raise
            # gone already: what was asked is done

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
        if not agent and not await self._take_seat(call):
            return
        if not agent or agent.get("seat"):
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

    async def _take_seat(self, call: asyncpg.Record) -> bool:
        """A campaign with `max_agent_sessions`: the answered call takes one of its agent
        sessions (campaigns/pacing.py take_seat) or waits for one — tried again every
        `SEAT_RETRY` s until `campaigns.abandon_after`, when the abandon check plays the
        message. Any other call: always."""
        campaign_id = (call["metadata"] or {}).get("campaign_id")
        if campaign_id is None:
            return True
        async with self.db.acquire() as conn, conn.transaction():
            config = await self._campaign_config(conn, call)
            seats = ((config or {}).get("pacing") or {}).get("max_agent_sessions")
            if not seats:
                return True
            taken = await pacing.take_seat(conn, uuid.UUID(campaign_id), call["id"], int(seats))
            if taken is not False:
                return bool(taken)  # None: not answered any more, or seated by another run
            waited, now = await conn.fetchrow(
                "SELECT extract(epoch FROM now() - $1::timestamptz)::float8, now()",
                call["answered_at"],
            )
            if waited + SEAT_RETRY < self.settings.campaigns.abandon_after:
                raise queue.Reschedule(
                    now + timedelta(seconds=SEAT_RETRY), "no free agent session yet"
                )
            await emit(conn, event(call, "no_agent_session", {"max_agent_sessions": seats}))
        return False

    async def _new_agent_leg(self, call: asyncpg.Record) -> dict[str, Any] | None:
        """Create the agent session (if asked for one) and record the leg about to be dialled."""
        on_answer = call["on_answer"] or {}
        key = attempt_key_of(call)
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
            held = fresh["agent"] if fresh is not None else None
            if fresh is None or (held and not held.get("seat")) or fresh["status"] != "answered":
                return None
            await repo.update_call(conn, call["id"], agent=agent)
            events.append(event(call, "agent_dialing", {"sip_uri": agent["sip_uri"]}))
            await emit(conn, *events)
        return agent

    async def _op_abandon_check(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        """A campaign call a person answered `campaigns.abandon_after` ago: connected to its
        target (bridged) it is not abandoned; else it is — the campaign's abandon message is
        played (16 CFR 310.4(b)(4): within 2 s of the answer) and the call ends. The call ends
        with error_code 'abandoned' (its prospect: `abandoned`, campaigns/outcomes.py)."""
        async with self.db.acquire() as conn, conn.transaction():
            fresh = await repo.get_call(conn, call["id"], lock=True)
            if fresh is None or fresh["bridged_at"] is not None:
                return
            config = await self._campaign_config(conn, fresh)
            if config is None:
                return
            message = (config.get("abandon_message") or {}).get("say")
            since = await _since_answer(conn, fresh)
            detail = "answered by a person, not connected to its target within 2 s"
            await repo.update_call(conn, call["id"], error_code="abandoned", error_detail=detail)
            campaign_id = fresh["metadata"]["campaign_id"]
            await emit(conn, event(fresh, "abandoned", {"campaign_id": campaign_id}))
        await self._say_then_end(fresh, message, "abandon_message", since, reason="abandoned")

    async def _op_voicemail_drop(self, call: asyncpg.Record, payload: dict[str, Any]) -> None:
        """A campaign call (on_machine voicemail_drop) an answering machine took: its
        `voicemail.say`, rendered with the prospect's variables, is left after the greeting
        (the AMD verdict), then the call ends with error_code 'voicemail_dropped'."""
        async with self.db.acquire() as conn, conn.transaction():
            fresh = await repo.get_call(conn, call["id"], lock=True)
            if fresh is None:
                return
            config = await self._campaign_config(conn, fresh)
            if config is None:
                return
            variables = await conn.fetchval(
                "SELECT variables FROM campaign_prospects WHERE id = $1",
                int(fresh["metadata"].get("prospect_id") or 0),
            )
            since = await _since_answer(conn, fresh)
            template = (config.get("voicemail") or {}).get("say") or ""
            try:
                message = render("voicemail", template, dict(variables or {}))
            except Exception as exc:  # a variable the prospect does not have
                log.warning("voicemail not rendered", call_id=str(call["id"]), error=str(exc))
                message = None
            detail = "an answering machine answered: voicemail left (on_machine voicemail_drop)"
            await repo.update_call(
                conn, call["id"], error_code="voicemail_dropped", error_detail=detail
            )
        await self._say_then_end(
            fresh,
            message,
            "voicemail_drop",
            since,
            reason="voicemail_dropped",
            after_greeting=True,
        )

    async def _campaign_config(
        self, conn: asyncpg.Connection, call: asyncpg.Record
    ) -> dict[str, Any] | None:
        """The config of the campaign an answered, unhung call belongs to (None: neither)."""
        if call["status"] != "answered" or call["hangup_requested_at"] is not None:
            return None
        campaign_id = (call["metadata"] or {}).get("campaign_id")
        if campaign_id is None:
            return None
        return await conn.fetchval(
            "SELECT config FROM campaigns WHERE id = $1::uuid AND tenant_id = $2",
            campaign_id,
            call["tenant_id"],
        )

    async def _say_then_end(
        self,
        call: asyncpg.Record,
        message: str | None,
        kind: str,
        since: tuple[float, float],
        *,
        reason: str,
        after_greeting: bool = False,
    ) -> None:
        """Play `message` and let the provider end the call; one that cannot play (or no
        message) gets an ordinary hangup. `call.<kind>` says which, and when after the answer
        the provider had it (`since`: seconds after the answer on the database's clock, at
        this process's monotonic instant — not later, when the event is written)."""
        played, why = False, "no message"
        if message:
            try:
                await self._voice(call).say_then_hangup(
                    call_ref(call), message, after_greeting=after_greeting
                )
                played, why = True, None
            except ProviderError as exc:  # cannot play (say_unsupported) or the call is gone
                why = exc.code or str(exc)
        after_ms = round((since[0] + time.monotonic() - since[1]) * 1000)
        async with self.db.acquire() as conn, conn.transaction():
            fresh = await repo.get_call(conn, call["id"], lock=True)
            if fresh is None:
                return
            data: dict[str, Any] = {"played": played, "after_answer_ms": after_ms, "say": message}
            if why is not None:
                data["not_played"] = why
            await emit(conn, event(fresh, kind, data))
            if fresh["status"] in FINAL:
                return
            if played:  # the provider hangs up when the message is over: not before
                await repo.update_call(conn, call["id"], hangup_requested_at=repo.NOW)
                await emit(conn, event(fresh, "hangup_requested", {"reason": reason}))
            else:
                await self.service._request_hangup(conn, fresh, reason=reason)

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


async def _since_answer(conn: asyncpg.Connection, call: asyncpg.Record) -> tuple[float, float]:
    """(seconds since the call's answer on the database's clock, monotonic now)."""
    seconds = await conn.fetchval(
        "SELECT extract(epoch FROM now() - $1::timestamptz)::float8", call["answered_at"]
    )
    return seconds, time.monotonic()
