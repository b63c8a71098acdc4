"""AI agents and answering-machine detection on the Asterisk path: an Ultravox-style agent
session (local HTTP fake) bridged to the answered call, and AMD (09/09b: AMDSTATUS and
AMDCAUSE VarSets) deciding whether the agent is connected at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.amisim import scenarios as sc
from tests.calls.conftest import types
from tests.fakes.agent_server import FakeAgents


@pytest.fixture
async def agents() -> AsyncIterator[FakeAgents]:
    async with FakeAgents() as fake:
        yield fake


@pytest.fixture
def overrides(agents: FakeAgents):
    return {
        "agents": {
            "provider": "ultravox",
            "ultravox": {
                "enabled": True,
                "api_base_url": agents.base_url,
                "api_key": agents.api_key,
                "timeout": 2.0,
            },
        }
    }


def amd_verdict(ami, uniqueid: str, status: str, cause: str) -> None:
    """What AMD() in the answered call's context emits (09b)."""
    ch = ami.find_channel(uniqueid)
    assert ch is not None
    ami.emit(sc.varset(ch, "AMDSTATUS", status))
    ami.emit(sc.varset(ch, "AMDCAUSE", cause))


async def test_answered_call_is_bridged_to_a_new_agent_session(voice, ami, agents):
    agent = {"system_prompt": "You are a courteous scheduling assistant.", "voice": "Mark"}
    call_id = (await voice.place(on_answer={"agent": agent}))["id"]
    call = await voice.wait_event(call_id, "call.bridged")
    key = f"tl-{call_id}-1"

    [create] = [r for r in agents.requests if r.method == "POST"]
    assert create.path == "/api/calls"
    assert create.headers["X-API-Key"] == agents.api_key
    assert create.headers["Idempotency-Key"] == key
    assert create.body["systemPrompt"] == agent["system_prompt"]
    assert create.body["voice"] == "Mark" and "sip" in create.body["medium"]
    assert create.body["metadata"]["trunkline_call_id"] == call_id
    [session] = agents.sessions.values()
    assert call["agent"]["session_id"] == session["callId"]
    assert call["agent"]["sip_uri"] == session["sipUri"]
    dialled = ami.actions("Originate")[1]
    assert dialled.get("Channel") == f"PJSIP/{session['callId']}@{agents.sip_domain}"
    assert dialled.get("ChannelId") == f"{key}-agent"
    assert dialled.get("Context") == "trunkline-agent"
    seen = types(call)
    assert seen.index("call.answered") < seen.index("call.agent_session_created")
    assert seen.index("call.agent_session_created") < seen.index("call.agent_dialing")

    await voice.post(f"/v1/calls/{call_id}/hangup")
    await voice.wait(call_id, "completed")
    await voice.wait_event(call_id, "call.agent_ended")
    for _ in range(250):  # ending the session is a best-effort job after the hangup
        if session["ended"]:
            break
        await asyncio.sleep(0.02)
    assert session["ended"], "the agent session was not ended"


async def test_agent_provider_refusal_ends_the_call(voice, ami, agents):
    agents.fail_next = [400]
    call_id = (await voice.place(on_answer={"agent": {"agent_id": "a-1"}}))["id"]
    done = await voice.wait(call_id, "completed")
    failed = next(e for e in done["timeline"] if e["type"] == "call.control_failed")
    assert failed["data"]["op"] == "connect" and failed["data"]["code"] == "agent_http_400"
    requested = next(e for e in done["timeline"] if e["type"] == "call.hangup_requested")
    assert requested["data"]["reason"] == "agent_unavailable"
    assert agents.requests[0].path == "/api/agents/a-1/calls"


async def test_amd_decides_whether_the_agent_is_connected(voice, ami):
    bridge = {"bridge_to": "sip:agent@ultravox"}
    machine = (await voice.place(amd=True, on_machine="hangup", on_answer=bridge))["id"]
    human = (await voice.place(to="+14155550160", amd=True, on_answer=bridge))["id"]
    await voice.wait(machine, "answered")
    await voice.wait(human, "answered")
    assert {a.get("Context") for a in ami.actions("Originate")} == {"trunkline-amd"}
    assert len(ami.actions("Originate")) == 2, "the agents wait for the AMD verdicts"

    amd_verdict(ami, f"tl-{machine}-1", "MACHINE", "LONGGREETING-1500-1500")
    done = await voice.wait(machine, "completed")
    assert (done["amd_result"], done["amd_detail"]) == ("machine", "MACHINE LONGGREETING-1500-1500")
    assert done["agent"] is None, "no agent leg for a machine"
    reasons = [
        e["data"]["reason"] for e in done["timeline"] if e["type"] == "call.hangup_requested"
    ]
    assert reasons == ["answering_machine"]
    assert done["error_code"] == "machine_detected", "why it ended, as max_duration says"

    amd_verdict(ami, f"tl-{human}-1", "HUMAN", "HUMAN-1-1")
    call = await voice.wait_event(human, "call.bridged")
    assert call["amd_result"] == "human"
    seen = types(call)
    assert seen.index("call.amd") < seen.index("call.agent_dialing")
    assert len(ami.actions("Originate")) == 3
