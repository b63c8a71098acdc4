"""IVR flows: a versioned JSON document of named nodes, and the checks an upload must pass.

A node is a dict with exactly one *kind* key (``say``, ``play``, ``gather``, ``record``,
``webhook``, ``set``, ``condition``, ``transfer``, ``agent``, ``bridge_to``, ``hangup``) and
the branches that kind can take. The semantics follow TwiML and jambonz verbs where they have
one (``<Say>``, ``<Play>``, ``<Gather numDigits finishOnKey timeout>``, ``<Record maxLength
playBeep>``, ``<Dial>``, ``<Hangup>``); what they leave to the application (menus, retries,
branches, webhooks that answer with variables) is spelled out here, so that every transport runs
the same flow the same way.

Shape errors are pydantic's (their location names the node: ``nodes.menu.gather.timeout``).
The graph checks (`check_graph`) find what a shape cannot: a branch naming no node, a node that
cannot be reached from ``start``, a loop on which no node takes input (it would spin without
the caller ever being asked anything). Each problem has a stable code and names its node.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import time as dtime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from gateway.core.phone import E164

NODE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
NodeName = Annotated[str, Field(pattern=NODE_NAME)]
KINDS = (
    "say",
    "play",
    "gather",
    "record",
    "webhook",
    "set",
    "condition",
    "transfer",
    "agent",
    "bridge_to",
    "hangup",
)
# Nodes that wait for the caller: a loop through one of them cannot spin on its own.
INPUT_KINDS = frozenset({"gather", "record"})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SIP_URI = r"^sips?:[^\s<>\"]{1,250}$"
DIGIT_KEYS = re.compile(r"^[0-9*#]{1,32}$")
Scalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Speech(_Strict):
    """What a `say` speaks: TTS text, optionally with a voice and a language (BCP 47)."""

    text: str = Field(min_length=1, max_length=4000)
    voice: str | None = Field(default=None, max_length=64)
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class _Next(_Strict):
    next: NodeName | None = Field(default=None, description="the node that follows")
    then: Literal["hangup"] | None = Field(default=None, description="hang up after this node")

    @model_validator(mode="after")
    def _one_way_on(self) -> _Next:
        if self.next is not None and self.then is not None:
            raise ValueError("give next or then, not both")
        return self


class SayNode(_Next):
    say: str | Speech = Field(
        description="TTS text (may use {{variable}}), or {text, voice, language}"
    )
    voice: str | None = Field(default=None, max_length=64)
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")

    @field_validator("say")
    @classmethod
    def _text(cls, v: str | Speech) -> str | Speech:
        if isinstance(v, str) and not 1 <= len(v) <= 4000:
            raise ValueError("say: 1 to 4000 characters")
        return v

    def speech(self) -> Speech:
        if isinstance(self.say, Speech):
            return self.say
        return Speech(text=self.say, voice=self.voice, language=self.language)


class PlayNode(_Next):
    play: str = Field(pattern=r"^https?://\S{1,2000}$", description="an audio URL")
    loop: int = Field(default=1, ge=1, le=10)


class GatherSpec(_Strict):
    """One prompt and the DTMF it collects (TwiML `<Gather input="dtmf">`)."""

    say: str | None = Field(default=None, min_length=1, max_length=4000)
    play: str | None = Field(default=None, pattern=r"^https?://\S{1,2000}$")
    voice: str | None = Field(default=None, max_length=64)
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    digits: int | None = Field(
        default=None, ge=1, le=32, description="stop after this many digits (numDigits)"
    )
    finish_on_key: Literal["#", "*", ""] = Field(
        default="#", description="the key that ends the entry early ('' for none)"
    )
    timeout: float = Field(default=5, ge=1, le=60, description="seconds of silence = no input")
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="misses (no input or an invalid entry) that re-prompt before the next miss "
        "takes no_input",
    )
    variable: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="store the entry"
    )


class GatherNode(_Strict):
    gather: GatherSpec
    on: dict[str, NodeName] = Field(
        default_factory=dict, description="entry → node (a menu); unset: any entry → next"
    )
    no_input: NodeName | None = Field(
        default=None, description="after the retries are spent (none: hang up)"
    )
    invalid: NodeName | None = Field(
        default=None,
        description="an entry matching no `on` key, while retries remain (none: re-prompt)",
    )
    next: NodeName | None = None

    @model_validator(mode="after")
    def _branches(self) -> GatherNode:
        for key in self.on:
            if not DIGIT_KEYS.match(key):
                raise ValueError(f"on: {key!r} is not a DTMF entry (0-9, *, #)")
        if not self.on and self.next is None:
            raise ValueError("a gather needs `on` branches or a `next`")
        return self


class RecordSpec(_Strict):
    """Voicemail (TwiML `<Record>`): stored with the session."""

    say: str | None = Field(default=None, min_length=1, max_length=4000)
    max_length: int = Field(default=120, ge=1, le=3600, description="seconds")
    beep: bool = True
    finish_on_key: Literal["#", "*", ""] = "#"
    timeout: float = Field(default=5, ge=1, le=60, description="seconds of silence that end it")


class RecordNode(_Next):
    record: RecordSpec
    no_input: NodeName | None = Field(default=None, description="nothing recorded (default: next)")


class WebhookSpec(_Strict):
    url: str = Field(pattern=r"^https?://\S{1,2000}$")
    timeout: float = Field(default=3, gt=0, le=10, description="seconds; past it → on_error")


class WebhookNode(_Strict):
    """A signed POST of the session (variables, digits) to the tenant. The answer's JSON may
    `set` variables and name the `next` node (one of next, on_error, branches: the graph is
    known at upload); a timeout, a non-2xx or a bad answer → on_error."""

    webhook: WebhookSpec
    next: NodeName | None = None
    then: Literal["hangup"] | None = None
    on_error: NodeName | None = Field(default=None, description="none: hang up")
    branches: list[NodeName] = Field(
        default_factory=list,
        max_length=50,
        description="the nodes the answer may name as `next` (besides next and on_error); an "
        "answer naming another node is an error (→ on_error)",
    )


class SetNode(_Next):
    set: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], Scalar] = Field(
        min_length=1, max_length=50, description="variables; strings may use {{variable}}"
    )


class BusinessHours(_Strict):
    time_zone: str = Field(description="IANA zone, e.g. America/New_York")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"], min_length=1
    )
    open: dtime = Field(description="local opening time, HH:MM")
    close: dtime = Field(description="local closing time, HH:MM (after open)")
    holidays: list[str] = Field(
        default_factory=list, max_length=100, description="YYYY-MM-DD local dates, closed"
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone") from None
        return v

    @field_validator("open", "close")
    @classmethod
    def _local(cls, v: dtime) -> dtime:
        if v.tzinfo is not None:
            raise ValueError("a local time (HH:MM) without an offset: time_zone gives the zone")
        return v

    @model_validator(mode="after")
    def _order(self) -> BusinessHours:
        if self.close <= self.open:
            raise ValueError("close must be after open")
        for day in self.holidays:
            if not re.match(r"^\d{4}-\d{2}-\d{2}$", day):
                raise ValueError(f"holiday {day!r} is not YYYY-MM-DD")
        return self


class VarTest(_Strict):
    """A test of one variable: exactly one of eq, ne, in, gt, lt, exists."""

    var: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    eq: Scalar = None
    ne: Scalar = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    gt: float | None = None
    lt: float | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> VarTest:
        given = [k for k in ("eq", "ne", "in_", "gt", "lt", "exists") if k in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of eq, ne, in, gt, lt, exists")
        return self


class ConditionSpec(_Strict):
    business_hours: BusinessHours | None = None
    test: VarTest | None = None

    @model_validator(mode="after")
    def _one(self) -> ConditionSpec:
        if (self.business_hours is None) == (self.test is None):
            raise ValueError("give exactly one of business_hours or test")
        return self


class ConditionNode(_Strict):
    condition: ConditionSpec
    true: NodeName = Field(description="the node when the condition holds")
    false: NodeName = Field(description="the node when it does not")


class TransferSpec(_Strict):
    to: E164
    from_: E164 | None = Field(
        default=None, alias="from", description="caller id; default: the number called"
    )
    timeout: int = Field(default=30, ge=5, le=120, description="ring seconds")
    purpose: Literal["transactional", "marketing"] = "transactional"


class TransferNode(_Strict):
    """Dial a number: an outbound action, so it passes the guardrail chain first. Refused (or
    not answered) → `fallback` (or the flow's fallback; neither: hang up). Never a bypass."""

    transfer: TransferSpec
    fallback: NodeName | None = None


class AgentSpec(_Strict):
    agent_id: str | None = Field(default=None, max_length=128)
    system_prompt: str | None = Field(default=None, max_length=20000)
    voice: str | None = Field(default=None, max_length=128)
    greeting: str | None = Field(default=None, max_length=2000)
    provider: str | None = Field(default=None, max_length=64)


class AgentNode(_Strict):
    agent: AgentSpec


class BridgeNode(_Strict):
    bridge_to: str = Field(pattern=SIP_URI, description="a SIP URI, e.g. sip:agent@ultravox")


class HangupNode(_Strict):
    hangup: Literal[True] = True


def kind_of(node: Any) -> str | None:
    """The node's kind: its one kind key. None (→ a `flow_node_kind` error) for none or two."""
    if isinstance(node, dict):
        keys = node.keys()
    elif isinstance(node, BaseModel):
        keys = type(node).model_fields.keys()
    else:
        return None
    found = [k for k in KINDS if k in keys]
    if isinstance(node, dict) and "gather" in found:
        found = ["gather"]  # a gather's own prompt may be spelled say/play inside it only
    return found[0] if len(found) == 1 else None


Node = Annotated[
    Annotated[SayNode, Tag("say")]
    | Annotated[PlayNode, Tag("play")]
    | Annotated[GatherNode, Tag("gather")]
    | Annotated[RecordNode, Tag("record")]
    | Annotated[WebhookNode, Tag("webhook")]
    | Annotated[SetNode, Tag("set")]
    | Annotated[ConditionNode, Tag("condition")]
    | Annotated[TransferNode, Tag("transfer")]
    | Annotated[AgentNode, Tag("agent")]
    | Annotated[BridgeNode, Tag("bridge_to")]
    | Annotated[HangupNode, Tag("hangup")],
    Discriminator(
        kind_of,
        custom_error_type="flow_node_kind",
        custom_error_message="a node has exactly one of: " + ", ".join(KINDS),
    ),
]


class Flow(_Strict):
    """A flow as uploaded: `POST /v1/ivr/flows`."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "main-menu",
                    "start": "greet",
                    "nodes": {
                        "greet": {"say": "Thanks for calling Acme.", "next": "menu"},
                        "menu": {
                            "gather": {"say": "Press 1 for billing.", "digits": 1},
                            "on": {"1": "goodbye"},
                            "no_input": "goodbye",
                        },
                        "goodbye": {"say": "Goodbye.", "then": "hangup"},
                    },
                }
            ]
        },
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    start: NodeName
    fallback: NodeName | None = Field(
        default=None, description="where a refused transfer goes when its node names none"
    )
    nodes: dict[NodeName, Node] = Field(min_length=1, max_length=500)


# --- the graph ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowProblem:
    code: str  # flow_unknown_node | flow_unreachable_node | flow_loop_without_input
    node: str
    detail: str


def edges(node: BaseModel) -> list[tuple[str, str]]:
    """(label, target) for every branch a node can take."""
    out: list[tuple[str, str]] = []
    if isinstance(node, GatherNode):
        out += [(f"on {key!r}", target) for key, target in node.on.items()]
    if isinstance(node, ConditionNode):
        out += [("true", node.true), ("false", node.false)]
    if isinstance(node, WebhookNode):
        out += [("branches", target) for target in node.branches]
    for label in ("next", "no_input", "invalid", "on_error", "fallback"):
        target = getattr(node, label, None)
        if target is not None:
            out.append((label, target))
    return out


def check_graph(flow: Flow) -> list[FlowProblem]:
    """Every problem of the flow's graph, in a stable order (the first is reported as the 422)."""
    problems: list[FlowProblem] = []
    nodes = flow.nodes
    if flow.start not in nodes:
        problems.append(
            FlowProblem(
                "flow_unknown_node", flow.start, f"start names {flow.start!r}, which is not a node"
            )
        )
    if flow.fallback is not None and flow.fallback not in nodes:
        problems.append(
            FlowProblem(
                "flow_unknown_node",
                flow.fallback,
                f"fallback names {flow.fallback!r}, which is not a node",
            )
        )
    for name, node in nodes.items():
        for label, target in edges(node):
            if target not in nodes:
                problems.append(
                    FlowProblem(
                        "flow_unknown_node",
                        name,
                        f"node {name!r}: {label} names {target!r}, which is not a node",
                    )
                )
    if problems:
        return problems
    seen = _reachable(flow)
    for name in nodes:
        if name not in seen:
            problems.append(
                FlowProblem(
                    "flow_unreachable_node",
                    name,
                    f"node {name!r} cannot be reached from start {flow.start!r}",
                )
            )
    loop = _loop_without_input(flow)
    if loop:
        path = " → ".join(repr(n) for n in [*loop, loop[0]])
        problems.append(
            FlowProblem(
                "flow_loop_without_input",
                loop[0],
                f"node {loop[0]!r}: the loop {path} takes no input (add a gather or record)",
            )
        )
    return problems


def _targets(flow: Flow, name: str) -> list[str]:
    node = flow.nodes[name]
    out = [target for _, target in edges(node)]
    if isinstance(node, TransferNode) and node.fallback is None and flow.fallback is not None:
        out.append(flow.fallback)
    return out


def _reachable(flow: Flow) -> set[str]:
    seen, todo = {flow.start}, [flow.start]
    while todo:
        for target in _targets(flow, todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _loop_without_input(flow: Flow) -> list[str]:
    """A cycle among nodes that take no input (iterative DFS, colours), or []."""
    quiet = {n for n, node in flow.nodes.items() if kind_of(node) not in INPUT_KINDS}
    colour: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in sorted(quiet):
        if root in colour:
            continue
        stack: list[tuple[str, list[str]]] = [
            (root, [t for t in _targets(flow, root) if t in quiet])
        ]
        path = [root]
        colour[root] = 1
        while stack:
            name, todo = stack[-1]
            if not todo:
                colour[name] = 2
                stack.pop()
                path.pop()
                continue
            target = todo.pop(0)
            if colour.get(target) == 1:
                return path[path.index(target) :]
            if target not in colour:
                colour[target] = 1
                path.append(target)
                stack.append((target, [t for t in _targets(flow, target) if t in quiet]))
    return []


# --- bridges: a bridge dials past the guardrail chain, so only to agent hosts ---------------

_SIP_HOST = re.compile(r"^sips?:(?:[^@]+@)?(?P<host>[A-Za-z0-9.\-]+)(?::\d+)?(?:[;?].*)?$")


def sip_host(uri: str) -> str | None:
    m = _SIP_HOST.match(uri)
    return m["host"].lower() if m else None


def bridge_allowed(uri: str, hosts: list[str] | tuple[str, ...]) -> bool:
    """A `bridge_to` target may only be an agent host (`agents.bridge_hosts`, fnmatch), as for
    `on_answer.bridge_to` of calls: a bridge is not an outbound action and passes no guardrail,
    so it must never reach the PSTN trunk."""
    host = sip_host(uri)
    return host is not None and any(fnmatch.fnmatchcase(host, p) for p in hosts)


def bridges(flow: Flow) -> list[tuple[str, str]]:
    """(node, SIP URI) of every bridge_to node."""
    return [(n, node.bridge_to) for n, node in flow.nodes.items() if isinstance(node, BridgeNode)]


def transfer_callers(flow: Flow) -> list[tuple[str, str]]:
    """(node, number) of every transfer that names its own caller id (`from`)."""
    return [
        (n, node.transfer.from_)
        for n, node in flow.nodes.items()
        if isinstance(node, TransferNode) and node.transfer.from_ is not None
    ]


def webhook_urls(flow: Flow) -> list[tuple[str, str]]:
    """(node, URL) of every webhook node."""
    return [
        (n, node.webhook.url) for n, node in flow.nodes.items() if isinstance(node, WebhookNode)
    ]
