"""The flow engine: one pure step, (flow, session, input, now) → (commands, next session).

No I/O and no clock of its own: the caller passes `now` (business-hours conditions read it),
so the same inputs give the same commands on every worker and in every test. A transport
turns the commands into its provider's language (AsyncAGI, TwiML, a sandbox transcript) and the
caller's answer back into an input event; the runner (ivr/runner.py) keeps the session in Redis
between steps. Because a step only reads the session it is given, a worker that dies between
two steps is replaced by any other that loads the same session.

A step runs nodes until one has to wait (gather, record: the caller; webhook, transfer: the
outside world) or the session ends. Every node entered, input taken, branch followed and the
end are appended to the session's transcript, which is also what the events are made from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from ivr.flow import (
    DAYS,
    AgentNode,
    BridgeNode,
    ConditionNode,
    Flow,
    GatherNode,
    HangupNode,
    PlayNode,
    RecordNode,
    SayNode,
    SetNode,
    TransferNode,
    VarTest,
    WebhookNode,
    kind_of,
)

MAX_NODES_PER_STEP = 100  # validation refuses input-free loops; a webhook's `next` could still
MAX_TRANSCRIPT = 500  # entries kept per session (a long call keeps its latest)
Waiting = Literal["gather", "record", "webhook", "transfer"]

# --- commands (what a transport must do) ---------------------------------------------------


@dataclass(frozen=True)
class Say:
    text: str
    voice: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Play:
    url: str
    loop: int = 1


@dataclass(frozen=True)
class Gather:
    prompt: tuple[Say | Play, ...]
    digits: int | None
    finish_on_key: str
    timeout: float


@dataclass(frozen=True)
class Record:
    prompt: tuple[Say, ...]
    max_length: int
    beep: bool
    finish_on_key: str
    timeout: float


@dataclass(frozen=True)
class Webhook:
    url: str
    timeout: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Transfer:
    to: str
    from_: str | None
    timeout: int
    purpose: str


@dataclass(frozen=True)
class Bridge:
    kind: Literal["agent", "sip"]
    target: dict[str, Any]  # the agent spec, or {"uri": ...}


@dataclass(frozen=True)
class Hangup:
    reason: str


Command = Say | Play | Gather | Record | Webhook | Transfer | Bridge | Hangup

# --- inputs (what happened) -----------------------------------------------------------------


@dataclass(frozen=True)
class CallStarted:
    pass


@dataclass(frozen=True)
class Digits:
    digits: str


@dataclass(frozen=True)
class NoInput:
    pass


@dataclass(frozen=True)
class Recorded:
    url: str
    duration: float


@dataclass(frozen=True)
class WebhookAnswer:
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why not ok: timeout, http_500, bad_answer, refused…


@dataclass(frozen=True)
class TransferVerdict:
    outcome: Literal["transferred", "refused", "failed"]
    reason: str | None = None
    call_id: str | None = None  # the transfer's call record (the pipeline's)


@dataclass(frozen=True)
class CallerHangup:
    reason: str = "caller_hangup"


@dataclass(frozen=True)
class Resume:
    """Another worker took the call over: the node that waits asks again (its command was
    lost with the worker that sent it). Counts no miss."""

    by: str = ""


Input = (
    CallStarted
    | Digits
    | NoInput
    | Recorded
    | WebhookAnswer
    | TransferVerdict
    | CallerHangup
    | Resume
)


@dataclass(frozen=True)
class Session:
    """A caller's place in a flow. Immutable: a step returns the next one."""

    id: str
    tenant_id: str
    flow_id: str
    flow_name: str
    version: int
    caller: str
    called: str | None
    transport: str
    started_at: str  # ISO 8601, from the runner's clock
    trace_id: str = ""
    node: str | None = None
    waiting: Waiting | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    digits: str = ""  # the last entry taken
    retries: dict[str, int] = field(default_factory=dict)  # misses per gather node
    recordings: tuple[dict[str, Any], ...] = ()
    transcript: tuple[dict[str, Any], ...] = ()
    steps: int = 0
    ended: str | None = None  # the end reason, once ended

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "flow_id": self.flow_id,
            "flow_name": self.flow_name,
            "version": self.version,
            "caller": self.caller,
            "called": self.called,
            "transport": self.transport,
            "started_at": self.started_at,
            "trace_id": self.trace_id,
            "node": self.node,
            "waiting": self.waiting,
            "variables": self.variables,
            "digits": self.digits,
            "retries": self.retries,
            "recordings": list(self.recordings),
            "transcript": list(self.transcript),
            "steps": self.steps,
            "ended": self.ended,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(
            **(
                data
                | {
                    "recordings": tuple(data.get("recordings", ())),
                    "transcript": tuple(data.get("transcript", ())),
                }
            )
        )


