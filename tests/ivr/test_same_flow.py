"""One flow, three transports — the sandbox simulation, Asterisk (AsyncAGI on the test AMI
server) and Twilio (signed webhooks, TwiML) — the same caller inputs give the same transcript
of nodes, inputs and end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.resources import RESOURCES
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim
from tests.helpers import eventually
from tests.ivr.test_twilio import PUBLIC, TOKEN, action_of, post

FLOW = {
    "name": "same",
    "start": "greet",
    "nodes": {
        "greet": {"say": "Hello.", "next": "menu"},
        "menu": {
            "gather": {"say": "Press 1.", "digits": 1, "retries": 1, "variable": "choice"},
            "on": {"1": "mark"},
            "invalid": "sorry",
            "no_input": "bye",
        },
        "sorry": {"say": "That is not an option.", "next": "menu"},
        "mark": {"set": {"tier": "gold"}, "next": "check"},
        "check": {
            "condition": {"test": {"var": "tier", "eq": "gold"}},
            "true": "music",
            "false": "bye",
        },
        "music": {"play": "https://cdn.example/thanks.wav", "next": "bye"},
        "bye": {"say": "Goodbye.", "then": "hangup"},
    },
}
INPUTS = ["9", "1"]


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
def settings(database_url, redis_url, ami):
    from tests.calls.conftest import call_settings

    return call_settings(
        database_url,
        redis_url,
        ami_port=ami.port,
        http={"public_base_url": PUBLIC},
        providers={
            "twilio": {
                "enabled": True,
                "account_sid": "AC" + "0" * 32,
                "auth_token": TOKEN,
                "api_base_url": "http://127.0.0.1:9",
                "timeout": 1,
            }
        },
    )


def shape(transcript: list[dict]) -> list[tuple]:
    """What must not depend on the transport: nodes entered, inputs and branches, the end."""
    out: list[tuple] = []
    for e in transcript:
        if "kind" in e:
            out.append(("node", e["node"], e.get("say"), e.get("play")))
        elif "input" in e:
            out.append(("input", e["input"], e["result"], e["branch"]))
        elif "end" in e:
            out.append(("end", e["end"]))
    return out


async def test_the_same_flow_gives_the_same_transcript_everywhere(ivr, client, ami):
    agi = AsyncAgiSim(ami)
    db = client.app[RESOURCES].db
    await ivr.upload(FLOW)
    await db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities)"
        " SELECT '+14155550100', tenant_id, 'asterisk:main', '{voice}' FROM ivr_flows LIMIT 1"
    )
    await ivr.request("PUT", "/v1/dids/+14155550100", 200, {"ivr_flow": "same"})

    simulated = await ivr.simulate("same", INPUTS, to="+14155550100")

    async def logged_in() -> bool:
        return ami.logins >= 1

    await eventually(logged_in, timeout=10)
    agi.inbound_call("14155550100", "14155550123", keys=list(INPUTS))

    twilio_call = {"CallSid": "CA1", "From": "+14155550123", "To": "+14155550100"}
    _, doc = await post(client, "/webhooks/twilio/ivr", twilio_call)
    for digits in INPUTS:
        _, doc = await post(client, action_of(doc), twilio_call | {"Digits": digits})
    assert "<Hangup/>" in doc

    async def all_three():
        rows = await db.fetch("SELECT transport, transcript, variables FROM ivr_sessions")
        return rows if len(rows) == 3 else None

    rows = {r["transport"]: r for r in await eventually(all_three, timeout=10)}
    expected = shape(simulated["transcript"])
    assert expected[-1] == ("end", "hangup") and ("input", "9", "invalid", "sorry") in expected
    for transport in ("simulate", "asterisk", "twilio"):
        assert shape(rows[transport]["transcript"]) == expected, transport
        assert rows[transport]["variables"] == {"choice": "1", "tier": "gold"}, transport
