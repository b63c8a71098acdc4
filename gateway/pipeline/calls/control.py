"""Control (worker): hangup, bridge, connect to the AI agent, and an answered call's deadlines.

Each is a queued job, so an API process never needs the AMI connection and a worker that
dies mid-action loses nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from campaigns import pacing
from gateway import db as gateway_db
from gateway import queue
from gateway.calls import repo
from gateway.calls.service import (
    CallService,
    event,
)
from gateway.calls.states import FINAL
from gateway.events.outbox import NOTIFY_CHANNEL as OUTBOX_CHANNEL
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
# Connects and bridges run in-process at once (run_locally) at most this many at a time; the
# others are left to the workers. Unbounded, a burst of answers queued that many transactions
# on a campaign's seat lock (campaigns/pacing.py take_seat), each holding a pooled connection,
# and starved the rest of the process (reports, abandon checks) of the database pool.
LOCAL_SLOTS = 4
DEADLINE_CONNECTIONS = 2  # abandon decisions are one statement each: a few connections serve

# An op run in-process (run_locally) holds its queued job, pushed back by a lease ($2 s),
# while it acts: should the process die, the job runs it then. A job a worker has claimed
# already ('running') is that worker's. Done, the job is dropped; rescheduled or failed, it
# is given back to the workers (due at $2, or $3 s after now()).
_HOLD_JOB = """
UPDATE jobs SET run_at = now() + make_interval(secs => $2), updated_at = now()
WHERE id = $1 AND state = 'ready'
RETURNING id, queue, tenant_id, payload, attempts, max_attempts, trace_id
"""
_RELEASE_JOB = """
UPDATE jobs SET run_at = coalesce(now() + make_interval(secs => $3), $2), updated_at = now()
WHERE id = $1 AND state = 'ready'
"""
_DROP_JOB = "DELETE FROM jobs WHERE id = $1 AND state = 'ready'"

# The abandon decision in one round trip: hold the job (in-process only: $2 not null), lock
# an answered, unbridged, unhung campaign call, record 'abandoned' with its event (once: a
# check re-run after its player died only plays), and return it with the campaign's message.
_DECIDE_ABANDON = f"""
WITH held AS (
    UPDATE jobs SET run_at = now() + make_interval(secs => $3), updated_at = now()
    WHERE id = $2::bigint AND state = 'ready' RETURNING id
), target AS (
    SELECT c.*, k.config->'abandon_message'->>'say' AS abandon_say,
           extract(epoch FROM now() - c.answered_at)::float8 AS since_answer
    FROM calls c
    JOIN campaigns k ON k.id = (c.metadata->>'campaign_id')::uuid AND k.tenant_id = c.tenant_id
    WHERE c.id = $1 AND c.status = 'answered' AND c.bridged_at IS NULL
      AND c.hangup_requested_at IS NULL
      AND ($2::bigint IS NULL OR EXISTS (SELECT FROM held))
    FOR UPDATE OF c
), marked AS (
    UPDATE calls SET error_code = 'abandoned', error_detail = $4, updated_at = now()
    FROM target WHERE calls.id = target.id AND target.error_code IS DISTINCT FROM 'abandoned'
    RETURNING calls.id, target.tenant_id, target.trace_id, target.metadata
), ev AS (
    INSERT INTO events (tenant_id, type, subject, trace_id, data)
    SELECT tenant_id, 'call.abandoned', id::text, trace_id,
           jsonb_build_object('campaign_id', metadata->>'campaign_id')
    FROM marked RETURNING id
), wake AS (SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM ev LIMIT 1)
SELECT t.*, EXISTS (SELECT FROM held) AS held, (SELECT count(*) FROM wake) AS woke
FROM (SELECT 1) one LEFT JOIN target t ON true
"""

# Providers whose own events say when two legs are bridged (AMI BridgeEnter, the sandbox).
_REPORTS_BRIDGES = (AsteriskVoice, SandboxVoice)


@dataclass
class CallController:
    db: asyncpg.Pool
    registry: ProviderRegistry
    service: CallService
    settings: Settings
    _local: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _local_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(LOCAL_SLOTS), init=False
    )
    # The abandon decisions' own connections (run_local): a deadline does not queue behind
    # the rest of the process for the shared pool.
    _deadline_db: asyncpg.Pool | None = field(default=None, init=False)

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
        """The queued abandon check (run_locally's fallback: the process that applied the
        answer died before the deadline, or does not run call control): the same decision."""
        await self._abandon(call["id"], None)

    async def run_locally(self, job_id: int, call_id: uuid.UUID, op: str, at: float) -> None:
        """CallService.local_hook: a job of CallService.LOCAL_OPS that the report this process
        just applied queued, run here at `at` (time.monotonic()) rather than when a worker
        claims it, so a person's answer reaches the agent or the abandon message without a
        claim or a free worker slot on the way, however loaded the workers are."""
        task = asyncio.create_task(self._run_local(job_id, call_id, op, at), name=f"local:{op}")
        self._local.add(task)
        task.add_done_callback(self._local.discard)

    async def _run_local(self, job_id: int, call_id: uuid.UUID, op: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        bind(call_id=str(call_id), op=op, job_id=job_id)
        try:
            if op == "abandon_check":  # held in its decision's statement: one round trip
                if await self._abandon(call_id, job_id):
                    await self.db.execute(_DROP_JOB, job_id)
                return
            if self._local_slots.locked():
                return  # busy here: the workers have it
            async with self._local_slots:
                await self._run_held(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # its job, held or given back, runs it
            log.exception("in-process control op failed", call_id=str(call_id), op=op)

    async def _abandon(self, call_id: uuid.UUID, job_id: int | None) -> bool:
        """A campaign call a person answered `campaigns.abandon_after` ago: connected to its
        target (bridged) it is not abandoned; else it is — recorded (error_code 'abandoned';
        its prospect: `abandoned`, campaigns/outcomes.py), then the campaign's abandon
        message is played (16 CFR 310.4(b)(4): within 2 s of the answer) and the call ends.

        The decision is one statement (one round trip between the deadline and the message,
        whatever the load). In-process (`job_id`), it also holds the queued job, pushed back
        by a lease: should this process die before the message is played, the job plays it
        then. False: a worker had claimed that job already, the check is its."""
        row = await (self._deadline_db or self.db).fetchrow(
            _DECIDE_ABANDON,
            call_id,
            job_id,
            self.settings.calls.lease_seconds,
            "answered by a person, not connected to its target within 2 s",
        )
        if row is None:
            return job_id is None
        if job_id is not None and not row["held"]:
            return False
        if row["id"] is not None:
            since = (row["since_answer"], time.monotonic())
            await self._say_then_end(
                row, row["abandon_say"], since, "abandon_message", reason="abandoned"
            )
        return True

    async def _run_held(self, job_id: int) -> None:
        row = await self.db.fetchrow(_HOLD_JOB, job_id, self.settings.calls.lease_seconds)
        if row is None:
            return  # a worker has it
        try:
            await self(queue.Job.from_row(row))
        except queue.Reschedule as exc:
            await self.db.execute(_RELEASE_JOB, job_id, exc.until, exc.delay)
            return
        except BaseException:  # the workers retry it, with the queue's budget and backoff
            await asyncio.shield(self.db.execute(_RELEASE_JOB, job_id, None, 0.0))
            raise
        await self.db.execute(_DROP_JOB, job_id)

    async def run_local(self, stopping: asyncio.Event) -> None:
        """The lifetime of the in-process ops and of the abandon decisions' connections: the
        ops are cancelled when the process stops (their jobs, held or not, are then the
        workers')."""
        try:
            self._deadline_db = await gateway_db.create_pool(
                self.settings.database_url(), min_size=1, max_size=DEADLINE_CONNECTIONS
            )
            await stopping.wait()
        finally:
            for task in list(self._local):
                task.cancel()
            await asyncio.gather(*self._local, return_exceptions=True)
            deadline_db, self._deadline_db = self._deadline_db, None
            if deadline_db is not None:
                await deadline_db.close()

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
            since,
            "voicemail_drop",
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
        since: tuple[float, float],
        kind: str,
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
