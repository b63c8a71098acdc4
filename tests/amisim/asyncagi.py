"""Inbound calls into ``AGI(agi:async)`` on the test AMI server, as 05a, 05b, 05e and 05g show.

    agi = AsyncAgiSim(ami)                       # adds the AGI action to the server
    ch = agi.inbound_call("7001", "15550001111", keys=["12"])

The call arrives (Newchannel … Newexten AGI, then AsyncAGIStart with the URL-encoded Env, 05g);
each ``Action: AGI`` is answered ``Added AGI command to queue`` (or ``Channel X does not
exist.`` once the channel left AGI, 05a), then AGIExecStart, AGIExecEnd and AsyncAGIExec with
the client's CommandId and the URL-encoded Result. The caller's script (``keys``) answers the
GET DATA commands in order: digits (``"12"`` → ``200 result=12``, 05g), ``""`` for silence
(``200 result= (timeout)``, 05a), an ``asyncio.Event`` to wait for first, or nothing left: the
caller hangs up during the GET DATA (HangupRequest, ``200 result=-1``, AsyncAGIEnd, Hangup,
05b). ``HANGUP`` from the client ends the call as in 05g. STREAM FILE of a sound in
``missing_sounds`` answers ``200 result=-1 endpos=0`` (05e). RECORD FILE is not captured: it
answers in STREAM FILE's shape (``200 result=0 endpos=<samples>``) from the next script entry.
A channel's commands run one at a time, in the order queued (``Added AGI command to queue``).
``EXEC Dial`` sets the channel's DIALSTATUS (``dial_status``, ANSWER unless a test says
otherwise), which ``GET VARIABLE`` answers as res_agi.c does (``200 result=1 (ANSWER)``).

Outbound calls (``outbound``: context → whether ``AMD()`` runs first): an originated channel
answered into one of these contexts enters ``AGI(agi:async)`` too — at once, or after the
``AMD()`` verdict scripted for its number in ``amd`` (09/09b: VarSet AMDSTATUS, AMDCAUSE; an
unscripted number's AMD() never concludes, a test may emit the VarSets itself). A channel in
AGI is found by name or Uniqueid (``ast_channel_get_by_name``); one not (yet) in AGI gets
``Failed to add AGI command to channel X queue`` (res_agi.c); a Bridge takes the channel out
of AGI (AsyncAGIEnd), so commands queued after it are refused.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from . import scenarios as sc
from .framing import Action, Headers
from .server import AMISimServer, Session


def _enc(text: str) -> str:
    """Asterisk's URL encoding of Env and Result: parentheses stay as they are (05a)."""
    return quote(text, safe="()")


@dataclass
class AgiCall:
    channel: sc.Channel
    keys: list[str | asyncio.Event]
    commands: list[str] = field(default_factory=list)  # every Command received, in order
    started: list[tuple[float, str]] = field(default_factory=list)  # (time.time(), Command) run
    in_agi: bool = True
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)  # one command at a time
    dial_status: str = "ANSWER"  # what an EXEC Dial leaves in DIALSTATUS
    variables: dict[str, str] = field(default_factory=dict)  # channel variables (GET VARIABLE)


@dataclass(frozen=True)
class Amd:
    """What AMD() concludes, ``after`` seconds into the answered call (09: NOTSURE, 09b:
    MACHINE LONGGREETING-1500-1500)."""

    status: str
    cause: str
    after: float = 0.0


def agi_env(ch: sc.Channel, *, dnid: str, context: str, priority: int) -> str:
    """AsyncAGIStart's Env (05g), URL-encoded."""
    caller = ch.caller_num
    env = "".join(
        f"{k}: {v}\n"
        for k, v in [
            ("agi_request", "async"),
            ("agi_channel", ch.name),
            ("agi_language", "en"),
            ("agi_type", "PJSIP"),
            ("agi_uniqueid", ch.uniqueid),
            ("agi_version", "22.10.1"),
            ("agi_callerid", caller),
            ("agi_calleridname", ch.caller_name),
            ("agi_callingpres", "0"),
            ("agi_callingani2", "0"),
            ("agi_callington", "0"),
            ("agi_callingtns", "0"),
            ("agi_dnid", dnid),
            ("agi_rdnis", "unknown"),
            ("agi_context", context),
            ("agi_extension", "s"),
            ("agi_priority", str(priority)),
            ("agi_enhanced", "0.0"),
            ("agi_accountcode", ""),
            ("agi_threadid", "139727031183040"),
        ]
    )
    return _enc(env + "\n")


