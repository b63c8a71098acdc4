"""The Asterisk transport: inbound calls reach the engine over the AMI connection with AsyncAGI.

The dialplan a user needs (one context, reached by the trunk's inbound calls)::

    [from-carrier]
    exten => _X.,1,Goto(trunkline-ivr,s,1)
    [trunkline-ivr]
    exten => s,1,Answer()
     same => n,AGI(agi:async)
     same => n,Hangup()

For each ``AsyncAGIStart`` the transport takes an ``ivr`` pool permit (holder: the channel's
Uniqueid; a full pool plays the overflow and hangs up, recorded as ``ivr.overflow``), finds the
flow for the number called, and runs the session: each engine command becomes AGI command
lines (ivr/agi.py) sent as ``Action: AGI`` with our own ``CommandID``; the ``AsyncAGIExec``
carrying that CommandID is the result, and the result of the command a node waits on (GET DATA,
RECORD FILE) is the caller's input. ``AsyncAGIEnd`` (or an AGI action refused because the
channel is gone) is the caller hanging up: the session ends ``caller_hangup``. The permit is
released when the call ends, whatever ends it. Every wait is bounded.

Event handlers only hand results to futures and start tasks: the AMI client runs handlers one
at a time, so a call never holds up another's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.events.outbox import NewEvent, emit
from gateway.logs import get_logger
from gateway.stopping import cancel_and_wait
from ivr import repo
from ivr.agi import (
    AgiConfig,
    AgiResult,
    gather_input,
    parse_env,
    parse_result,
    record_input,
    render,
)
from ivr.engine import (
    Bridge,
    CallerHangup,
    Command,
    Gather,
    Hangup,
    Input,
    Record,
    Resume,
    Transfer,
    TransferVerdict,
    Webhook,
)
from ivr.flow import bridge_allowed
from ivr.runner import FlowRunner, Stepped
from sip import calls as sip_calls
from sip.pools import PermitLost

log = get_logger(__name__)

Route = Callable[[dict[str, str]], Awaitable[Any]]  # AGI env → the ivr_flows row, or None
# (session, agent spec) → the SIP URI of a new agent session for this call (agent nodes)
AgentConnector = Callable[[Any, dict[str, Any]], Awaitable[str]]
BRIDGE_TIMEOUT = 4 * 3600.0  # a Dial to an agent lasts as long as the conversation
# Dial's DIALSTATUS → the transfer call's end (anything else: failed)
DIAL_STATUS = {"ANSWER": "completed", "BUSY": "busy", "NOANSWER": "no_answer", "CANCEL": "canceled"}


class AmiLike(Protocol):
    def on_event(self, pattern: str, handler: Callable[[Any], Any]) -> Callable[[], None]: ...

    async def send(
        self, action: Any, *, timeout: float | None = None, check: bool = True
    ) -> Any: ...


class PermitPool(Protocol):
    async def try_acquire(self, holder: str) -> Any: ...

    async def renew(self, holder: str) -> Any: ...

    async def release(self, holder: str) -> bool: ...


class CallLease(Protocol):
    """Which worker runs a call (ivr/leases.py): every worker's AMI connection sees every
    AsyncAGIStart; the one holding the lease drives the call and renews the lease, and when it
    dies the lease lapses and another worker takes the call over from its session."""

    seconds: float

    async def claim(self, uniqueid: str) -> bool: ...

    async def renew(self, uniqueid: str) -> bool: ...

    async def release(self, uniqueid: str) -> None: ...

    async def remember(self, uniqueid: str, channel: str, session_id: str | None) -> None: ...

    async def live(self) -> list[Any]: ...  # LiveCall: uniqueid, channel, session_id

    async def holders(self, uniqueids: list[str]) -> list[str | None]: ...

    async def session_of(self, uniqueid: str) -> str | None: ...


class ChannelGone(Exception):
    """The channel left AsyncAGI (hung up): no command can run on it any more."""


@dataclass
class _Call:
    channel: str
    uniqueid: str
    results: dict[str, asyncio.Future[AgiResult]] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    admitted: bool = False  # holds an ivr pool permit (renewed with the lease)
    owned: bool = False  # this worker holds the call's lease
    lost: bool = False  # the lease went to another worker: stop, give nothing back
    session_id: str | None = None
    relist: bool = False  # listing it in Redis failed: try again with the next renewal


class AsyncAgiTransport:
    def __init__(
        self,
        ami: AmiLike,
        runner: FlowRunner,
        route: Route,
        *,
        pool: PermitPool | None = None,
        lease: CallLease | None = None,
        agents: AgentConnector | None = None,
        bridge_hosts: tuple[str, ...] = (),
        cfg: AgiConfig | None = None,
        command_timeout: float = 10.0,
        overflow_sound: str = "all-circuits-busy-now",
        provider: str = "asterisk",
    ) -> None:
        self.ami = ami
        self.provider = provider  # the voice provider's name (a transfer's call record)
        self.runner = runner
        self.route = route
        self.pool = pool
        self.lease = lease
        self.agents = agents
        self.bridge_hosts = bridge_hosts
        self.cfg = cfg or AgiConfig()
        self.command_timeout = command_timeout
        self.overflow_sound = overflow_sound
        self.calls: dict[str, _Call] = {}  # the calls this worker drives, by channel
        self.seen: dict[str, tuple[str, dict[str, str]]] = {}  # every AGI channel: (uid, env)
        self.overflows = 0
        self.takeovers = 0
        self.worker = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._maintainer: asyncio.Task[None] | None = None
        self._stopping = False
        # Calls this worker gave back (uniqueid → when): not orphans, though a listing read
        # before the release may still show them. Kept for one lease.
        self._closing: dict[str, float] = {}
        self._dead = False  # tests: a process killed with -9 runs no cleanup
        self._ids = itertools.count(1)
        self._prefix = f"ivr-{uuid.uuid4().hex[:8]}"
        self._unregister: list[Callable[[], None]] = []

    def attach(self) -> None:
        self._unregister = [
            self.ami.on_event("AsyncAGIStart", self._on_start),
            self.ami.on_event("AsyncAGIExec", self._on_exec),
            self.ami.on_event("AsyncAGIEnd", self._on_end),
        ]
        if self.lease is not None or self.pool is not None:
            self._maintainer = asyncio.ensure_future(self._maintain())

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the lease maintenance (bounded: its Redis calls can swallow a cancel, see
        gateway/stopping.py), then the calls this worker drives."""
        self._stopping = True
        for unregister in self._unregister:
            unregister()
        await cancel_and_wait(self._maintainer)
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # --- AMI events (quick: futures and tasks only) ---------------------------------------

    def _on_start(self, event: Any) -> None:
        env = parse_env(str(event.get("Env", "")))
        channel = str(event.get("Channel") or env.get("agi_channel", ""))
        uniqueid = str(event.get("Uniqueid") or env.get("agi_uniqueid", ""))
        if sip_calls.parse(uniqueid) is not None:
            return  # a call the gateway placed, waiting in AGI to be bridged or told to play
        call = _Call(channel, uniqueid)
        self.seen[channel] = (call.uniqueid, env)
        self.calls[channel] = call
        call.task = asyncio.ensure_future(self._run(call, env))

    def _on_exec(self, event: Any) -> None:
        call = self.calls.get(str(event.get("Channel", "")))
        if call is None:
            return
        future = call.results.pop(str(event.get("CommandId", "")), None)
        if future is not None and not future.done():
            future.set_result(parse_result(str(event.get("Result", ""))))

    def _on_end(self, event: Any) -> None:
        channel = str(event.get("Channel", ""))
        self.seen.pop(channel, None)
        call = self.calls.get(channel)
        if call is not None:
            call.ended.set()

    # --- leases: renew ours, take over the calls of a worker that died ----------------------

    async def _maintain(self) -> None:
        interval = self.lease.seconds / 3 if self.lease is not None else 5.0
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self._maintain_once()
            except Exception:
                log.exception("ivr.lease_maintenance_failed")

    async def _maintain_once(self) -> None:
        # Every call at once (a pass must take far less than a lease, with hundreds of calls).
        await asyncio.gather(*(self._keep(call) for call in list(self.calls.values())))
        if self.lease is None:
            return
        # Calls whose worker died: the ones this connection saw start, and the ones any worker
        # listed (a worker that was not up when the call arrived finds them there). Only those
        # whose lease is gone are claimed (one MGET for them all).
        now = asyncio.get_running_loop().time()
        for uid, at in list(self._closing.items()):
            if at < now - 2 * self.lease.seconds:
                del self._closing[uid]
        orphans = {uid: channel for channel, (uid, _) in self.seen.items()}
        orphans |= {c.uniqueid: c.channel for c in await self.lease.live()}
        candidates = [
            (uid, ch)
            for uid, ch in orphans.items()
            if ch not in self.calls and uid not in self._closing
        ]
        if not candidates:
            return
        held = await self.lease.holders([uid for uid, _ in candidates])
        for (uniqueid, channel), holder in zip(candidates, held, strict=True):
            if holder is not None or channel in self.calls:
                continue
            if not await self.lease.claim(uniqueid):
                continue
            self.takeovers += 1
            log.warning("ivr.call_taken_over", channel=channel, worker=self.worker)
            call = _Call(channel, uniqueid, owned=True)
            self.calls[channel] = call
            call.task = asyncio.ensure_future(self._run(call, {}, takeover=True))

    async def _keep(self, call: _Call) -> None:
        """Renew one call's lease (and its listing, if Redis lost it) and its permit."""
        try:
            # Only a call this worker has claimed: one whose claim is still on its way would
            # read as lost here, and be dropped the moment the claim lands.
            if self.lease is not None and call.owned:
                renewed = await self.lease.renew(call.uniqueid)
                if not renewed:
                    if call.task is not None:  # another worker runs it now
                        log.warning("ivr.call_lease_lost", channel=call.channel)
                        call.lost = True
                        call.task.cancel()
                    return
                if renewed == 2 or call.relist:  # Redis lost the list: put the call back
                    await self.lease.remember(call.uniqueid, call.channel, call.session_id)
                    call.relist = False
            if call.admitted and self.pool is not None:
                await self.pool.renew(call.uniqueid)
        except PermitLost:
            pass  # given back by the call that just ended (or lapsed: its next renewal says)
        except Exception:
            log.warning("ivr.call_renewal_failed", channel=call.channel, exc_info=True)

    # --- one call ----------------------------------------------------------------------------

    async def _run(self, call: _Call, env: dict[str, str], *, takeover: bool = False) -> None:
        try:
            # Every worker's AMI connection sees the AsyncAGIStart: one of them runs the call.
            if not takeover and self.lease is not None:
                if not await self.lease.claim(call.uniqueid):
                    self.calls.pop(call.channel, None)
                    return
                call.owned = True
                await self._list(call)
            if takeover:
                await self._resume(call)
                return
            if self.pool is not None:
                try:
                    await self.pool.try_acquire(call.uniqueid)
                    call.admitted = True
                except Exception as exc:  # PoolExhausted (or Redis down): no IVR for this call
                    await self._overflow(call, env, exc)
                    return
            row = await self.route(env)
            if row is None:
                log.warning("ivr.no_flow_for_number", dnid=env.get("agi_dnid"))
                await self._send_quietly(call, "HANGUP")
                return
            stepped = await self.runner.start(
                row,
                caller=_e164ish(env.get("agi_callerid", "")),
                called=env.get("agi_dnid") or None,
                transport="asterisk",
                holder=call.uniqueid if call.admitted else None,
                pool=getattr(self.pool, "name", "ivr"),
            )
            call.session_id = stepped.session.id
            await self._list(call)
            await self._drive(call, stepped)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ivr.asyncagi_call_failed", channel=call.channel)
        finally:
            if not self._dead:
                if self.calls.get(call.channel) is call:
                    self.calls.pop(call.channel, None)
                for future in call.results.values():
                    future.cancel()
            if not self._dead and not call.lost:
                self._closing[call.uniqueid] = math.inf  # until released
                if call.owned:
                    self.seen.pop(call.channel, None)  # over (or nothing to carry on): done
                if call.admitted or call.owned:  # off the rebuild list, then the permit back
                    with contextlib.suppress(Exception):
                        await asyncio.shield(repo.end_live(self.runner.db, call.uniqueid))
                if call.admitted and self.pool is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.pool.release(call.uniqueid))
                if call.owned and self.lease is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.lease.release(call.uniqueid))
                self._closing[call.uniqueid] = asyncio.get_running_loop().time()

    async def _resume(self, call: _Call) -> None:
        """Carry on a call whose worker died: its session, from the node it waits at."""
        session_id = await self.lease.session_of(call.uniqueid) if self.lease else None
        session = await self.runner.store.load(session_id) if session_id else None
        call.session_id = session_id
        if session is None or session.ended is not None:
            await self._send_quietly(call, "HANGUP")  # nothing to carry on (or already over)
            return
        if self.pool is not None:  # the permit is the call's, whoever runs it: keep it alive
            try:
                await self.pool.renew(call.uniqueid)
                call.admitted = True
            except Exception:
                with contextlib.suppress(Exception):
                    await self.pool.try_acquire(call.uniqueid)
                    call.admitted = True
        stepped = await self.runner.feed(session, Resume(self.worker))
        await self._drive(call, stepped)

    async def _list(self, call: _Call) -> None:
        """The call (and its session) in Redis, for another worker to take over."""
        if self.lease is None:
            return
        try:
            await self.lease.remember(call.uniqueid, call.channel, call.session_id)
        except Exception:
            call.relist = True  # the next renewal tries again
            log.warning("ivr.call_not_listed", channel=call.channel, exc_info=True)

    async def abandon(self) -> None:
        """Tests: die as `kill -9` would — stop everything, release nothing."""
        self._dead = True
        for unregister in self._unregister:
            unregister()
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        if self._maintainer is not None:
            tasks.append(self._maintainer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, call: _Call, stepped: Stepped) -> None:
        while stepped.session.ended is None:
            extra: list[NewEvent] = []  # a transfer's guardrail verdict, committed with the step
            try:
                event = await self._perform(call, stepped, extra)
            except ChannelGone:
                event = CallerHangup("caller_hangup")
            stepped = await self.runner.feed(stepped.session, event, extra=tuple(extra))
        # the last step's commands (a goodbye, HANGUP) still go out while the channel lives
        if stepped.session.ended != "caller_hangup":
            with contextlib.suppress(ChannelGone):
                await self._perform(call, stepped, [])

    async def _perform(self, call: _Call, stepped: Stepped, extra: list[NewEvent]) -> Input:
        """Run the step's commands; the answer to the one the session waits on is its input."""
        session = stepped.session
        answer: Input | None = None
        for n, cmd in enumerate(stepped.commands):
            if isinstance(cmd, Webhook):
                answer = await self.runner.call_webhook(session, cmd)
                continue
            if isinstance(cmd, Transfer):
                answer = await self._transfer(call, session, cmd, extra)
                continue
            if isinstance(cmd, Bridge) and cmd.kind == "agent":
                cmd = await self._agent(session, cmd)
            elif isinstance(cmd, Bridge) and not bridge_allowed(
                str(cmd.target.get("uri", "")), self.bridge_hosts
            ):
                # a bridge passes no guardrail: only ever to agents.bridge_hosts (checked at
                # upload too; this holds when the setting changed since)
                log.warning("ivr.bridge_refused", uri=cmd.target.get("uri"))
                cmd = Bridge("sip", {})
            lines = render(cmd, self.cfg, session_id=session.id, n=n)
            if isinstance(cmd, Bridge):
                # the caller talks to the agent (or SIP target) until one side hangs up
                lines = [*lines, "HANGUP"]
            for line in lines:
                result = await self._command(call, line, _timeout_for(cmd, self.command_timeout))
                if line.startswith("GET DATA") and isinstance(cmd, Gather):
                    answer = gather_input(result)
                elif line.startswith("RECORD FILE") and isinstance(cmd, Record):
                    answer = record_input(result, line.split()[2])
                if isinstance(cmd, Hangup):
                    call.ended.set()
        if session.ended is not None:
            return CallerHangup(session.ended)
        if answer is None:
            raise ChannelGone(call.channel)
        return answer

    async def _agent(self, session: Any, cmd: Bridge) -> Bridge:
        """A new agent session for this caller, bridged by its SIP URI (none: hang up)."""
        if self.agents is None:
            return Bridge("sip", {})
        try:
            uri = await self.agents(session, cmd.target)
        except Exception:
            log.exception("ivr.agent_session_failed", session_id=session.id)
            return Bridge("sip", {})
        return Bridge("sip", {"uri": uri})

    async def _transfer(
        self, call: _Call, session: Any, cmd: Transfer, extra: list[NewEvent]
    ) -> Input:
        """An outbound call through the pipeline (its record, the chain at accept and at
        dispatch); only the number the chain cleared is dialled, on a channel of the pool,
        and the call record ends with the Dial's DIALSTATUS."""
        refused, ticket, cleared = await self.runner.place_transfer(session, cmd, self.provider)
        if refused is not None or ticket is None or self.runner.transfers is None:
            return refused or TransferVerdict("refused", "transfers are not configured")
        desk = self.runner.transfers
        action = cleared.verify()  # what the chain cleared is what is dialled
        dial = Transfer(action.to, action.from_, cmd.timeout, cmd.purpose)
        leg = False
        if self.pool is not None:  # the transfer's leg is a second channel on the trunk
            try:
                await self.pool.try_acquire(ticket.call_id)
                leg = True
            except Exception as exc:
                await desk.finish(ticket, "failed", f"no channel for the transfer: {exc}")
                return TransferVerdict("failed", "no free channel", ticket.call_id)
        status, detail = "failed", None
        try:
            (line,) = render(dial, self.cfg, session_id=session.id)
            result = await self._command(call, line, cmd.timeout + self.command_timeout)
            if result.code != 200 or result.result == "-1":
                status, detail = "canceled", f"dial ended {result.code} {result.result}"
            else:
                got = await self._command(call, "GET VARIABLE DIALSTATUS", self.command_timeout)
                detail = f"DIALSTATUS {got.data}" if got.data else "no DIALSTATUS"
                status = DIAL_STATUS.get(got.data or "", "failed")
        except ChannelGone:
            status, detail = "canceled", "the caller hung up during the dial"
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(desk.finish(ticket, status, detail))
            if leg and self.pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.pool.release(ticket.call_id))
        if status == "completed":
            return TransferVerdict("transferred", detail, ticket.call_id)
        return TransferVerdict("failed", detail, ticket.call_id)

    async def _command(self, call: _Call, line: str, timeout: float) -> AgiResult:
        if call.ended.is_set():
            raise ChannelGone(call.channel)
        command_id = f"{self._prefix}-{next(self._ids)}"
        future: asyncio.Future[AgiResult] = asyncio.get_running_loop().create_future()
        call.results[command_id] = future
        action = {
            "Action": "AGI",
            "Channel": call.channel,
            "Command": line,
            "CommandID": command_id,
        }
        try:
            response = await self.ami.send(action, check=False)
            if str(response.get("Response", "")).lower() != "success":
                raise ChannelGone(str(response.get("Message", call.channel)))
            ended = asyncio.ensure_future(call.ended.wait())
            try:
                done, _ = await asyncio.wait(
                    {future, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ended.cancel()
            if future in done:
                return future.result()
            if call.ended.is_set():
                raise ChannelGone(call.channel)
            raise ChannelGone(f"{line!r}: no AsyncAGIExec within {timeout}s")
        finally:
            call.results.pop(command_id, None)

    async def _send_quietly(self, call: _Call, line: str) -> None:
        with contextlib.suppress(Exception):
            await self._command(call, line, self.command_timeout)

    async def _overflow(self, call: _Call, env: dict[str, str], exc: BaseException) -> None:
        """A full `ivr` pool: the caller hears the overflow message, the call is counted
        (`ivr.overflow` for the flow's tenant, when the number called has one) and hung up."""
        self.overflows += 1
        log.warning("ivr.overflow", channel=call.channel, reason=str(exc))
        with contextlib.suppress(Exception):
            row = await self.route(env)
            if row is not None:
                async with self.runner.db.acquire() as conn, conn.transaction():
                    await emit(
                        conn,
                        NewEvent(
                            row["tenant_id"],
                            "ivr.overflow",
                            call.uniqueid,
                            None,
                            {
                                "flow": row["name"],
                                "from": env.get("agi_callerid"),
                                "to": env.get("agi_dnid"),
                                "reason": str(exc),
                            },
                        ),
                    )
        await self._send_quietly(call, f'STREAM FILE {self.overflow_sound} ""')
        await self._send_quietly(call, "HANGUP")


def _timeout_for(cmd: Command, base: float) -> float:
    """How long one AGI command may take before the call is given up: its own time plus a
    margin (a GET DATA waits up to its timeout per digit)."""
    if isinstance(cmd, Bridge):
        return BRIDGE_TIMEOUT
    if isinstance(cmd, Gather):
        return base + cmd.timeout * ((cmd.digits or 32) + 1)
    if isinstance(cmd, Record):
        return base + cmd.max_length + cmd.timeout
    return base


def _e164ish(callerid: str) -> str:
    digits = "".join(ch for ch in callerid if ch.isdigit())
    return f"+{digits}" if digits else callerid or "unknown"
