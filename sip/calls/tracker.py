"""Call tracking from AMI events: Asterisk's events in, normalized ``CallReport``s out.

Correlation (README "Correlating an originated call"): we choose every originated channel's
``ChannelId`` (``sip.calls.keys``), which becomes its ``Uniqueid`` and ``Linkedid``. An event
names its leg by ``Uniqueid`` (``DestUniqueid`` for Dial* events) first; a channel Asterisk
created from ours (the PJSIP leg of a Local/Dial originate) carries our key only as its
``Linkedid`` and is read for what it says about the far end (ringing, the SIP code), never for
the leg's own state. ``Uniqueid`` wins over ``Linkedid`` because a bridged channel takes its
peer's Linkedid (04). ``ActionID`` is not needed: a failed ``OriginateResponse`` carries the
ChannelId as ``Uniqueid`` too.

Order: ``OriginateResponse`` may come before or after ``Newstate Up``/``DialEnd``, and for
rejections before or after ``Hangup`` (03a-d), so nothing waits for it. A leg ends at its
``Hangup`` (the cause is there, or in the ``HangupRequest`` before it); the only thing a
failed ``OriginateResponse`` decides alone is a leg Asterisk never created a channel for.

Per leg the tracker remembers what it saw (rang, answered, cause) while the leg lives; after a
reconnect, ``CoreShowChannels`` rebuilds that memory and the sink reconciles the call records
(``CallSink.reconcile``): calls Asterisk no longer has are closed, live ones adopted. Events
that arrive while it reconciles wait until it is done (what the database says it saw was seen
before the list was taken), and calls too young to judge are looked at again until settled.
When a session ends, every leg it knew is marked alive until Asterisk was last heard from
(``CallSink.mark_alive``): an end missed in the gap is dated there, not when it is noticed.

A leg that neither rings nor shows progress within ``setup_timeout`` of its channel's creation
is given up (nothing answered the INVITE; Asterisk would wait out the whole Originate Timeout).

Reports of one call are applied in order, calls in parallel (``_Lanes``): the AMI event loop
never waits on the database for more than it takes to queue the work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gateway.providers.contracts import CallReport
from sip.ami import AMIClient, AMIConnectionLost, AMIError, Message
from sip.calls import causes
from sip.calls.keys import LegKey, parse
from sip.calls.leader import LeaderLease

log = structlog.get_logger(__name__)

UP, RINGING = 6, 5


@dataclass(frozen=True)
class LiveLeg:
    """One of our channels as ``CoreShowChannels`` lists it."""

    key: LegKey
    channel: str
    state: int  # ChannelState: 6 Up, 5 Ringing, 0 Down …
    bridge_id: str | None = None


@dataclass(frozen=True)
class Reconciled:
    """What a reconcile leaves to the tracker: our channels no call wants (to hang up), and
    when to look again for calls it could not settle yet (None: all settled)."""

    orphans: Sequence[LiveLeg] = ()
    recheck_after: float | None = None


class CallSink(Protocol):
    """Where the tracker's findings go (the gateway's call service)."""

    async def report_many(self, reports: list[CallReport]) -> None:
        """Apply reports of one call, in order (one transaction)."""
        ...

    async def reconcile(
        self, provider: str, live: Sequence[LiveLeg], channel_ids: Sequence[str]
    ) -> Reconciled:
        """Close what Asterisk no longer has, adopt what it has, release pool permits whose
        holders are neither unfinished calls nor in ``channel_ids`` (every Uniqueid and
        Linkedid Asterisk listed); return our channels no call wants any more (to hang up)
        and when to reconcile again for calls too young to judge."""
        ...

    async def mark_alive(self, provider: str, attempt_keys: Sequence[str], ago: float) -> None:
        """These calls were up until ``ago`` seconds ago (the AMI session that carried their
        events last heard from Asterisk then): an end we miss is dated no earlier."""
        ...


@dataclass
class _Leg:
    key: LegKey
    channel: str | None = None
    created: bool = False
    rang: bool = False
    answered: bool = False
    cause: int | None = None
    sip_code: int | None = None
    sip_code_source: str | None = None  # "sip": in a HangupRequest (a response); "mapped"
    amd_status: str | None = None
    amd_cause: str | None = None
    amd_reported: bool = False
    reported: set[str] = field(default_factory=set)
    setup_timer: asyncio.TimerHandle | None = None  # no ringing yet: give up when it fires


class _Lanes:
    """Apply reports of the same call in order, different calls concurrently, and what piled
    up for one call meanwhile in one batch (one transaction: ringing + answered arrive together)."""

    def __init__(self, apply: Callable[[list[CallReport]], Awaitable[None]], limit: int) -> None:
        self._apply = apply
        self._pending: dict[str, list[CallReport]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(limit)

    def submit(self, key: str, report: CallReport) -> None:
        self._pending.setdefault(key, []).append(report)
        if key not in self._runners:
            self._runners[key] = asyncio.create_task(self._run(key), name=f"call-lane:{key}")

    async def _run(self, key: str) -> None:
        try:
            async with self._slots:
                while batch := self._pending.pop(key, None):
                    await self._apply_with_retry(key, batch)
        finally:
            # No await between the empty pop and here: a submit in between is impossible.
            self._runners.pop(key, None)

    async def _apply_with_retry(self, key: str, batch: list[CallReport]) -> None:
        """Apply a batch, retrying transient failures (a deadlock with the dispatcher's
        transaction, a dropped connection): dropping it would leave the call stuck. Applying
        is safe to repeat — call status only moves forward."""
        for attempt in range(_APPLY_ATTEMPTS):
            try:
                await self._apply(batch)
                return
            except Exception:
                if attempt == _APPLY_ATTEMPTS - 1:
                    log.exception("call reports could not be applied", lane=key, n=len(batch))
                    return
                log.warning("call reports will be applied again", lane=key, attempt=attempt + 1)
                await asyncio.sleep(0.02 * 2**attempt * random.uniform(0.5, 1.5))

    async def drain(self) -> None:
        while self._runners:
            await asyncio.gather(*list(self._runners.values()), return_exceptions=True)


_APPLY_ATTEMPTS = 6


class CallTracker:
    """Turns one Asterisk's AMI events into ``CallReport``s for ``sink``.

    ``attach()`` registers the handlers on the client; with a ``lease``, only the process
    holding it tracks (see ``sip.calls.leader``).
    """

    def __init__(
        self,
        client: AMIClient,
        provider: str,
        sink: CallSink,
        *,
        lease: LeaderLease | None = None,
        concurrency: int = 64,
        setup_timeout: float = 0.0,
    ) -> None:
        self.client = client
        self.provider = provider
        self.sink = sink
        self.lease = lease
        self.setup_timeout = setup_timeout
        self.reconciles = 0
        self._legs: dict[str, _Leg] = {}
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lanes = _Lanes(sink.report_many, concurrency)
        self._reconciling = asyncio.Lock()
        self._held: list[Message] | None = None  # events that arrived during a reconcile
        self._recheck: asyncio.TimerHandle | None = None
        self._rechecks: set[asyncio.Task[None]] = set()
        self._unregister: list[Callable[[], None]] = []
        self._handlers: Mapping[str, Callable[[Message], None]] = {
            "newchannel": self._newchannel,
            "newstate": self._newstate,
            "dialstate": self._dialstate,
            "dialend": self._dialend,
            "originateresponse": self._originate_response,
            "hanguprequest": self._hangup_request,
            "softhanguprequest": self._hangup_request,
            "hangup": self._hangup,
            "bridgeenter": self._bridge_enter,
            "bridgeleave": self._bridge_leave,
            "varset": self._varset,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def attach(self) -> None:
        self._unregister = [
            self.client.on_event("*", self._on_event),
            self.client.on_connected(self._on_connected),
            self.client.on_disconnected(self._on_disconnected),
        ]

    async def close(self) -> None:
        for unregister in self._unregister:
            unregister()
        if self._recheck is not None:
            self._recheck.cancel()
        for task in list(self._rechecks):
            task.cancel()
        for leg in self._legs.values():
            _stop_setup_timer(leg)
        await self._lanes.drain()

    @property
    def active(self) -> bool:
        return self.lease is None or self.lease.held

    async def drain(self) -> None:
        """Wait until every report queued so far is applied (tests, shutdown)."""
        await self._lanes.drain()

    # -- reconcile --------------------------------------------------------------------------

    async def _on_connected(self) -> None:
        await self.reconcile()

    async def _on_disconnected(self, reason: AMIConnectionLost) -> None:
        log.warning("call tracking paused: AMI session down", ami=self.provider, reason=str(reason))
        if not self.active or reason.last_heard is None:
            return
        # Every channel of ours the session knew was up until Asterisk was last heard from:
        # whatever ends during the gap is dated no earlier (and no later) than that.
        keys = sorted(
            {
                leg.key.attempt_key
                for leg in self._legs.values()
                if leg.created and leg.key.leg == "customer"
            }
        )
        ago = max(0.0, time.time() - reason.last_heard)
        try:
            await self.sink.mark_alive(self.provider, keys, ago)
        except Exception as exc:  # PostgreSQL away too: the last status change dates them
            log.warning("calls not marked alive at disconnect", ami=self.provider, error=repr(exc))

    async def reconcile(self) -> None:
        """``CoreShowChannels`` is the truth: rebuild the per-leg memory from it, let the sink
        close/adopt call records and release pool permits, hang up orphans."""
        if not self.active or not self.client.is_connected:
            return
        async with self._reconciling:
            # Events that arrive from here on wait until the sink has judged the list: what
            # PostgreSQL says it saw of a call was then all seen before the list was taken.
            self._held = []
            try:
                result = await self._reconcile()
            finally:
                held, self._held = self._held, None
                for event in held:
                    self._on_event(event)
        if result is not None and result.recheck_after is not None:
            self._schedule_recheck(result.recheck_after)

    def _schedule_recheck(self, delay: float) -> None:
        """Reconcile again in ``delay`` s: calls too young to judge are looked at again until
        they are settled (adopted or closed), not left to whatever reconnect comes next."""
        loop = asyncio.get_running_loop()
        if self._recheck is not None:
            if self._recheck.when() <= loop.time() + delay:
                return
            self._recheck.cancel()

        def fire() -> None:
            self._recheck = None
            task = asyncio.create_task(self.reconcile(), name=f"reconcile-again:{self.provider}")
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

        self._recheck = loop.call_later(delay, fire)

    async def _reconcile(self) -> Reconciled | None:
        await self._lanes.drain()
        try:
            channels = await self.client.core_show_channels()
        except AMIError as exc:
            log.warning("reconcile skipped: no channel list", ami=self.provider, error=str(exc))
            return None
        live: list[LiveLeg] = []
        channel_ids: set[str] = set()
        for item in channels:
            channel_ids.update(str(item[h]) for h in ("Uniqueid", "Linkedid") if item.get(h))
            key = parse(item.get("Uniqueid"))
            if key is None:
                continue
            state = causes.as_int(item.get("ChannelState")) or 0
            leg = LiveLeg(key, str(item.get("Channel", "")), state, item.get("BridgeId") or None)
            live.append(leg)
            memo = self._legs.setdefault(key.channel_id, _Leg(key))
            memo.channel, memo.created = leg.channel, True
            memo.answered = memo.answered or state == UP
            memo.rang = memo.rang or state in (RINGING, UP)
        alive = {leg.key.channel_id for leg in live}
        for channel_id in [c for c, m in self._legs.items() if m.created and c not in alive]:
            _stop_setup_timer(self._legs.pop(channel_id))  # ended unheard: the sink closes it
        result = await self.sink.reconcile(self.provider, live, sorted(channel_ids))
        self.reconciles += 1
        for orphan in result.orphans:
            with contextlib.suppress(AMIError):
                # By its Uniqueid: a name is reused once Asterisk restarts (item 0).
                await self.client.hangup(orphan.key.channel_id)
        log.info(
            "calls reconciled with Asterisk",
            ami=self.provider,
            live=len(live),
            orphans=len(result.orphans),
        )
        return result

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, event: Message) -> None:
        if self._held is not None:
            self._held.append(event)
            return
        handler = self._handlers.get(str(event.get("Event", "")).lower())
        if handler is not None and self.active:
            handler(event)

    def _leg(self, event: Message, *fields: str) -> _Leg | None:
        """The leg an event is directly about (its Uniqueid/DestUniqueid is one of our keys)."""
        for name in fields:
            key = parse(event.get(name))
            if key is not None:
                if key.channel_id in self._ended:
                    return None  # late event of a leg that already ended
                return self._legs.setdefault(key.channel_id, _Leg(key))
        return None

    def _linked(self, event: Message, *fields: str) -> _Leg | None:
        """The leg of ours a channel Asterisk created from it belongs to (via Linkedid)."""
        for name in fields:
            key = parse(event.get(name))
            if key is not None:
                return self._legs.get(key.channel_id)
        return None

    def _emit(self, leg: _Leg, event: Message, **fields: Any) -> None:
        name = str(event.get("Event", ""))
        raw = {
            k: event.get(k)
            for k in ("Channel", "Uniqueid", "Linkedid", "Cause", "TechCause", "Reason")
            if event.get(k) is not None
        }
        report = CallReport(
            provider=self.provider,
            attempt_key=leg.key.attempt_key,
            leg=leg.key.leg,
            provider_call_id=leg.key.channel_id,
            channel=leg.channel,
            source=f"ami:{name}",
            raw={"event": name, **raw},
            **fields,
        )
        self._lanes.submit(leg.key.attempt_key, report)

    def _status(self, leg: _Leg, event: Message, status: str) -> None:
        if status in ("ringing", "answered"):
            _stop_setup_timer(leg)
        if status in leg.reported:
            return
        if status == "ringing" and "answered" in leg.reported:
            return
        leg.reported.add(status)
        self._emit(leg, event, status=status)

    def _newchannel(self, event: Message) -> None:
        leg = self._leg(event, "Uniqueid")
        if leg is None:
            return
        first = not leg.created
        leg.created = True
        leg.channel = str(event.get("Channel"))
        self._status(leg, event, "dialing")  # usually batched with ringing/answered (_Lanes)
        if first and self.setup_timeout > 0 and leg.key.leg == "customer":
            leg.setup_timer = asyncio.get_running_loop().call_later(
                self.setup_timeout, self._setup_expired, leg.key.channel_id
            )

    def _setup_expired(self, channel_id: str) -> None:
        """No ringing or progress ``setup_timeout`` after the channel was created: nothing
        answered the INVITE (a far end that is down or silent until a 408, 03f — Asterisk
        itself would wait out the whole Originate Timeout). The leg ends now as unreachable,
        which fails over like any failure before an answer, and its channel is hung up (its
        Hangup, a late event of an ended leg, is ignored)."""
        leg = self._legs.get(channel_id)
        if leg is None or leg.rang or leg.answered or not self.active:
            return
        leg.setup_timer = None
        event = {"Event": "SetupTimeout", "Uniqueid": channel_id}
        self._end(leg, event, causes.Ending("failed", "no_response", True))  # type: ignore[arg-type]
        task = asyncio.create_task(self._hang_up(channel_id), name=f"setup-timeout:{channel_id}")
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _hang_up(self, channel_id: str) -> None:
        with contextlib.suppress(AMIError):  # gone, or no session: reconcile finds orphans
            await self.client.hangup(channel_id)  # by Uniqueid

    def _newstate(self, event: Message) -> None:
        state = causes.as_int(event.get("ChannelState"))
        leg = self._leg(event, "Uniqueid")
        if leg is not None:
            leg.channel = leg.channel or str(event.get("Channel"))
            if state == RINGING:
                leg.rang = True
                self._status(leg, event, "ringing")
            elif state == UP:
                leg.rang = leg.answered = True
                self._status(leg, event, "answered")
            return
        linked = self._linked(event, "Linkedid")
        if linked is not None and state in (RINGING, UP) and not linked.answered:
            linked.rang = True  # the far end rings on the Dial leg of a Local originate

    def _dialstate(self, event: Message) -> None:
        leg = self._leg(event, "DestUniqueid")
        # RINGING: a 180 (captured). PROGRESS: a 183 with early media, the ringback of a far
        # end that sends no 180 (not captured; Asterisk's dial.c publishes it the same way):
        # either way the far end answered the INVITE and is alerting someone.
        if leg is not None and str(event.get("DialStatus", "")).upper() in ("RINGING", "PROGRESS"):
            leg.rang = True
            self._status(leg, event, "ringing")

    def _dialend(self, event: Message) -> None:
        leg = self._leg(event, "DestUniqueid")
        if leg is not None and str(event.get("DialStatus", "")).upper() == "ANSWER":
            leg.rang = leg.answered = True
            self._status(leg, event, "answered")

    def _originate_response(self, event: Message) -> None:
        leg = self._leg(event, "Uniqueid")
        if leg is None:
            return
        if str(event.get("Response", "")).lower() == "success":
            leg.rang = leg.answered = True
            self._status(leg, event, "answered")  # Reason 4
        elif not leg.created:
            # No channel was ever created (no Newchannel): no Hangup will follow, and nothing
            # reached the far end, so another trunk may try.
            self._end(leg, event, causes.Ending("failed", "originate_failed", True))
        # else: the Hangup (before or after this) carries the outcome; Reason 0 says nothing.

    def _hangup_request(self, event: Message) -> None:
        leg = self._leg(event, "Uniqueid") or self._linked(event, "Linkedid")
        if leg is None or leg.answered:
            return
        leg.cause = causes.as_int(event.get("Cause")) or leg.cause
        # A HangupRequest carries TechCause when a SIP response ended the leg (03a-d: 486,
        # 404, 503, 603); when Asterisk itself gave up (03e ring timeout, 03f nothing
        # listening) only the Hangup has one, 480, its mapping of cause 19: no 480 arrived.
        if (code := causes.as_int(event.get("TechCause"))) is not None:
            leg.sip_code, leg.sip_code_source = code, "sip"

    def _hangup(self, event: Message) -> None:
        leg = self._leg(event, "Uniqueid")
        if leg is None:
            linked = self._linked(event, "Linkedid")
            if linked is not None and not linked.answered:
                _tech_cause(linked, event)
                linked.cause = linked.cause or causes.as_int(event.get("Cause"))
            return
        cause = causes.as_int(event.get("Cause"))
        if cause or leg.cause is None:
            leg.cause = cause
        _tech_cause(leg, event)
        ending = causes.classify(
            answered=leg.answered, rang=leg.rang, cause=leg.cause, sip_code=leg.sip_code
        )
        self._end(leg, event, ending)

    def _end(self, leg: _Leg, event: Message, ending: causes.Ending) -> None:
        _stop_setup_timer(leg)
        if leg.amd_status is not None and not leg.amd_reported:
            self._report_amd(leg, event)
        self._emit(
            leg,
            event,
            status=ending.status,
            hangup_cause=leg.cause,
            hangup_cause_text=causes.cause_text(leg.cause),
            sip_code=leg.sip_code,
            sip_code_source=leg.sip_code_source if leg.sip_code is not None else None,
            error_code=ending.error_code,
            failover=ending.failover,
        )
        self._legs.pop(leg.key.channel_id, None)
        self._ended[leg.key.channel_id] = None
        while len(self._ended) > 10000:
            self._ended.popitem(last=False)

    def _bridge_enter(self, event: Message) -> None:
        leg = self._leg(event, "Uniqueid")
        if leg is not None:
            self._emit(leg, event, fact="bridged", bridge_id=event.get("BridgeUniqueid"))

    def _bridge_leave(self, event: Message) -> None:
        leg = self._leg(event, "Uniqueid")
        if leg is not None:
            self._emit(leg, event, fact="unbridged", bridge_id=event.get("BridgeUniqueid"))

    def _varset(self, event: Message) -> None:
        variable = str(event.get("Variable", ""))
        if variable not in ("AMDSTATUS", "AMDCAUSE"):
            return
        leg = self._leg(event, "Uniqueid")
        if leg is None:
            return
        if variable == "AMDSTATUS":
            leg.amd_status = str(event.get("Value", "")).upper()
        else:
            leg.amd_cause = str(event.get("Value", ""))
        if leg.amd_status is not None and leg.amd_cause is not None and not leg.amd_reported:
            self._report_amd(leg, event)

    def _report_amd(self, leg: _Leg, event: Message) -> None:
        leg.amd_reported = True
        result = causes.AMD_STATUS.get(leg.amd_status or "")
        detail = f"{leg.amd_status} {leg.amd_cause or ''}".strip()
        self._emit(leg, event, fact="amd", amd=result or "notsure", amd_detail=detail)


def _tech_cause(leg: _Leg, event: Message) -> None:
    """The Hangup's TechCause: the SIP response a HangupRequest already named wins; one seen
    only here is Asterisk's mapping of the Q.850 cause it ended the leg with."""
    code = causes.as_int(event.get("TechCause"))
    if code is not None and leg.sip_code_source != "sip":
        leg.sip_code, leg.sip_code_source = code, "mapped"


def _stop_setup_timer(leg: _Leg) -> None:
    if leg.setup_timer is not None:
        leg.setup_timer.cancel()
        leg.setup_timer = None