class _Run:
    """The mutable scratch of one step; becomes the next Session at the end."""

    def __init__(self, flow: Flow, session: Session, now: datetime) -> None:
        self.flow = flow
        self.s = session
        self.now = now
        self.commands: list[Command] = []
        self.notes: list[dict[str, Any]] = []
        self.variables = dict(session.variables)
        self.retries = dict(session.retries)
        self.recordings = list(session.recordings)
        self.node: str | None = session.node
        self.waiting: Waiting | None = session.waiting
        self.digits = session.digits
        self.ended: str | None = session.ended

    def note(self, **entry: Any) -> None:
        self.notes.append(entry)

    def end(self, reason: str, *, hangup: bool = True) -> None:
        if hangup:
            self.commands.append(Hangup(reason))
        self.ended = reason
        self.waiting = None
        self.note(end=reason, node=self.node)

    def session(self) -> Session:
        transcript = (*self.s.transcript, *self.notes)[-MAX_TRANSCRIPT:]
        return replace(
            self.s,
            node=self.node,
            waiting=self.waiting,
            variables=self.variables,
            digits=self.digits,
            retries=self.retries,
            recordings=tuple(self.recordings),
            transcript=transcript,
            steps=self.s.steps + 1,
            ended=self.ended,
        )


_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def render(text: str, variables: dict[str, Any]) -> str:
    """`{{name}}` → the variable's value ('' when unset)."""

    def sub(m: re.Match[str]) -> str:
        value = variables.get(m.group(1))
        return "" if value is None else str(value)

    return _VAR.sub(sub, text)


def step(
    flow: Flow, session: Session, event: Input, now: datetime
) -> tuple[list[Command], Session, list[dict[str, Any]]]:
    """Advance `session` by one input. Returns the commands, the next session and the
    transcript entries this step added (the runner turns those into events)."""
    run = _Run(flow, session, now)
    if run.ended is not None:
        run.note(ignored=type(event).__name__, node=run.node)
        return [], run.session(), run.notes
    if isinstance(event, CallerHangup):
        run.end(event.reason, hangup=False)
    elif isinstance(event, CallStarted):
        if session.node is None:
            _enter(run, flow.start)
        else:
            run.note(ignored="CallStarted", node=run.node)
    elif isinstance(event, Resume):
        if session.node is None:
            _enter(run, flow.start)
        elif run.waiting is not None:
            run.note(resumed=event.by, node=run.node)
            _enter(run, run.node)
        else:
            run.note(ignored="Resume", node=run.node)
    else:
        _answer(run, event)
    return run.commands, run.session(), run.notes


def _answer(run: _Run, event: Input) -> None:
    """Feed an input to the node that is waiting for it."""
    name = run.node
    if name is None or run.waiting is None:
        run.note(ignored=type(event).__name__, node=name)
        return
    node = run.flow.nodes[name]
    if run.waiting == "gather" and isinstance(event, Digits | NoInput):
        assert isinstance(node, GatherNode)
        _gathered(run, name, node, event)
    elif run.waiting == "record" and isinstance(event, Recorded | NoInput):
        assert isinstance(node, RecordNode)
        _recorded(run, name, node, event)
    elif run.waiting == "webhook" and isinstance(event, WebhookAnswer):
        assert isinstance(node, WebhookNode)
        _webhook_answered(run, name, node, event)
    elif run.waiting == "transfer" and isinstance(event, TransferVerdict):
        assert isinstance(node, TransferNode)
        _transfer_decided(run, name, node, event)
    else:
        run.note(ignored=type(event).__name__, node=name, waiting=run.waiting)