def agi_event(name: str, ch: sc.Channel, *fields: tuple[str, str]) -> Headers:
    return sc.event(name, "agi,all", *sc.snapshot(ch), *fields)


class AsyncAgiSim:
    def __init__(
        self,
        ami: AMISimServer,
        *,
        missing_sounds: frozenset[str] = frozenset(),
        outbound: dict[str, bool] | None = None,
    ) -> None:
        self.ami = ami
        self.missing_sounds = missing_sounds
        self.outbound = dict(outbound or {})
        self.amd: dict[str, Amd] = {}  # by number dialled: AMD()'s verdict
        self.calls: dict[str, AgiCall] = {}
        self._seq = 0x1E
        ami._handlers["agi"] = self._agi
        self._bridge = ami._handlers["bridge"]
        ami._handlers["bridge"] = self._bridge_out_of_agi
        ami.answer_hooks.append(self._answered)

    def call_of(self, name_or_uniqueid: str) -> AgiCall | None:
        """The AGI call of a channel, by name or Uniqueid (as ast_channel_get_by_name)."""
        wanted = name_or_uniqueid.lower()
        return self.calls.get(name_or_uniqueid) or next(
            (c for c in self.calls.values() if c.channel.uniqueid.lower() == wanted), None
        )

    def _answered(self, ch: sc.Channel) -> None:
        if ch.target_context in self.outbound:
            self.ami._spawn(self._outbound(ch, amd_first=self.outbound[ch.target_context]))

    async def _outbound(self, ch: sc.Channel, *, amd_first: bool) -> None:
        """The answered channel's dialplan: [AMD(),] AGI(agi:async) (09b, 05a)."""
        context = ch.context
        if amd_first:
            verdict = self.amd.get(ch.dial_string.partition("@")[0])
            if verdict is None:
                return  # AMD() is still listening
            self.ami._emit([sc.newexten(ch, "AMD", "")])
            await asyncio.sleep(verdict.after)
            if not ch.alive:
                return
            self.ami._emit(
                [
                    sc.varset(ch, "AMDSTATUS", verdict.status),
                    sc.varset(ch, "AMDCAUSE", verdict.cause),
                ]
            )
            ch.priority += 1
        if not ch.alive or ch.bridge is not None:
            return
        self.calls[ch.name] = AgiCall(ch, [])
        env = agi_env(ch, dnid="unknown", context=context, priority=ch.priority)
        self.ami._emit(
            [sc.newexten(ch, "AGI", "agi:async"), agi_event("AsyncAGIStart", ch, ("Env", env))]
        )

    def _bridge_out_of_agi(self, session: Session, action: Action) -> None:
        """A channel bridged leaves AGI (AsyncAGIEnd); then the Bridge as the server does it."""
        for header in ("Channel1", "Channel2"):
            call = self.calls.get(action.get(header) or "")
            if call is not None and call.in_agi:
                call.in_agi = False
                self.ami._emit([agi_event("AsyncAGIEnd", call.channel)])
        self._bridge(session, action)

    def inbound_call(
        self, exten: str, caller: str, *, keys: list[str | asyncio.Event] | None = None
    ) -> AgiCall:
        self._seq += 1
        self.ami._uniqueid_seq += 1
        ch = sc.Channel(
            name=f"PJSIP/carrier-{self._seq:08x}",
            uniqueid=f"{int(self.ami._started)}.{self.ami._uniqueid_seq}",
            requested="",
            dial_string="",
            exten=exten,
            state=4,
            caller_num=caller,
            caller_name="Caller",
        )
        self.ami.channels[ch.name] = ch
        call = AgiCall(ch, list(keys or []))
        self.calls[ch.name] = call
        events: list[Headers] = [
            sc.channel_event("Newchannel", ch),
            sc.varset(ch, "SIPDOMAIN", "127.0.0.1"),
            sc.newexten(ch, "Goto", "inbound-asyncagi,s,1"),
        ]
        ch.context, ch.exten = "inbound-asyncagi", "s"
        events.append(sc.newexten(ch, "Answer", ""))
        ch.state = 6
        events += [sc.channel_event("Newstate", ch), sc.device_state(ch, "INUSE")]
        ch.priority = 2
        events.append(sc.newexten(ch, "AGI", "agi:async"))
        env = agi_env(ch, dnid=exten, context="inbound-asyncagi", priority=2)
        events.append(agi_event("AsyncAGIStart", ch, ("Env", env)))
        self.ami._emit(events)
        return call

    def _agi(self, session: Session, action: Action) -> None:
        name = action.get("Channel") or ""
        call = self.call_of(name)
        if call is None or not call.channel.alive:
            ch = self.ami.find_channel(name)
            if ch is not None and ch.alive:  # res_agi.c add_agi_cmd: no AsyncAGI datastore
                message = f"Failed to add AGI command to channel {ch.name} queue"
                session.reply("Error", action, ("Message", message))
                return
            session.reply("Error", action, ("Message", f"Channel {name} does not exist."))
            return
        if not call.in_agi:
            session.reply("Error", action, ("Message", f"Channel {name} does not exist."))
            return
        session.reply("Success", action, ("Message", "Added AGI command to queue"))
        command = action.get("Command") or ""
        call.commands.append(command)
        self.ami._spawn(self._exec(call, command, action.get("CommandID") or ""))

    async def _exec(self, call: AgiCall, command: str, command_id: str) -> None:
        """Asterisk runs a channel's queued AGI commands one after the other."""
        async with call.queue:
            if call.in_agi:
                await self._exec_one(call, command, command_id)

    async def _exec_one(self, call: AgiCall, command: str, command_id: str) -> None:
        ch = call.channel
        ours = str(random.randint(10**8, 2**31 - 1))
        call.started.append((time.time(), command))
        self.ami._emit([agi_event("AGIExecStart", ch, ("CommandId", ours), ("Command", command))])
        await asyncio.sleep(0)
        words = command.split()
        verb = " ".join(words[:2]).upper()
        code, status = "200", "Success"
        if verb == "GET DATA" or verb == "RECORD FILE":
            entry = call.keys.pop(0) if call.keys else None
            if isinstance(entry, asyncio.Event):
                await entry.wait()
                entry = call.keys.pop(0) if call.keys else None
            if entry is None:  # 05b: the caller hangs up while the command runs
                self._caller_hangs_up(call, command, ours, command_id)
                return
            if verb == "RECORD FILE":
                result = f"200 result=0 endpos={len(entry) * 8000}\n"
            else:
                result = f"200 result={entry}\n" if entry else "200 result= (timeout)\n"
        elif verb == "STREAM FILE":
            if words[2] in self.missing_sounds:  # 05e
                code, status, result = "-1", "Failure", "200 result=-1 endpos=0\n"
            else:
                result = "200 result=0 endpos=3520\n"
        elif verb.startswith("EXEC"):
            if len(words) > 1 and words[1].lower() == "dial":  # app_dial sets DIALSTATUS
                call.variables["DIALSTATUS"] = call.dial_status
            result = "200 result=0\n"
        elif verb == "GET VARIABLE":  # res_agi.c: 200 result=1 (value), or result=0 if unset
            value = call.variables.get(words[2] if len(words) > 2 else "")
            result = f"200 result=1 ({value})\n" if value is not None else "200 result=0\n"
        elif verb == "HANGUP":  # 05g
            self.ami._emit([sc.channel_event("SoftHangupRequest", ch, ("Cause", "32"))])
            result = "200 result=1\n"
        else:
            code, status = "510", "Invalid or unknown command"
            result = "510 Invalid or unknown command\n"
        end = [("CommandId", ours), ("Command", command), ("ResultCode", code), ("Result", status)]
        events = [
            agi_event("AGIExecEnd", ch, *end),
            agi_event("AsyncAGIExec", ch, ("Result", _enc(result)), ("CommandId", command_id)),
        ]
        if verb == "HANGUP":
            call.in_agi = False
            events += [
                agi_event("AsyncAGIEnd", ch),
                sc.channel_event("SoftHangupRequest", ch, ("Cause", "16")),
                sc.cdr(ch),
                sc.hangup(ch, 0),
            ]
        self.ami._emit(events)

    def _caller_hangs_up(self, call: AgiCall, command: str, ours: str, command_id: str) -> None:
        ch = call.channel
        call.in_agi = False
        end = [("CommandId", ours), ("Command", command), ("ResultCode", "200")]
        self.ami._emit(
            [
                sc.channel_event("HangupRequest", ch),
                agi_event("AGIExecEnd", ch, *end, ("Result", "Success")),
                agi_event(
                    "AsyncAGIExec",
                    ch,
                    ("Result", _enc("200 result=-1\n")),
                    ("CommandId", command_id),
                ),
                agi_event("AsyncAGIEnd", ch),
                sc.channel_event("SoftHangupRequest", ch, ("Cause", "16")),
                sc.cdr(ch),
                sc.hangup(ch, 0),
            ]
        )
