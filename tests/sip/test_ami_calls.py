"""Calls through sip.ami.AMIClient against the test AMI server: each far-end outcome produces the
OriginateResponse Reason and Hangup Cause that Asterisk 22 produced in the transcripts
(../shared/asterisk-ami/ 02a-d, 03a-f, 04)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sip.ami import AMIActionError, AMIClient
from tests.amisim import (
    BUSY,
    DECLINE,
    FAR_END_DOWN,
    NO_ANSWER,
    NOT_FOUND,
    UNAVAILABLE,
    AMISimServer,
    Answer,
    Outcome,
    Reject,
)
from tests.amisim.recorder import EventRecorder


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
async def client(ami: AMISimServer) -> AsyncIterator[AMIClient]:
    client = AMIClient("127.0.0.1", ami.port, "gateway", "secret", action_timeout=1.0)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
def events(client: AMIClient) -> EventRecorder:
    recorder = EventRecorder()
    client.on_event("*", recorder)
    return recorder


@dataclass(frozen=True)
class Expected:
    response: str  # OriginateResponse Response
    reason: str  # OriginateResponse Reason
    cause: str  # Hangup Cause
    tech_cause: str | None  # Hangup TechCause (the SIP code)
    dial_status: str | None  # DialEnd DialStatus; None = no DialEnd at all
    request_cause: str | None  # HangupRequest Cause; None = no HangupRequest


OUTCOMES: dict[str, tuple[Outcome, Expected]] = {
    "answered": (Answer(hangup_after=0), Expected("Success", "4", "16", None, "ANSWER", None)),
    "busy-486": (BUSY, Expected("Failure", "0", "17", "486", "BUSY", "17")),
    "notfound-404": (NOT_FOUND, Expected("Failure", "0", "1", "404", "NOANSWER", "1")),
    "unavailable-503": (UNAVAILABLE, Expected("Failure", "0", "34", "503", "CONGESTION", "34")),
    "decline-603": (DECLINE, Expected("Failure", "0", "21", "603", "NOANSWER", "21")),
    "no-answer": (NO_ANSWER, Expected("Failure", "3", "19", "480", None, None)),
    "far-end-down": (FAR_END_DOWN, Expected("Failure", "3", "19", "480", None, None)),
}


@pytest.mark.parametrize("name", OUTCOMES)
async def test_originate_outcome(
    name: str, ami: AMISimServer, client: AMIClient, events: EventRecorder
) -> None:
    outcome, expected = OUTCOMES[name]
    ami.outcomes["5550100"] = outcome
    queued = await client.originate(
        "PJSIP/5550100@carrier", context="answered", channel_id="gw-call-1", ring_timeout=6
    )
    assert queued.response.message == "Originate successfully queued"

    hangup = await events.wait_for("Hangup", Uniqueid="gw-call-1")
    response = await events.wait_for("OriginateResponse", ActionID=queued.action_id)
    assert (response["Response"], response["Reason"]) == (expected.response, expected.reason)
    assert response["Uniqueid"] == "gw-call-1"
    if expected.response == "Failure":
        assert response["Channel"] == "PJSIP/5550100@carrier"  # the dial string, not a channel
    assert hangup["Cause"] == expected.cause
    assert hangup.get("TechCause") == expected.tech_cause
    dial_end = events.named("DialEnd", DestUniqueid="gw-call-1")
    assert [e["DialStatus"] for e in dial_end] == (
        [expected.dial_status] if expected.dial_status else []
    )
    requests = events.named("HangupRequest", Uniqueid="gw-call-1")
    assert [e.get("Cause") for e in requests] == (
        [expected.request_cause] if expected.request_cause else []
    )
    if expected.request_cause:
        assert requests[0]["TechCause"] == expected.tech_cause
    assert len(events.named("Cdr")) == (
        1 if expected.response == "Success" else 0
    )  # none unanswered
    first = events.named("Newchannel")[0]
    assert (first["Uniqueid"], first["Linkedid"]) == ("gw-call-1", "gw-call-1")
    assert await client.core_show_channels() == []


@pytest.mark.parametrize(
    ("position", "order"),
    [
        ("before_up", ["OriginateResponse", "Newstate", "DialEnd"]),  # 02b
        ("after_up", ["Newstate", "OriginateResponse", "DialEnd"]),  # 02a
        ("after_dialend", ["Newstate", "DialEnd", "OriginateResponse"]),  # 08, 04
    ],
)
async def test_originate_response_position_is_scriptable(
    position: str, order: list[str], ami: AMISimServer, client: AMIClient, events: EventRecorder
) -> None:
    ami.default_outcome = Answer(originate_response=position)  # type: ignore[arg-type]
    await client.originate("PJSIP/5551000@carrier", application="Wait", data="60")
    await events.wait_for("OriginateResponse")
    await events.wait_for("DialEnd")
    seen = [
        e["Event"]
        for e in events.events
        if e["Event"] in ("DialEnd", "OriginateResponse") or e.get("ChannelStateDesc") == "Up"
    ]
    assert seen == order


async def test_rejection_order_is_scriptable(
    ami: AMISimServer, client: AMIClient, events: EventRecorder
) -> None:
    ami.outcomes["5550486"] = Reject(486, order=("Hangup", "DialEnd", "OriginateResponse"))
    await client.originate("PJSIP/5550486@carrier", context="answered")
    await events.wait_for("OriginateResponse")
    tail = [e["Event"] for e in events.events][-4:]
    assert tail == ["HangupRequest", "Hangup", "DialEnd", "OriginateResponse"]


async def test_variables_come_back_as_varset_and_status(
    client: AMIClient, events: EventRecorder
) -> None:
    await client.originate(
        "PJSIP/5551000@carrier",
        context="answered-long",
        channel_id="gw-vars",
        variables={"GW_CALL_ID": "call-1", "__GW_TENANT": "acme"},
        caller_id='"Gateway" <100>',
    )
    await events.wait_for("OriginateResponse")
    varsets = {e["Variable"]: e["Value"] for e in events.named("VarSet", Uniqueid="gw-vars")}
    assert varsets == {"GW_CALL_ID": "call-1", "__GW_TENANT": "acme"}
    assert events.named("NewCallerid")[0]["CallerIDName"] == "Gateway"
    [status] = await client.send_list(
        {"Action": "Status", "Channel": "PJSIP/carrier-00000000", "Variables": "GW_CALL_ID,NOPE"},
        "StatusComplete",
    )
    assert status["Variable"] == ["GW_CALL_ID=call-1", "NOPE=(null)"]
    got = await client.send(
        {"Action": "Getvar", "Channel": "PJSIP/carrier-00000000", "Variable": "GW_TENANT"}
    )
    assert got["Value"] == "acme"
    await client.send(
        {"Action": "Setvar", "Channel": "PJSIP/carrier-00000000", "Variable": "X", "Value": "1"}
    )
    assert (await events.wait_for("VarSet", Variable="X"))["Value"] == "1"


async def test_far_end_hangs_up_an_answered_call(
    ami: AMISimServer, client: AMIClient, events: EventRecorder
) -> None:
    await client.originate("PJSIP/5551003@carrier", context="answered-long", channel_id="gw-2d")
    await events.wait_for("OriginateResponse")
    ami.remote_hangup("gw-2d")  # 02d: BYE from the far end
    hangup = await events.wait_for("Hangup", Uniqueid="gw-2d")
    assert (hangup["Cause"], hangup["Cause-txt"]) == ("0", "Unknown")
    request = events.named("HangupRequest", Uniqueid="gw-2d")[0]
    assert "Cause" not in request
    assert events.named("SoftHangupRequest", Uniqueid="gw-2d")[0]["Cause"] == "16"
    names = [e["Event"] for e in events.events if e.get("Uniqueid") == "gw-2d"]
    assert names.index("HangupRequest") < names.index("SoftHangupRequest") < names.index("Hangup")


async def test_hangup_action(client: AMIClient, events: EventRecorder) -> None:
    await client.originate("PJSIP/5552000@carrier", context="answered-long", channel_id="gw-h")
    await events.wait_for("OriginateResponse")
    response = await client.hangup("PJSIP/carrier-00000000")
    assert response.message == "Channel Hungup"
    hangup = await events.wait_for("Hangup", Uniqueid="gw-h")
    assert (hangup["Cause"], hangup["Cause-txt"]) == ("16", "Normal Clearing")
    with pytest.raises(AMIActionError, match="No such channel"):
        await client.hangup("PJSIP/carrier-00000000")


async def test_hanging_up_one_bridged_leg_hangs_up_both(
    client: AMIClient, events: EventRecorder
) -> None:
    for uid in ("gw-4B", "gw-4C"):
        await client.originate("PJSIP/5552001@carrier", context="answered-long", channel_id=uid)
        await events.wait_for("OriginateResponse", Uniqueid=uid)
    b, c = "PJSIP/carrier-00000000", "PJSIP/carrier-00000001"
    bridged = await client.send({"Action": "Bridge", "Channel1": b, "Channel2": c, "Tone": "no"})
    assert bridged.message == "Channels have been bridged"
    await events.wait_count("BridgeEnter", 2)
    assert events.named("BridgeEnter")[1]["Linkedid"] == "gw-4B"  # C joins B's Linkedid
    [listed] = await client.send_list({"Action": "BridgeList"}, "BridgeListComplete")
    assert listed["BridgeUniqueid"] == events.named("BridgeCreate")[0]["BridgeUniqueid"]

    await client.hangup(b)
    await events.wait_for("Hangup", Uniqueid="gw-4C")  # 04: the other leg goes too
    assert [e["Cause"] for e in events.named("Hangup")] == ["16", "16"]
    assert len(events.named("BridgeLeave")) == 2 and events.named("BridgeDestroy")
    assert await client.core_show_channels() == []


async def test_redirect_keeps_the_channel_up(client: AMIClient, events: EventRecorder) -> None:
    await client.originate("PJSIP/5552000@carrier", context="answered-long", channel_id="gw-r")
    await events.wait_for("OriginateResponse")
    response = await client.send(
        {
            "Action": "Redirect",
            "Channel": "PJSIP/carrier-00000000",
            "Context": "redirect-target",
            "Exten": "s",
            "Priority": "1",
        }
    )
    assert response.message == "Redirect successful"
    [channel] = await client.core_show_channels()
    assert (channel["Context"], channel["ChannelStateDesc"]) == ("redirect-target", "Up")