def _gathered(run: _Run, name: str, node: GatherNode, event: Digits | NoInput) -> None:
    spec = node.gather
    entry = event.digits if isinstance(event, Digits) else ""
    if spec.finish_on_key and entry.endswith(spec.finish_on_key):
        entry = entry[: -len(spec.finish_on_key)]
    if spec.digits is not None:
        entry = entry[: spec.digits]
    run.waiting = None
    if entry and (not node.on or entry in node.on):
        run.digits = entry
        run.retries.pop(name, None)
        if spec.variable:
            run.variables[spec.variable] = entry
        target = node.on.get(entry, node.next) if node.on else node.next
        run.note(input=entry, node=name, result="match", branch=target)
        _go(run, target)
        return
    misses = run.retries.get(name, 0) + 1
    run.retries[name] = misses
    result = "invalid" if entry else "no_input"
    if misses > spec.retries:
        run.retries.pop(name, None)
        run.note(input=entry, node=name, result=result, branch=node.no_input, exhausted=True)
        if node.no_input is None:
            run.end("no_input")
        else:
            _go(run, node.no_input)
        return
    target = node.invalid if entry and node.invalid is not None else name
    run.note(input=entry, node=name, result=result, branch=target, retry=misses)
    _go(run, target)


def _recorded(run: _Run, name: str, node: RecordNode, event: Recorded | NoInput) -> None:
    run.waiting = None
    if isinstance(event, Recorded):
        rec = {"node": name, "url": event.url, "duration": event.duration}
        run.recordings.append(rec)
        run.variables["recording_url"] = event.url
        run.note(input="recording", node=name, result="recorded", url=event.url)
        _after(run, node)
        return
    run.note(input="", node=name, result="no_input", branch=node.no_input)
    if node.no_input is not None:
        _go(run, node.no_input)
    else:
        _after(run, node)


def _webhook_answered(run: _Run, name: str, node: WebhookNode, event: WebhookAnswer) -> None:
    run.waiting = None
    target: str | None
    if event.ok:
        sets = event.data.get("set") or {}
        asked = event.data.get("next")
        allowed = {node.next, node.on_error, *node.branches} - {None}
        if not isinstance(sets, dict) or (asked is not None and asked not in allowed):
            event = WebhookAnswer(False, error="bad_answer")
        else:
            run.variables.update({str(k): v for k, v in sets.items()})
            target = asked if asked is not None else node.next
            run.note(webhook="answered", node=name, set=sorted(sets), branch=target)
            if target is None and node.then is None:
                run.end("flow_end")
            elif target is None:
                run.end("hangup")
            else:
                _go(run, target)
            return
    run.note(webhook="error", node=name, error=event.error, branch=node.on_error)
    if node.on_error is None:
        run.end("webhook_error")
    else:
        _go(run, node.on_error)


def _transfer_decided(run: _Run, name: str, node: TransferNode, event: TransferVerdict) -> None:
    run.waiting = None
    fallback = node.fallback or run.flow.fallback
    call = {"call_id": event.call_id} if event.call_id else {}
    if event.outcome == "transferred":
        run.note(
            transfer="transferred", node=name, to=node.transfer.to, reason=event.reason, **call
        )
        run.end("transferred", hangup=False)
        return
    run.note(transfer=event.outcome, node=name, reason=event.reason, branch=fallback, **call)
    if fallback is None:
        run.end(f"transfer_{event.outcome}")
    else:
        _go(run, fallback)


def _after(run: _Run, node: Any) -> None:
    """Leave a node by its `next` or `then` (no `next` ends the flow, as TwiML's end does)."""
    target = getattr(node, "next", None)
    if target is not None:
        _go(run, target)
    elif getattr(node, "then", None) == "hangup":
        run.end("hangup")
    else:
        run.end("flow_end")


def _go(run: _Run, target: str | None) -> None:
    if target is None:
        run.end("flow_end")
    else:
        _enter(run, target)


