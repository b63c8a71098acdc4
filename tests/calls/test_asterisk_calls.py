"""Calls end to end over the test AMI server: API → guardrails → pool → Originate → AMI events
→ call state + event log (+ SSE) → hangup → permit released."""

from __future__ import annotations

from tests.amisim import AMISimServer, Answer
from tests.calls.conftest import CUSTOMER, types
from tests.events.sse import SSEStream, sse_headers


def ordered(seen: list[str], expected: list[str]) -> bool:
    """`expected` appears in `seen` in this order (other events may be in between)."""
    it = iter(seen)
    return all(any(s == e for s in it) for e in expected)


async def test_originate_answer_bridge_to_agent_hangup(voice, ami: AMISimServer, client):
    stream_resp = await client.get("/v1/events", headers=sse_headers(voice.token))
    assert stream_resp.status == 200
    stream = SSEStream(stream_resp)

    placed = await voice.place(on_answer={"bridge_to": "sip:agent@ultravox"}, pool="api")
    assert placed["status"] == "queued" and placed["pool"] == "api"
    assert placed["trace_id"] == placed["_headers"]["X-Trace-Id"]
    call_id = placed["id"]

    bridged = await voice.wait_event(call_id, "call.bridged")
    assert bridged["status"] == "answered"
    assert await voice.in_use("api") == 1

    originate = ami.actions("Originate")
    customer, agent = originate[0], originate[1]
    key = bridged["provider_call_id"]
    assert customer.get("ChannelId") == key == f"tl-{call_id}-1"
    assert customer.get("Channel") == f"PJSIP/{CUSTOMER}@carrier"
    assert customer.get("Context") == "trunkline-outbound"
    assert f"TL_CALL_ID={call_id}" in customer.get_all("Variable")
    assert agent.get("Channel") == "PJSIP/agent@ultravox"
    assert agent.get("ChannelId") == f"{key}-agent"
    [bridge] = ami.actions("Bridge")
    assert bridge.get("Channel1") == bridged["channel"]
    assert bridged["agent"]["sip_uri"] == "sip:agent@ultravox"

    hung = await voice.post(f"/v1/calls/{call_id}/hangup")
    assert hung["status"] == "answered"
    done = await voice.wait(call_id, "completed")
    assert done["hangup_cause"] == 16 and done["error_code"] is None
    assert ami.actions("Hangup")[0].get("Channel") == key  # by Uniqueid, never by name
    await voice.wait_in_use("api", 0)
    assert done["durations"]["talk_seconds"] is not None
    assert [a["outcome"] for a in done["attempts"]] == ["originated"]

    expected = [
        "call.accepted",
        "guardrail.allow",
        "guardrail.allow",
        "call.attempt_started",
        "call.dialing",
        "call.ringing",
        "call.answered",
        "call.agent_dialing",
        "call.agent_answered",
        "call.bridged",
        "call.hangup_requested",
        "call.completed",
        "call.permit_released",
    ]
    seen = types(done)
    assert ordered(seen, expected), seen
    ended = [e for e in done["timeline"] if e["type"] == "call.agent_ended"]
    assert ended and ended[0]["data"]["status"] == "completed"  # 04: the bridged peer goes too

    streamed: list[str] = []
    while "call.permit_released" not in streamed:
        frame = await stream.next(timeout=5)
        assert frame is not None
        if frame.json["subject"] == call_id:
            streamed.append(frame.event)
    assert ordered(streamed, expected), streamed
    await stream.close()


async def test_two_answered_calls_bridged_then_one_hung_up_ends_both_and_bridge_rules(voice, ami):
    a = (await voice.place())["id"]
    b = (await voice.place(to="+14155550111"))["id"]
    await voice.wait(a, "answered")
    await voice.wait(b, "answered")

    resp = await voice.post(f"/v1/calls/{a}/bridge", call_id=b)
    assert resp["bridged_with"] == b
    await voice.wait_event(a, "call.bridged")
    await voice.wait_event(b, "call.bridged")
    assert (await voice.get(b))["bridged_with"] == a
    again = await voice.post(f"/v1/calls/{b}/bridge", expect=409, call_id=a)
    assert again["code"] == "already_bridged"

    await voice.post(f"/v1/calls/{a}/hangup")
    assert (await voice.wait(a, "completed"))["hangup_cause"] == 16
    assert (await voice.wait(b, "completed"))["hangup_cause"] == 16
    await voice.wait_in_use("api", 0)

    # Only answered calls can be joined; a ringing one can be hung up (canceled).
    ami.outcomes["+14155550122"] = Answer(ring_for=5)
    c = (await voice.place())["id"]
    d = (await voice.place(to="+14155550122"))["id"]
    await voice.wait(c, "answered")
    await voice.wait(d, "ringing")
    problem = await voice.post(f"/v1/calls/{c}/bridge", expect=409, call_id=d)
    assert problem["code"] == "call_not_answered"
    problem = await voice.post(f"/v1/calls/{c}/bridge", expect=409, call_id=c)
    assert problem["code"] == "not_bridgeable"
    await voice.post(f"/v1/calls/{d}/hangup")
    canceled = await voice.wait(d, "canceled")
    assert canceled["hangup_cause"] == 16 and canceled["error_code"] == "canceled"

    # A bridge passes no guardrail, so it may only reach agents, never the trunk.
    for target in ("sip:+19005550100@carrier", "sip:x@ultravox.example.com"):
        refused = await voice.place(on_answer={"bridge_to": target}, expect=422)
        assert refused["code"] == "bridge_target_not_allowed"


async def test_text_postgresql_cannot_store_is_refused_as_bad_input(voice, ami):
    """U+0000 fits JSON but not PostgreSQL text/jsonb: a 422, never a 500 at the INSERT."""
    for body in (
        {"metadata": {"order": "a\u0000b"}},
        {"on_answer": {"agent": {"system_prompt": "be brief\u0000"}}},
    ):
        refused = await voice.place(expect=422, **body)
        assert refused["code"] == "nul_character"
    assert not ami.actions("Originate")


async def test_a_sandbox_agent_cannot_be_bridged_to_a_real_trunk(voice, ami):
    """The sandbox agent provider (the default) has no media server: behind Asterisk the
    called party would be answered and dropped as agent_left a moment later. Refused at
    accept, with what to change (issue 10 item 11f)."""
    refused = await voice.place(on_answer={"agent": {"voice": "Mark"}}, expect=422)
    assert refused["code"] == "agent_provider_unsupported"
    assert "agents.provider" in refused["detail"]
    assert not ami.actions("Originate")
    await voice.wait_in_use("api", 0)  # the channel it took meanwhile is back
