"""What Asterisk 22 emits for each call outcome, rebuilt from ../shared/asterisk-ami/ transcripts.

Each builder mutates the channel the way Asterisk did at that point (state, context, linkedid) and
returns the events in captured order. Timing between phases is the server's business.

Outcomes a test can script per dialled number (direct ``PJSIP/<number>@<endpoint>`` originates):

- ``Answer``     02a/02b/08: ringing, 200 OK; OriginateResponse Success, Reason 4
- ``Reject``     03a-d: 486/404/503/603; OriginateResponse Failure, Reason 0, cause from the SIP code
- ``NoAnswer``   03e: 180 then nothing until the Originate Timeout; Failure, Reason 3, cause 19
- ``FarEndDown`` 03f: nothing listening; Failure, Reason 3 after the full Timeout, cause 19
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from .framing import Headers

# --- outcomes ------------------------------------------------------------------------------------

OriginateResponseAt = Literal["before_up", "after_up", "after_dialend"]
FailureStep = Literal["OriginateResponse", "DialEnd", "Hangup"]


@dataclass(frozen=True)
class Answer:
    """Far end answers. ``hangup_after`` ends the call from Asterisk's side (dialplan Hangup, 02a:
    Cause 16; or the Application ending, 02b: Cause 0); None keeps it up until hung up.

    Where OriginateResponse falls varies from run to run: before Newstate Up (02b), between Up
    and DialEnd (02a), or after DialEnd (08, 04).
    """

    ring_for: float = 0.0
    hangup_after: float | None = None
    originate_response: OriginateResponseAt = "after_up"


@dataclass(frozen=True)
class Reject:
    """Far end rejects the INVITE with ``sip_code``. ``order`` permutes the three events that
    follow HangupRequest (they come in a different order each run); None = the captured order."""

    sip_code: int
    order: tuple[FailureStep, ...] | None = None


@dataclass(frozen=True)
class NoAnswer:
    """180 Ringing, never answered. ``ring_for`` None = the Originate Timeout × time_scale."""

    ring_for: float | None = None


@dataclass(frozen=True)
class FarEndDown:
    """Nothing answers the INVITE at all (03f): no ringing; fails after the Timeout."""

    wait_for: float | None = None


Outcome = Answer | Reject | NoAnswer | FarEndDown

ANSWER = Answer()
BUSY = Reject(486)
NOT_FOUND = Reject(404)
UNAVAILABLE = Reject(503)
DECLINE = Reject(603)
NO_ANSWER = NoAnswer()
FAR_END_DOWN = FarEndDown()


@dataclass(frozen=True)
class Rejection:
    cause: int
    dial_status: str  # DialEnd DialStatus (not the dialplan DIALSTATUS)
    order: tuple[FailureStep, ...]  # as captured in the direct-PJSIP half of each transcript


REJECTIONS: dict[int, Rejection] = {
    486: Rejection(17, "BUSY", ("OriginateResponse", "DialEnd", "Hangup")),  # 03a
    404: Rejection(1, "NOANSWER", ("DialEnd", "OriginateResponse", "Hangup")),  # 03b
    503: Rejection(34, "CONGESTION", ("OriginateResponse", "DialEnd", "Hangup")),  # 03c
    603: Rejection(21, "NOANSWER", ("DialEnd", "Hangup", "OriginateResponse")),  # 03d
}

CAUSE_TEXT = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    19: "User alerting, no answer",
    21: "Call Rejected",
    34: "Circuit/channel congestion",
}

STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}

# --- the channel model ---------------------------------------------------------------------------


@dataclass
class Bridge:
    uniqueid: str
    members: list[Channel] = field(default_factory=list)


@dataclass
class Channel:
    name: str  # PJSIP/carrier-00000000
    uniqueid: str  # = Originate ChannelId when given
    requested: str  # what Originate asked for: PJSIP/5551000@carrier
    dial_string: str  # 5551000@carrier, as in DialBegin
    action_id: str | None = None
    channel_id_given: bool = True  # without a ChannelId a failed OriginateResponse says <unknown>
    responded: bool = False  # OriginateResponse already sent
    context: str = "from-carrier"  # the endpoint's context until the dialplan takes over
    exten: str = "s"
    priority: int = 1
    target_context: str | None = None  # Originate Context/Exten/Priority form
    target_exten: str = "s"
    target_priority: int = 1
    application: str = ""  # Originate Application/Data form
    app_data: str = ""
    state: int = 0
    caller_num: str = "<unknown>"
    caller_name: str = "<unknown>"
    originate_caller: tuple[str, str] | None = None  # Originate CallerID: (name, number)
    connected_num: str = "<unknown>"
    connected_name: str = "<unknown>"
    linkedid: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    answered: float | None = None
    bridge: Bridge | None = None
    alive: bool = True

    def __post_init__(self) -> None:
        self.linkedid = self.linkedid or self.uniqueid

    def get_var(self, name: str) -> str | None:
        """Originate ``__NAME`` / ``_NAME`` (inherited) variables read back as NAME (04)."""
        for key in (name, f"_{name}", f"__{name}"):
            if key in self.variables:
                return self.variables[key]
        return None


def snapshot(ch: Channel, prefix: str = "") -> Headers:
    return [
        (f"{prefix}Channel", ch.name),
        (f"{prefix}ChannelState", str(ch.state)),
        (f"{prefix}ChannelStateDesc", STATE_DESC[ch.state]),
        (f"{prefix}CallerIDNum", ch.caller_num),
        (f"{prefix}CallerIDName", ch.caller_name),
        (f"{prefix}ConnectedLineNum", ch.connected_num),
        (f"{prefix}ConnectedLineName", ch.connected_name),
        (f"{prefix}Language", "en"),
        (f"{prefix}AccountCode", ""),
        (f"{prefix}Context", ch.context),
        (f"{prefix}Exten", ch.exten),
        (f"{prefix}Priority", str(ch.priority)),
        (f"{prefix}Uniqueid", ch.uniqueid),
        (f"{prefix}Linkedid", ch.linkedid),
    ]


def event(name: str, privilege: str, *fields: tuple[str, str]) -> Headers:
    return [("Event", name), ("Privilege", privilege), *fields]


def channel_event(name: str, ch: Channel, *fields: tuple[str, str]) -> Headers:
    return event(name, "call,all", *snapshot(ch), *fields)


def varset(ch: Channel, variable: str, value: str) -> Headers:
    return event("VarSet", "dialplan,all", *snapshot(ch), ("Variable", variable), ("Value", value))


def newexten(ch: Channel, application: str, app_data: str) -> Headers:
    return event(
        "Newexten",
        "dialplan,all",
        *snapshot(ch),
        ("Extension", ch.exten),
        ("Application", application),
        ("AppData", app_data),
    )


def device_state(ch: Channel, state: str) -> Headers:
    device = ch.name.rsplit("-", 1)[0]
    return event("DeviceStateChange", "call,all", ("Device", device), ("State", state))


def dial_event(name: str, ch: Channel, *fields: tuple[str, str]) -> Headers:
    """DialBegin/DialState/DialEnd of an originated channel: only Dest* fields, no caller (02a)."""
    return event(name, "call,all", *snapshot(ch, "Dest"), *fields)


def hangup(ch: Channel, cause: int, tech_cause: int | None = None) -> Headers:
    ch.alive = False
    tech = [("TechCause", str(tech_cause))] if tech_cause is not None else []
    return channel_event(
        "Hangup", ch, ("Cause", str(cause)), ("Cause-txt", CAUSE_TEXT[cause]), *tech
    )


def originate_response(ch: Channel, *, success: bool, reason: int) -> Headers:
    """On failure ``Channel`` is the dial string you asked for and CallerID is <unknown> (03a-f);
    ``Uniqueid`` is the ChannelId, or <unknown> without one (08)."""
    if ch.target_context is not None:
        where = [("Context", ch.target_context), ("Exten", ch.target_exten)]
    else:
        where = [("Application", ch.application), ("Data", ch.app_data)]
    if success:
        channel, num, name = ch.name, ch.caller_num, ch.caller_name
    else:
        channel, num, name = ch.requested, "<unknown>", "<unknown>"
    uniqueid = ch.uniqueid if success or ch.channel_id_given else "<unknown>"
    ch.responded = True
    head = [("ActionID", ch.action_id)] if ch.action_id is not None else []
    return event(
        "OriginateResponse",
        "call,all",
        *head,
        ("Response", "Success" if success else "Failure"),
        ("Channel", channel),
        *where,
        ("Reason", str(reason)),
        ("Uniqueid", uniqueid),
        ("CallerIDNum", num),
        ("CallerIDName", name),
    )


def cdr(ch: Channel, *, destination_channel: str = "") -> Headers:
    """Only answered calls get one: default cdr.conf does not log unanswered CDRs (README)."""
    fmt = "%Y-%m-%d %H:%M:%S"
    now = time.time()
    answered = ch.answered or now
    number = "" if ch.caller_num == "<unknown>" else ch.caller_num
    name = "" if ch.caller_name == "<unknown>" else ch.caller_name
    return event(
        "Cdr",
        "cdr,all",
        ("AccountCode", ""),
        ("Source", number),
        ("Destination", ch.exten),
        ("DestinationContext", ch.context),
        ("CallerID", f'"{name}" <{number}>'),
        ("Channel", ch.name),
        ("DestinationChannel", destination_channel),
        ("LastApplication", ch.application or "Hangup"),
        ("LastData", ch.app_data),
        ("StartTime", time.strftime(fmt, time.localtime(ch.created))),
        ("AnswerTime", time.strftime(fmt, time.localtime(answered))),
        ("EndTime", time.strftime(fmt, time.localtime(now))),
        ("Duration", str(int(now - ch.created))),
        ("BillableSeconds", str(int(now - answered))),
        ("Disposition", "ANSWERED"),
        ("AMAFlags", "DOCUMENTATION"),
        ("UniqueID", ch.uniqueid),  # sic: capital ID in Cdr only
        ("UserField", ""),
    )


def rtp_qos(ch: Channel) -> list[Headers]:
    """The RTPAUDIOQOS* VarSets every media channel emits as it hangs up (02a, 02b, 02d, 04)."""
    stats = "ssrc=1709870306;themssrc=0;lp=0;rxjitter=0.000000;rxcount=0;txjitter=0.000000"
    return [
        varset(ch, "RTPAUDIOQOS", stats),
        varset(ch, "RTPAUDIOQOSJITTER", "minrxjitter=000.000000;maxrxjitter=000.000000;"),
        varset(ch, "RTPAUDIOQOSLOSS", "  minrxlost=000.000000;  maxrxlost=000.000000;"),
        varset(ch, "RTPAUDIOQOSRTT", "     minrtt=000.000000;     maxrtt=000.000000;"),
        varset(ch, "RTPAUDIOQOSMES", "   minrxmes=000.000000;   maxrxmes=000.000000;"),
    ]


# --- originate phases ----------------------------------------------------------------------------


def dial_start(ch: Channel) -> list[Headers]:
    """02a: Newchannel (Down, Uniqueid = Linkedid = ChannelId), Newexten AppDial2, one VarSet per
    Originate Variable (in reverse order, as in 02a and 08), caller-id events, DialBegin."""
    out = [channel_event("Newchannel", ch), newexten(ch, "AppDial2", "(Outgoing Line)")]
    out += [varset(ch, name, value) for name, value in reversed(ch.variables.items())]
    if ch.originate_caller is not None:
        ch.caller_name, ch.caller_num = ch.originate_caller
        out.append(
            channel_event(
                "NewCallerid", ch, ("CID-CallingPres", "0 (Presentation Allowed, Not Screened)")
            )
        )
        ch.connected_num, ch.connected_name = ch.caller_num, ch.caller_name
        out.append(channel_event("NewConnectedLine", ch))
    out.append(dial_event("DialBegin", ch, ("DialString", ch.dial_string)))
    return out


def ringing(ch: Channel) -> list[Headers]:
    """02a / 03e: 180 Ringing."""
    ch.state = 5
    return [
        channel_event("Newstate", ch),
        dial_event("DialState", ch, ("DialStatus", "RINGING")),
        device_state(ch, "RINGING"),
    ]


def answered(ch: Channel, at: OriginateResponseAt) -> list[Headers]:
    """02a/02b/08: Newstate Up, DialEnd ANSWER, OriginateResponse Success Reason 4 (where it falls
    varies), then the channel enters its Context (Context form) or runs its Application."""
    ch.state = 6
    ch.answered = time.time()
    up = channel_event("Newstate", ch)
    dial_end = dial_event("DialEnd", ch, ("DialStatus", "ANSWER"))
    response = originate_response(ch, success=True, reason=4)
    order = {
        "before_up": [response, up, dial_end],  # 02b
        "after_up": [up, response, dial_end],  # 02a
        "after_dialend": [up, dial_end, response],  # 08, 04
    }[at]
    order.append(device_state(ch, "INUSE"))
    if ch.target_context is not None:
        ch.context, ch.exten, ch.priority = ch.target_context, ch.target_exten, ch.target_priority
    return order


def rejected(ch: Channel, outcome: Reject) -> list[Headers]:
    """03a-d: HangupRequest with Cause + TechCause, then OriginateResponse Failure Reason 0,
    DialEnd and Hangup in varying order. No Cdr (unanswered)."""
    info = REJECTIONS[outcome.sip_code]
    code = outcome.sip_code
    steps: dict[FailureStep, Headers] = {}
    request = channel_event(
        "HangupRequest", ch, ("Cause", str(info.cause)), ("TechCause", str(code))
    )
    steps["OriginateResponse"] = originate_response(ch, success=False, reason=0)
    steps["DialEnd"] = dial_event("DialEnd", ch, ("DialStatus", info.dial_status))
    steps["Hangup"] = hangup(ch, info.cause, code)
    return [request, *(steps[name] for name in outcome.order or info.order)]


def no_answer(ch: Channel) -> list[Headers]:
    """03e (direct): after the Originate Timeout, OriginateResponse Failure Reason 3, then Hangup
    19 with TechCause 480. No HangupRequest, no DialEnd."""
    return [originate_response(ch, success=False, reason=3), hangup(ch, 19, 480)]


def far_end_down(ch: Channel) -> list[Headers]:
    """03f: no ringing at all; after the full Timeout, Hangup 19 / 480, then OriginateResponse
    Failure Reason 3."""
    return [hangup(ch, 19, 480), originate_response(ch, success=False, reason=3)]


# --- how a live channel ends ---------------------------------------------------------------------


def dialplan_hangup(ch: Channel) -> list[Headers]:
    """02a: the dialplan runs Hangup(): SoftHangupRequest 16, QoS VarSets, Cdr, Hangup 16."""
    return [
        channel_event("SoftHangupRequest", ch, ("Cause", "16")),
        *rtp_qos(ch),
        cdr(ch),
        hangup(ch, 16),
    ]


def application_ended(ch: Channel) -> list[Headers]:
    """02b: the Originate Application returns: QoS VarSets, Cdr, Hangup Cause 0."""
    return [*rtp_qos(ch), cdr(ch), hangup(ch, 0)]


def remote_bye(ch: Channel) -> list[Headers]:
    """02d: far end sends BYE: QoS VarSets, HangupRequest (no Cause), SoftHangupRequest 16, Cdr,
    Hangup Cause 0 (Unknown)."""
    return [
        *rtp_qos(ch),
        channel_event("HangupRequest", ch),
        channel_event("SoftHangupRequest", ch, ("Cause", "16")),
        cdr(ch),
        hangup(ch, 0),
    ]


def hangup_action(ch: Channel, cause: int) -> list[Headers]:
    """Hangup action on a channel that is not bridged. 04 shows no HangupRequest or
    SoftHangupRequest for the channel the action hangs up, only QoS VarSets, Hangup and Cdr."""
    return [*rtp_qos(ch), cdr(ch), hangup(ch, cause)]


def ringing_cancelled(ch: Channel, cause: int) -> list[Headers]:
    """Hangup action on a channel that has not answered yet. NOT captured: shaped like 03e."""
    return [originate_response(ch, success=False, reason=0), hangup(ch, cause)]


# --- bridges (04) --------------------------------------------------------------------------------


def bridge_fields(bridge: Bridge, technology: str) -> Headers:
    return [
        ("BridgeUniqueid", bridge.uniqueid),
        ("BridgeType", "basic"),
        ("BridgeTechnology", technology),
        ("BridgeCreator", "<unknown>"),
        ("BridgeName", "<unknown>"),
        ("BridgeNumChannels", str(len(bridge.members))),
        ("BridgeVideoSourceMode", "none"),
    ]


def bridged(bridge: Bridge, a: Channel, b: Channel) -> list[Headers]:
    """04 Bridge action: BridgeCreate, BridgeEnter ×2 (the second channel takes the first one's
    Linkedid), BRIDGEPEER VarSets."""
    out = [event("BridgeCreate", "call,all", *bridge_fields(bridge, "simple_bridge"))]
    b.linkedid = a.linkedid
    for ch in (a, b):
        bridge.members.append(ch)
        ch.bridge = bridge
        out.append(
            event("BridgeEnter", "call,all", *bridge_fields(bridge, "simple_bridge"), *snapshot(ch))
        )
    out += [varset(b, "BRIDGEPEER", a.name), varset(a, "BRIDGEPEER", b.name)]
    return out


def bridged_hangup(ch: Channel, cause: int, *, remote: bool) -> list[Headers]:
    """04: hanging up one bridged channel hangs up the other too: BridgeLeave, the leg's Hangup,
    BridgeLeave of the peer, BridgeDestroy, the peer's SoftHangupRequest 16, one Cdr (with the
    peer as DestinationChannel) and the peer's Hangup 16. With ``remote`` (a BYE on a bridged
    leg, not captured) the leg first gets HangupRequest/SoftHangupRequest as in 02d."""
    bridge = ch.bridge
    assert bridge is not None
    peer = next((m for m in bridge.members if m is not ch), None)
    out: list[Headers] = []
    if remote:
        out += [
            channel_event("HangupRequest", ch),
            channel_event("SoftHangupRequest", ch, ("Cause", "16")),
        ]
    bridge.members.remove(ch)
    ch.bridge = None
    out.append(
        event("BridgeLeave", "call,all", *bridge_fields(bridge, "native_rtp"), *snapshot(ch))
    )
    out += [*rtp_qos(ch), hangup(ch, cause)]
    if peer is not None:
        bridge.members.remove(peer)
        peer.bridge = None
        out.append(
            event("BridgeLeave", "call,all", *bridge_fields(bridge, "native_rtp"), *snapshot(peer))
        )
    out.append(event("BridgeDestroy", "call,all", *bridge_fields(bridge, "native_rtp")))
    if peer is not None:
        out += [
            channel_event("SoftHangupRequest", peer, ("Cause", "16")),
            cdr(ch, destination_channel=peer.name),
            *rtp_qos(peer),
            hangup(peer, 16),
        ]
    else:
        out.append(cdr(ch))
    return out


# --- list items (01, 04) -------------------------------------------------------------------------


def _duration(ch: Channel) -> str:
    seconds = int(time.time() - ch.created)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def core_show_channel(ch: Channel, action_id: str | None) -> Headers:
    """04: ActionID right after Event, no Privilege."""
    head = [("ActionID", action_id)] if action_id is not None else []
    return [
        ("Event", "CoreShowChannel"),
        *head,
        *snapshot(ch),
        ("Application", ch.application),
        ("ApplicationData", ch.app_data),
        ("Duration", _duration(ch)),
        ("BridgeId", ch.bridge.uniqueid if ch.bridge else ""),
    ]


def _or_null(value: str | None) -> str:
    return "(null)" if value is None else value


def status_item(ch: Channel, action_id: str | None, variables: list[str]) -> Headers:
    """04: ``Privilege: Call`` (capital C), ActionID is the *last* header, one
    ``Variable: NAME=value`` per requested variable, ``(null)`` when unset."""
    tail = [("ActionID", action_id)] if action_id is not None else []
    return [
        ("Event", "Status"),
        ("Privilege", "Call"),
        *snapshot(ch),
        ("Type", ch.name.split("/", 1)[0]),
        ("DNID", ""),
        ("EffectiveConnectedLineNum", ch.connected_num),
        ("EffectiveConnectedLineName", ch.connected_name),
        ("TimeToHangup", "0"),
        ("BridgeID", ch.bridge.uniqueid if ch.bridge else ""),
        ("Application", ch.application),
        ("Data", ch.app_data),
        ("Nativeformats", "(ulaw)"),
        ("Readformat", "ulaw"),
        ("Readtrans", ""),
        ("Writeformat", "ulaw"),
        ("Writetrans", ""),
        ("Callgroup", "0"),
        ("Pickupgroup", "0"),
        ("Seconds", str(int(time.time() - ch.created))),
        *(("Variable", f"{name}={_or_null(ch.get_var(name))}") for name in variables),
        *tail,
    ]


def list_complete(name: str, action_id: str | None, count: int) -> Headers:
    """01/04: ``…Complete`` with EventList Complete and ListItems; StatusComplete adds Items."""
    head = [("ActionID", action_id)] if action_id is not None else []
    extra = [("Items", str(count))] if name == "StatusComplete" else []
    return [
        ("Event", name),
        *head,
        ("EventList", "Complete"),
        ("ListItems", str(count)),
        *extra,
    ]