def _enter(run: _Run, name: str) -> None:
    """Run nodes from `name` until one waits or the session ends."""
    entered = 0
    pending: str | None = name
    while pending is not None:
        entered += 1
        if entered > MAX_NODES_PER_STEP:
            run.end("loop_guard")
            return
        name, pending = pending, None
        node = run.flow.nodes[name]
        run.node = name
        kind = kind_of(node)
        if isinstance(node, SayNode):
            sp = node.speech()
            say = Say(render(sp.text, run.variables), sp.voice, sp.language)
            run.commands.append(say)
            run.note(node=name, kind=kind, say=say.text)
        elif isinstance(node, PlayNode):
            run.commands.append(Play(node.play, node.loop))
            run.note(node=name, kind=kind, play=node.play)
        elif isinstance(node, SetNode):
            values = {
                k: render(v, run.variables) if isinstance(v, str) else v
                for k, v in node.set.items()
            }
            run.variables.update(values)
            run.note(node=name, kind=kind, set=values)
        elif isinstance(node, ConditionNode):
            held, why = _holds(node, run.variables, run.now)
            pending = node.true if held else node.false
            run.note(node=name, kind=kind, result=held, why=why, branch=pending)
            continue
        elif isinstance(node, GatherNode):
            spec = node.gather
            prompt: list[Say | Play] = []
            if spec.say:
                prompt.append(Say(render(spec.say, run.variables), spec.voice, spec.language))
            if spec.play:
                prompt.append(Play(spec.play))
            run.commands.append(
                Gather(tuple(prompt), spec.digits, spec.finish_on_key, spec.timeout)
            )
            run.waiting = "gather"
            run.note(
                node=name,
                kind=kind,
                say=" ".join(p.text for p in prompt if isinstance(p, Say)) or None,
                attempt=run.retries.get(name, 0) + 1,
            )
            return
        elif isinstance(node, RecordNode):
            spec_r = node.record
            prompt_r = (Say(render(spec_r.say, run.variables)),) if spec_r.say else ()
            run.commands.append(
                Record(
                    prompt_r, spec_r.max_length, spec_r.beep, spec_r.finish_on_key, spec_r.timeout
                )
            )
            run.waiting = "record"
            run.note(node=name, kind=kind, say=spec_r.say and prompt_r[0].text)
            return
        elif isinstance(node, WebhookNode):
            payload = {
                "session_id": run.s.id,
                "flow": run.s.flow_name,
                "version": run.s.version,
                "node": name,
                "from": run.s.caller,
                "to": run.s.called,
                "digits": run.digits,
                "variables": run.variables,
            }
            run.commands.append(Webhook(node.webhook.url, node.webhook.timeout, payload))
            run.waiting = "webhook"
            run.note(node=name, kind=kind, url=node.webhook.url)
            return
        elif isinstance(node, TransferNode):
            t = node.transfer
            run.commands.append(Transfer(t.to, t.from_ or run.s.called, t.timeout, t.purpose))
            run.waiting = "transfer"
            run.note(node=name, kind=kind, to=t.to)
            return
        elif isinstance(node, AgentNode):
            spec_a = node.agent.model_dump(exclude_none=True)
            run.commands.append(Bridge("agent", spec_a))
            run.note(node=name, kind=kind)
            run.end("agent", hangup=False)
            return
        elif isinstance(node, BridgeNode):
            run.commands.append(Bridge("sip", {"uri": node.bridge_to}))
            run.note(node=name, kind=kind, uri=node.bridge_to)
            run.end("bridged", hangup=False)
            return
        elif isinstance(node, HangupNode):
            run.note(node=name, kind=kind)
            run.end("hangup")
            return
        # say / play / set: on to the next node
        target = getattr(node, "next", None)
        if target is not None:
            pending = target
        else:
            _after(run, node)
            return


def _holds(node: ConditionNode, variables: dict[str, Any], now: datetime) -> tuple[bool, str]:
    spec = node.condition
    if spec.business_hours is not None:
        bh = spec.business_hours
        local = now.astimezone(ZoneInfo(bh.time_zone))
        day = DAYS[local.weekday()]
        if local.date().isoformat() in bh.holidays:
            return False, f"holiday {local.date().isoformat()} in {bh.time_zone}"
        open_now = day in bh.days and bh.open <= local.time().replace(tzinfo=None) < bh.close
        return open_now, f"{day} {local.strftime('%H:%M')} {bh.time_zone}"
    assert spec.test is not None
    return _test(spec.test, variables), f"{spec.test.var}={variables.get(spec.test.var)!r}"


def _test(t: VarTest, variables: dict[str, Any]) -> bool:
    value = variables.get(t.var)
    fields = t.model_fields_set
    if "exists" in fields:
        return (t.var in variables and value is not None) == bool(t.exists)
    if "eq" in fields:
        return _same(value, t.eq)
    if "ne" in fields:
        return not _same(value, t.eq if "eq" in fields else t.ne)
    if "in_" in fields:
        return any(_same(value, option) for option in t.in_ or [])
    number = _number(value)
    if number is None:
        return False
    if "gt" in fields:
        return t.gt is not None and number > t.gt
    return t.lt is not None and number < t.lt


def _same(a: Any, b: Any) -> bool:
    """Digits arrive as strings: "1" equals 1 (a webhook may answer either)."""
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    return na is not None and nb is not None and na == nb


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None
