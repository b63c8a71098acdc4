"""Call logic that is not the originate path: provider reports, reconcile, hangup, bridge, reads.

Everything a provider says about a call arrives here as a ``CallReport`` (AMI events through
``sip.calls.CallTracker``, Twilio callbacks, the sandbox) and is applied in one transaction:
the status moves forward or the report is recorded as a no-op, the event is written beside the
change, and follow-up work (bridge the agent, hang up, fail over) is queued in the same commit.
A pool permit is released right after the commit that ends the call.

Deadlines: the commit that answers a call also queues its max_duration job (hang up, as
POST …/hangup does, with error_code max_duration) and, with AMD, its amd_timeout job (no
verdict in time: go on as "unknown"). Usage: the commit that ends an answered call meters it
(usage_records: one voice_call and its talk time rounded up as voice_second).

Failover: an unanswered end marked ``failover`` (carrier congestion, 408, unreachable — never
busy, declined, not found or no answer) does not end the call while an untried provider is
left: the attempt is closed as ``failed_over`` and the call is dispatched again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from campaigns import didhealth
from gateway import queue
from gateway.calls import repo
from gateway.calls.schemas import (
    Call,
    CallAttempt,
    CallDetail,
    Durations,
    Pools,
    PoolState,
    VoiceUsage,
    VoiceUsageLine,
)
from gateway.calls.states import FINAL, LIVE, settled
from gateway.core.errors import Conflict, NotFound
from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from gateway.messages.schemas import TimelineEntry
from gateway.providers.contracts import CallReport
from gateway.providers.registry import ProviderRegistry
from gateway.settings import Settings
from ivr import repo as ivr_repo
from ivr.leases import LIVE_TTL as IVR_LIVE_MAX_AGE
from sip.calls import LiveLeg, Reconciled
from sip.pools import PermitLost, PoolExhausted, PoolHolders, TrunkPools, UnknownPool

log = get_logger(__name__)

CALL_DISPATCH_QUEUE = "calls"
CALL_CONTROL_QUEUE = "call_control"
# amd_result when no verdict came within calls.amd_timeout: not a machine, so on_answer goes on.
AMD_UNKNOWN = "unknown"
After = list[Callable[[], Awaitable[object]]]
# Runs a committed control job in this process at an instant of time.monotonic() (job id,
# call id, op, when): pipeline/calls/control.py run_locally.
LocalHook = Callable[[int, uuid.UUID, str, float], Awaitable[None]]
# The control ops on the way from a person's answer to the agent, or to the abandon message
# (16 CFR 310.4(b)(4): within 2 s), run by the process that applied the report that calls
# for them, without waiting for a worker to claim them; their jobs are the durable fallback.
LOCAL_OPS = frozenset({"connect", "bridge_legs", "abandon_check"})
# With a local run due, its job (the fallback) is due this much later: the worker does not
# race the cheaper local run to the claim (and then play the message one round trip later).
LOCAL_FIRST = 0.2


def event(call: asyncpg.Record | dict[str, Any], kind: str, data: dict[str, Any]) -> NewEvent:
    return NewEvent(call["tenant_id"], f"call.{kind}", str(call["id"]), call["trace_id"], data)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((end or datetime.now(UTC)) - start).total_seconds(), 3)


def call_from_row(row: asyncpg.Record | dict[str, Any]) -> Call:
    data = dict(row)
    start = data.get("dialing_at") or data.get("created_at")
    answered, ended = data.get("answered_at"), data.get("ended_at")
    durations = Durations(
        ring_seconds=_seconds(start, answered or ended) if data.get("dialing_at") else None,
        talk_seconds=_seconds(answered, ended),
        total_seconds=_seconds(data.get("dialing_at"), ended),
    )
    return Call.model_validate(data | {"durations": durations})


@dataclass
class CallService:
    db: asyncpg.Pool
    pools: TrunkPools
    registry: ProviderRegistry
    settings: Settings
    # Set where this process runs the call-control worker (pipeline/calls/runtime.py): the
    # LOCAL_OPS of the reports it applies run here once committed (control.py run_locally).
    local_hook: LocalHook | None = None

    # -- reads ------------------------------------------------------------------------------

    async def get_call(self, tenant_id: uuid.UUID, call_id: uuid.UUID) -> CallDetail:
        row = await repo.call_detail(self.db, tenant_id, call_id)
        if row is None:
            raise NotFound("no such call", code="call_not_found")
        data = dict(row)
        attempts = [CallAttempt.model_validate(a) for a in data.pop("attempts")]
        timeline = [TimelineEntry.model_validate(e) for e in data.pop("timeline")]
        return CallDetail(**call_from_row(data).model_dump(), attempts=attempts, timeline=timeline)

    async def pool_states(self, tenant_id: uuid.UUID) -> Pools:
        """Each pool's size and the tenant's own share of it. The pools are the whole trunk's,
        so the trunk-wide in-use and waiting figures would show one tenant the traffic of the
        others: only holders (Redis) that are this tenant's calls (PostgreSQL) are counted."""
        occupancy = await self.pools.occupancy()
        seen = {h for o in occupancy.values() for h in (*o.holders, *o.waiting)}
        ids = [i for i in map(_call_id, seen) if i is not None]
        mine = await repo.calls_of_tenant(self.db, tenant_id, ids) if ids else set()

        def count(holders: tuple[str, ...]) -> int:
            return sum(_call_id(h) in mine for h in holders)

        return Pools(
            pools=[
                PoolState(
                    name=o.pool,
                    trunk=o.trunk,
                    size=o.size,
                    in_use=count(o.holders),
                    waiting=count(o.waiting),
                )
                for o in occupancy.values()
            ]
        )

    async def voice_usage(self, tenant_id: uuid.UUID, start: datetime, end: datetime) -> VoiceUsage:
        rows = await repo.voice_usage(self.db, tenant_id, start, end)
        lines = [VoiceUsageLine.model_validate(dict(r)) for r in rows]
        return VoiceUsage(
            from_=start,
            to=end,
            calls=sum(line.calls for line in lines),
            billable_seconds=sum(line.billable_seconds for line in lines),
            providers=lines,
        )

    def __post_init__(self) -> None:
        # The calls table is the truth about who holds a channel; Redis is its cache.
        self.pools.rebuild_from(self.permit_holders)

    # -- permits ----------------------------------------------------------------------------

    async def permit_holders(self) -> dict[str, PoolHolders]:
        """Each pool's holders per the calls table, for the pools to rebuild from after Redis
        lost their state: every call on the trunk or being dialled, then the other queued
        ones (which may or may not hold a permit yet) to fill whatever room is left. Inbound
        IVR calls (`ivr_live`, by channel Uniqueid) are live: they are on the trunk."""
        live: dict[str, list[str]] = {}
        pending: dict[str, list[str]] = {}
        for row in await repo.permit_holders(self.db):
            into = live if row["live"] else pending
            into.setdefault(row["pool"], []).append(row["id"])
        for row in await ivr_repo.live_holders(self.db, IVR_LIVE_MAX_AGE):
            live.setdefault(row["pool"], []).append(row["holder"])
        return {
            pool: PoolHolders(live=live.get(pool, []), pending=pending.get(pool, []))
            for pool in {*live, *pending}
        }

    async def release_permit(self, call_id: uuid.UUID | str, pool: str) -> None:
        try:
            await self.pools.get(pool).release(str(call_id))
        except UnknownPool:
            pass
        except Exception as exc:  # the lease frees it anyway; reconcile too
            log.warning("pool permit not released", call_id=str(call_id), error=repr(exc))

    async def renew_permits(self) -> None:
        """Extend the leases of every live call's permit (a dead worker's calls lapse)."""
        rows = await repo.live_calls(self.db)

        async def renew(row: asyncpg.Record) -> None:
            try:
                pool = self.pools.get(row["pool"])
            except UnknownPool:
                return
            try:
                await pool.renew(str(row["id"]))
            except PermitLost:
                try:  # lapsed (a stalled worker, a reconcile): take it back if there is room
                    await pool.try_acquire(str(row["id"]))
                except PoolExhausted:
                    # Or it ended (and gave its permit back, which the next call took) since
                    # it was read as live: no permit and no room is then no loss. Only a call
                    # still on the trunk without one means the pool is over-committed.
                    async with self.db.acquire() as conn, conn.transaction():
                        call = await repo.get_call(conn, row["id"], lock=True)
                        if call is None or call["status"] not in LIVE:
                            return
                        log.warning("a live call lost its pool permit", call_id=str(row["id"]))
                        await emit(conn, event(row, "permit_lost", {"pool": row["pool"]}))
                    return
                # Or it ended since it was read as live: the permit just taken would be held
                # by nobody until its lease ran out.
                call = await repo.get_call(self.db, row["id"])
                if call is None or call["status"] in FINAL:
                    await self.release_permit(row["id"], row["pool"])

        await asyncio.gather(*(renew(r) for r in rows), return_exceptions=True)

    # -- reports ----------------------------------------------------------------------------

    async def report_many(self, reports: list[CallReport]) -> None:
        """The tracker's sink (sip.calls.CallSink): reports of one call, one transaction."""
        await self.apply_reports(reports)

    async def apply_report(self, r: CallReport) -> None:
        await self.apply_reports([r])

    async def apply_reports(self, reports: list[CallReport]) -> None:
        """Apply in one transaction; a deadlock victim is re-run, never dropped, because
        a provider does not resend a status callback we answered with an error."""
        for tries in range(1, 4):
            after: After = []
            try:
                async with self.db.acquire() as conn, conn.transaction():
                    for r in reports:
                        await self._apply(conn, r, after)
                break
            except asyncpg.DeadlockDetectedError:
                if tries == 3:
                    raise
                log.warning("call report deadlocked; re-applying", tries=tries)
        for work in after:
            await work()

    async def _apply(self, conn: asyncpg.Connection, r: CallReport, after: After) -> None:
        found = await repo.call_by_attempt_key(conn, r.attempt_key)
        if found is None:
            log.info("call report for an unknown attempt", attempt_key=r.attempt_key)
            return
        call, n = found
        if r.leg == "agent":
            await self._agent_report(conn, call, r, after)
            return
        if n != call["attempt_n"]:
            if r.status is not None:
                reason = f"attempt {n} was superseded by {call['attempt_n']}"
                if r.status in ("ringing", "answered") and r.provider.startswith("asterisk:"):
                    # A leg we gave up on that rings or answers after all: nobody wants it.
                    await self._control(
                        conn, call, "hangup_attempt", attempt_key=r.attempt_key, provider=r.provider
                    )
                await emit(
                    conn,
                    event(
                        call,
                        "status_noop",
                        {
                            "reported": r.status,
                            "current": call["status"],
                            "source": r.source,
                            "reason": reason,
                        },
                    ),
                )
            return
        if r.channel and r.channel != call["channel"]:
            await repo.update_call(conn, call["id"], channel=r.channel, alive_at=repo.LATEST)
        if r.amd is not None and call["amd_result"] is None:
            call = await self._amd(conn, call, r, after)
        elif r.amd is not None and call["amd_result"] == AMD_UNKNOWN:
            # The wait gave up already and the call went on: recorded, never acted on.
            late = {"result": r.amd, "detail": r.amd_detail, "source": r.source}
            await emit(conn, event(call, "amd_late", late))
        if r.fact in ("bridged", "unbridged"):
            await self._bridge_fact(conn, call, r)
        if r.status is not None:
            await self._status(conn, call, n, r, after)

    async def _status(
        self, conn: asyncpg.Connection, call: asyncpg.Record, n: int, r: CallReport, after: After
    ) -> None:
        new, current = r.status, call["status"]
        assert new is not None
        if (
            r.failover
            and new in ("failed", "no_answer", "busy")
            and current not in FINAL
            and current != "answered"
            and call["hangup_requested_at"] is None
        ):
            target = await self._failover_target(conn, call)
            if target is not None:
                detail = f"{r.error_code}: cause {r.hangup_cause}, SIP {r.sip_code}"
                await repo.close_attempt(conn, call["id"], n, "failed_over", error=detail)
                await emit(
                    conn,
                    event(
                        call,
                        "attempt_failed",
                        {"n": n, "provider": call["provider"], **_cause(r), "transient": True},
                    ),
                    event(
                        call,
                        "failover",
                        {"n": n, "from": call["provider"], "to": target, "reason": r.error_code},
                    ),
                )
                await queue.enqueue(
                    conn,
                    CALL_DISPATCH_QUEUE,
                    {"call_id": str(call["id"]), "failover_to": target},
                    tenant_id=call["tenant_id"],
                    trace_id=call["trace_id"],
                    max_attempts=self.settings.calls.max_attempts,
                )
                return
        # A final report ends the call whatever live status we held: "canceled" or "failed"
        # for a call we know was answered is its end, recorded as completed with its cause.
        new = settled(current, new)
        remapped = new != r.status
        moved = await repo.move_status(
            conn,
            call["id"],
            new,
            provider_call_id=None if call["provider_call_id"] else r.provider_call_id,
            hangup_cause=r.hangup_cause,
            hangup_cause_text=r.hangup_cause_text,
            sip_code=r.sip_code,
            sip_code_source=r.sip_code_source if r.sip_code is not None else None,
            error_code=r.error_code if new in FINAL and not remapped else None,
        )
        if moved is None:
            if new != current:
                await emit(
                    conn,
                    event(
                        call,
                        "status_noop",
                        {"reported": new, "current": current, "source": r.source},
                    ),
                )
            return
        data = {"source": r.source, "n": n, **_cause(r)}
        if remapped:
            data = {k: v for k, v in data.items() if k != "error_code"} | {"reported": r.status}
        await emit(conn, event(moved, new, data))
        if new == "answered":
            await self._answered(conn, moved, after)
        if new in FINAL:
            await self._ended(conn, moved, n, after)

    async def _ended(
        self, conn: asyncpg.Connection, call: asyncpg.Record, n: int, after: After
    ) -> None:
        await repo.close_attempt(conn, call["id"], n, "originated", only_open=True)
        await repo.record_voice_usage(conn, call["id"])
        await didhealth.record(conn, call["id"])  # its DID's health, with the end (0019)
        await emit(conn, event(call, "permit_released", {"pool": call["pool"]}))
        call_id, pool = call["id"], call["pool"]
        after.append(lambda: self.release_permit(call_id, pool))
        agent = call["agent"] or {}
        if agent.get("state") in ("dialing", "answered"):
            await self._control(conn, call, "hangup_agent")
        if agent.get("session_id"):
            await self._control(conn, call, "end_agent_session")

    async def _answered(self, conn: asyncpg.Connection, call: asyncpg.Record, after: After) -> None:
        await self._schedule_deadlines(conn, call)
        if call["amd"] and call["amd_result"] is None:
            return  # the verdict decides what happens next (_amd), or its timeout does
        await self._after_verdict(conn, call, after)

    def max_duration_of(self, call: asyncpg.Record) -> int:
        return call["max_duration"] or self.settings.calls.max_duration

    async def _schedule_deadlines(self, conn: asyncpg.Connection, call: asyncpg.Record) -> None:
        """The answered call's deadlines as control jobs committed with the answer: they run
        on whichever worker is alive then, so a restart in between loses neither."""
        answered = call["answered_at"]
        limit = timedelta(seconds=self.max_duration_of(call))
        await self._control(conn, call, "max_duration", run_at=answered + limit)
        if call["amd"] and call["amd_result"] is None:
            wait = timedelta(seconds=self.settings.calls.amd_timeout)
            await self._control(conn, call, "amd_timeout", run_at=answered + wait)

    async def amd_timed_out(self, call_id: uuid.UUID) -> None:
        """No AMD verdict in time (AMD() never ran, its VarSets were filtered or lost, the
        provider never said AnsweredBy): go on as 'unknown' instead of holding the called
        party in silence forever. A verdict that beat this job wins."""
        after: After = []
        async with self.db.acquire() as conn, conn.transaction():
            call = await repo.get_call(conn, call_id, lock=True)
            if call is None or call["status"] != "answered" or call["amd_result"] is not None:
                return
            waited = self.settings.calls.amd_timeout
            detail = f"no verdict within {waited:g} s of the answer"
            await repo.update_call(conn, call_id, amd_result=AMD_UNKNOWN, amd_detail=detail)
            await emit(
                conn,
                event(call, "amd_timeout", {"after_seconds": waited}),
                event(call, "amd", {"result": AMD_UNKNOWN, "detail": detail, "source": "timeout"}),
            )
            fresh = await repo.get_call(conn, call_id)
            assert fresh is not None
            await self._after_verdict(conn, fresh, after)
        for work in after:
            await work()

    async def max_duration_reached(self, call_id: uuid.UUID) -> None:
        """Hang up an answered call at its max_duration, the way POST …/hangup does, with
        error_code max_duration. The job may run late (no worker up), never early: a run
        before the deadline (another clock) is put back to the deadline."""
        async with self.db.acquire() as conn, conn.transaction():
            call = await repo.get_call(conn, call_id, lock=True)
            if call is None or call["status"] != "answered":
                return
            limit = self.max_duration_of(call)
            due = call["answered_at"] + timedelta(seconds=limit)
            if await conn.fetchval("SELECT now() < $1::timestamptz", due):
                raise queue.Reschedule(due, "the call's max_duration is not reached yet")
            data = {"max_duration": limit, "answered_at": call["answered_at"].isoformat()}
            if call["hangup_requested_at"] is not None:
                # Someone asked already and it is still up: ask the provider again.
                await emit(conn, event(call, "max_duration", data | {"repeated": True}))
                await self._control(conn, call, "hangup")
                return
            detail = f"hung up after its maximum duration of {limit} s"
            await repo.update_call(conn, call_id, error_code="max_duration", error_detail=detail)
            await emit(conn, event(call, "max_duration", data))
            await self._request_hangup(conn, call, reason="max_duration")

    async def _after_verdict(
        self, conn: asyncpg.Connection, call: asyncpg.Record, after: After
    ) -> None:
        if call["amd"] and call["amd_result"] == "machine" and call["on_machine"] == "hangup":
            if call["hangup_requested_at"] is None:  # the end's reason, as max_duration has
                detail = "an answering machine answered (on_machine: hangup)"
                await repo.update_call(
                    conn, call["id"], error_code="machine_detected", error_detail=detail
                )
            await self._request_hangup(conn, call, reason="answering_machine")
            return
        campaign = (call["metadata"] or {}).get("campaign_id")
        if call["amd"] and call["amd_result"] == "machine" and campaign:
            # A campaign with on_machine voicemail_drop (it dials them with "continue"): the
            # message is left after the greeting, never the agent (control.py).
            await self._control(conn, call, "voicemail_drop")
            return
        if call["on_answer"] and not call["agent"]:
            await self._control(conn, call, "connect", after=after)
            if (call["metadata"] or {}).get("campaign_id"):
                # A person answered a campaign call: connected to its target within 2 s, or
                # abandoned (16 CFR 310.4(b)(4); gateway/pipeline/calls/control.py). Decided
                # in this process at the deadline once the answer is committed (no queue
                # claim and no free worker slot on the way to the message); the job is the
                # durable fallback should this process die (due LOCAL_FIRST later then).
                grace = LOCAL_FIRST if self.local_hook is not None else 0.0
                due, left = await conn.fetchrow(
                    "SELECT d + make_interval(secs => $2),"
                    " extract(epoch FROM d - clock_timestamp())::float8"
                    " FROM (SELECT now() + make_interval(secs => $1) AS d) x",
                    self.settings.campaigns.abandon_after,
                    grace,
                )
                at = time.monotonic() + left
                await self._control(conn, call, "abandon_check", run_at=due, after=after, at=at)

    async def _amd(
        self, conn: asyncpg.Connection, call: asyncpg.Record, r: CallReport, after: After
    ) -> asyncpg.Record:
        await repo.update_call(conn, call["id"], amd_result=r.amd, amd_detail=r.amd_detail)
        await emit(
            conn, event(call, "amd", {"result": r.amd, "detail": r.amd_detail, "source": r.source})
        )
        fresh = await repo.get_call(conn, call["id"])
        assert fresh is not None
        if fresh["status"] == "answered" and fresh["amd"]:
            await self._after_verdict(conn, fresh, after)
        return fresh

    async def _bridge_fact(
        self, conn: asyncpg.Connection, call: asyncpg.Record, r: CallReport
    ) -> None:
        if r.fact == "bridged":
            await repo.update_call(conn, call["id"], bridged_at=repo.NOW)
            with_ = str(call["bridged_with"]) if call["bridged_with"] else "agent"
            await emit(
                conn,
                event(
                    call, "bridged", {"bridge_id": r.bridge_id, "with": with_, "source": r.source}
                ),
            )
        else:
            await emit(
                conn, event(call, "unbridged", {"bridge_id": r.bridge_id, "source": r.source})
            )

    async def record_bridged(self, call_id: uuid.UUID, *, with_: str, source: str) -> None:
        """For providers that do not report bridges themselves (Twilio)."""
        async with self.db.acquire() as conn, conn.transaction():
            call = await repo.get_call(conn, call_id, lock=True)
            if call is None:
                return
            await repo.update_call(conn, call_id, bridged_at=repo.NOW)
            if call["agent"] and with_ == "agent":
                await repo.update_call(conn, call_id, agent=call["agent"] | {"state": "bridged"})
            await emit(conn, event(call, "bridged", {"with": with_, "source": source}))

    async def _agent_report(
        self, conn: asyncpg.Connection, call: asyncpg.Record, r: CallReport, after: After
    ) -> None:
        agent = dict(call["agent"] or {})
        state = agent.get("state")
        changed: dict[str, Any] = {}
        events: list[NewEvent] = []
        if r.channel and agent.get("channel") != r.channel:
            changed["channel"] = r.channel
        if r.fact == "bridged" and state in ("dialing", "answered"):
            changed["state"] = "bridged"
        if r.status == "answered" and state in (None, "requested", "dialing"):
            changed["state"] = "answered"
            events.append(event(call, "agent_answered", {"source": r.source}))
        elif (
            r.status in ("completed", "busy", "no_answer", "failed", "canceled")
            and state != "ended"
        ):
            changed |= {"state": "ended", "end_status": r.status}
            events.append(
                event(call, "agent_ended", {"status": r.status, **_cause(r), "source": r.source})
            )
        if changed:
            await repo.update_call(conn, call["id"], agent=agent | changed)
        await emit(conn, *events)
        if changed.get("state") == "answered" and call["status"] == "answered":
            await self._control(conn, call, "bridge_legs", after=after)
        elif changed.get("state") == "answered" and call["status"] in FINAL:
            await self._control(conn, call, "hangup_agent")  # the call ended while it rang
        if changed.get("state") == "ended" and call["status"] in LIVE:
            await self._request_hangup(conn, call, reason="agent_left")

    async def _failover_target(self, conn: asyncpg.Connection, call: asyncpg.Record) -> str | None:
        tried = {a["provider"] for a in await repo.attempts(conn, call["id"])}
        for candidate in self.candidates(call, first=None):
            if candidate not in tried:
                return candidate
        return None

    def candidates(self, call: asyncpg.Record, *, first: str | None) -> list[str]:
        """Providers for a call in order: the one routing chose, then the voice fallback."""
        route = self.registry.route("voice")
        out: list[str] = []
        for name in (first or call["provider"] or route.primary, route.fallback):
            if name and name not in out and self.registry.has_voice(name):
                out.append(name)
        return out

    # -- requests ---------------------------------------------------------------------------

    async def _control(
        self,
        conn: asyncpg.Connection,
        call: asyncpg.Record,
        op: str,
        *,
        run_at: datetime | None = None,
        after: After | None = None,
        at: float | None = None,
        **extra: Any,
    ) -> None:
        """Queue a control job; one of LOCAL_OPS also runs here after commit (`after`) at
        `at` (time.monotonic(); default at once), when this process runs call control."""
        job = await queue.enqueue(
            conn,
            CALL_CONTROL_QUEUE,
            {"op": op, "call_id": str(call["id"]), **extra},
            tenant_id=call["tenant_id"],
            trace_id=call["trace_id"],
            max_attempts=self.settings.calls.max_attempts + 2,
            run_at=run_at,
        )
        hook, call_id = self.local_hook, call["id"]
        if hook is not None and after is not None and op in LOCAL_OPS:
            when = time.monotonic() if at is None else at
            after.append(lambda: hook(job, call_id, op, when))

    async def _request_hangup(
        self, conn: asyncpg.Connection, call: asyncpg.Record, *, reason: str
    ) -> None:
        if call["hangup_requested_at"] is not None:
            return
        await repo.update_call(conn, call["id"], hangup_requested_at=repo.NOW)
        await emit(conn, event(call, "hangup_requested", {"reason": reason}))
        await self._control(conn, call, "hangup")

    async def request_hangup(self, tenant_id: uuid.UUID, call_id: uuid.UUID) -> Call:
        release: tuple[uuid.UUID, str] | None = None
        async with self.db.acquire() as conn, conn.transaction():
            call = await repo.get_call(conn, call_id, tenant_id=tenant_id, lock=True)
            if call is None:
                raise NotFound("no such call", code="call_not_found")
            if call["status"] in FINAL:
                return call_from_row(call)  # hanging up an ended call changes nothing
            attempts = await repo.attempts(conn, call_id)
            in_flight = bool(attempts) and attempts[-1]["outcome"] in (None, "originated")
            if call["status"] in ("queued", "scheduled") and not in_flight:
                moved = await repo.move_status(
                    conn,
                    call_id,
                    "canceled",
                    error_code="canceled",
                    error_detail="hung up before it was dialled",
                )
                assert moved is not None
                events = [
                    event(call, "hangup_requested", {"reason": "api"}),
                    event(moved, "canceled", {"source": "api"}),
                ]
                if call["status"] == "queued":  # a scheduled call holds no channel yet
                    events.append(event(moved, "permit_released", {"pool": call["pool"]}))
                    release = (call_id, call["pool"])
                await emit(conn, *events)
            else:
                await self._request_hangup(conn, call, reason="api")
            row = await repo.get_call(conn, call_id)
        if release is not None:
            await self.release_permit(*release)
        assert row is not None
        return call_from_row(row)

    async def request_bridge(
        self, tenant_id: uuid.UUID, call_id: uuid.UUID, other_id: uuid.UUID
    ) -> Call:
        if call_id == other_id:
            raise Conflict("a call cannot be bridged with itself", code="not_bridgeable")
        async with self.db.acquire() as conn, conn.transaction():
            rows = {}
            for cid in sorted((call_id, other_id)):  # lock in id order: no deadlock
                row = await repo.get_call(conn, cid, tenant_id=tenant_id, lock=True)
                if row is None:
                    raise NotFound("no such call", code="call_not_found")
                rows[cid] = row
            a, b = rows[call_id], rows[other_id]
            for row in (a, b):
                if row["status"] != "answered":
                    raise Conflict(
                        f"call {row['id']} is {row['status']}; only answered calls can be bridged",
                        code="call_not_answered",
                    )
                if row["bridged_with"] is not None or row["bridged_at"] is not None:
                    raise Conflict(f"call {row['id']} is already bridged", code="already_bridged")
            if a["provider"] != b["provider"]:
                raise Conflict(
                    "the calls are on different providers and cannot be joined",
                    code="provider_mismatch",
                )
            await repo.update_call(conn, call_id, bridged_with=other_id)
            await repo.update_call(conn, other_id, bridged_with=call_id)
            await emit(
                conn,
                event(a, "bridge_requested", {"with": str(other_id)}),
                event(b, "bridge_requested", {"with": str(call_id)}),
            )
            await self._control(conn, a, "bridge", other=str(other_id))
            row = await repo.get_call(conn, call_id)
        assert row is not None
        return call_from_row(row)

    # -- reconcile (after an AMI reconnect) ---------------------------------------------------

    async def reconcile(
        self, provider: str, live: Sequence[LiveLeg], channel_ids: Sequence[str] = ()
    ) -> Reconciled:
        """Asterisk's channel list is the truth. Calls it no longer has are closed (the end was
        not observed), live ones are adopted (PostgreSQL catches up with their state), our
        channels no call wants are returned to be hung up, and pool permits held for calls
        that are over are released.

        A call whose channel we saw (its name, ringing, answered — all applied before the list
        was taken: the tracker holds events while it reconciles) and that is not listed has
        ended: it is closed now, whatever its age, at the last moment we knew it alive. Only
        a call whose channel we never saw may still be on its way (the Originate queued, the
        channel not created yet): it is spared while younger than ``reconcile_min_age`` and
        the tracker is told when to look again, until it is settled."""
        min_age = self.settings.pools.reconcile_min_age
        customer = {leg.key.attempt_key: leg for leg in live if leg.key.leg == "customer"}
        agents = {leg.key.attempt_key: leg for leg in live if leg.key.leg == "agent"}
        now = datetime.now(UTC)
        closed = adopted = 0
        recheck: float | None = None
        for row in await repo.live_on_provider(self.db, provider):
            leg = customer.get(row["attempt_key"])
            if leg is not None:
                adopted += 1
                await self._adopt(row, leg)
                continue
            if row["status"] == "queued":
                continue  # the dispatcher's: an Originate not (known to be) sent yet
            seen = row["channel"] is not None or row["status"] in ("ringing", "answered")
            age = (now - row["attempt_started_at"]).total_seconds()
            if seen or age >= min_age:
                detail = "the call ended while the AMI connection was down"
                closed += await self.close_unobserved(row["id"], row["attempt_n"], detail=detail)
            else:
                wait = max(0.05, min_age - age)
                recheck = wait if recheck is None else min(recheck, wait)
        orphans: list[LiveLeg] = []
        for key, leg in [*customer.items(), *agents.items()]:
            async with self.db.acquire() as conn:
                found = await conn.fetchrow(
                    """
                    SELECT c.status, c.attempt_n, a.n FROM call_attempts a
                    JOIN calls c ON c.id = a.call_id WHERE a.attempt_key = $1
                    """,
                    key,
                )
            if found is None or found["status"] in FINAL or found["n"] != found["attempt_n"]:
                orphans.append(leg)
        holders = set(await repo.unfinished_call_ids(self.db)) | set(channel_ids)
        released = await self.pools.reconcile(holders, min_age=min_age)
        log.info(
            "reconciled calls",
            provider=provider,
            adopted=adopted,
            closed=closed,
            orphans=len(orphans),
            recheck_in=recheck,
            permits_released=sum(len(v) for v in released.values()),
        )
        return Reconciled(orphans, recheck)

    async def mark_alive(self, provider: str, attempt_keys: Sequence[str], ago: float) -> None:
        """The tracker's AMI session ended: these calls were up until it last heard from
        Asterisk, ``ago`` seconds before now (a duration, so the database's clock dates it)."""
        if attempt_keys:
            await repo.mark_alive(self.db, provider, list(attempt_keys), ago)

    async def _adopt(self, row: asyncpg.Record, leg: LiveLeg) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            await repo.mark_alive(conn, row["provider"], [row["attempt_key"]])  # listed: up now
            await emit(
                conn,
                event(
                    row,
                    "adopted",
                    {
                        "channel": leg.channel,
                        "channel_state": leg.state,
                        "provider": row["provider"],
                    },
                ),
            )
        status = "answered" if leg.state == 6 else ("ringing" if leg.state == 5 else None)
        if status is not None or leg.channel != row["channel"]:
            await self.apply_report(
                CallReport(
                    provider=row["provider"],
                    attempt_key=row["attempt_key"],
                    status=status,  # type: ignore[arg-type]
                    channel=leg.channel,
                    source="reconcile",
                )
            )
        try:
            await self.pools.get(row["pool"]).acquire(str(row["id"]), timeout=0)  # renew/refresh
        except (PoolExhausted, UnknownPool):
            log.warning("an adopted call has no pool permit", call_id=str(row["id"]))
            return
        # If it ended while we adopted it, its release may have run before our acquire: look
        # again now that we hold it (an end committed after this read releases after it).
        call = await repo.get_call(self.db, row["id"])
        if call is None or call["status"] in FINAL:
            await self.release_permit(row["id"], row["pool"])

    async def close_unobserved(
        self, call_id: uuid.UUID, attempt_n: int, *, detail: str, source: str = "reconcile"
    ) -> int:
        """End a live call whose end nobody observed (Asterisk no longer has its channel), at
        the last moment we knew it alive — its talk time and bill leave out what we did not
        see. Answered: completed; else failed (ended_unobserved). 1 if it was closed here."""
        after: After = []
        async with self.db.acquire() as conn, conn.transaction():
            call = await repo.get_call(conn, call_id, lock=True)
            if call is None or call["status"] not in LIVE or call["attempt_n"] != attempt_n:
                return 0
            final = "completed" if call["status"] == "answered" else "failed"
            moved = await repo.move_status(
                conn,
                call["id"],
                final,
                ended_at=repo.ALIVE_END,
                error_code=None if final == "completed" else "ended_unobserved",
                error_detail=detail,
            )
            if moved is None:
                return 0
            ended = moved["ended_at"].isoformat()
            await emit(
                conn,
                event(
                    moved,
                    "reconciled",
                    {"action": "closed", "was": call["status"], "ended_at": ended, "by": source},
                ),
                event(moved, final, {"source": source, "n": attempt_n}),
            )
            await self._ended(conn, moved, attempt_n, after)
        for work in after:
            await work()
        return 1


def _call_id(holder: str) -> uuid.UUID | None:
    """A pool holder id as a call id (holders are call ids; anything else is nobody's call)."""
    try:
        return uuid.UUID(holder)
    except ValueError:
        return None


def _cause(r: CallReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("hangup_cause", "hangup_cause_text", "sip_code", "sip_code_source", "error_code"):
        value = getattr(r, name)
        if value is not None:
            out[name] = value
    if r.failover:
        out["failover"] = True
    return out
