"""One flow, three transports — the sandbox simulation, Asterisk (AsyncAGI on the test AMI
server) and Twilio (signed webhooks, TwiML) — the same caller inputs give the same transcript
of nodes, inputs and end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.resources import RESOURCES
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim
from tests.helpers import eventually
from tests.ivr.conftest import assert_refused_by_dnc
from tests.ivr.test_twilio import PUBLIC, TOKEN, action_of, post

DNC = "+12125550143"


def flow(hook: str) -> dict:
    """say, gather (a miss, then a match), set, condition, play, a signed webhook whose answer
    sets a variable and names the next node, record, a transfer the chain refuses (DNC) and
    its fallback, an agent."""
    return {
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
            "music": {"play": "https://cdn.example/thanks.wav", "next": "hook"},
            "hook": {
                "webhook": {"url": hook, "timeout": 2},
                "next": "bye",
                "on_error": "bye",
                "branches": ["vm"],
            },
            "vm": {"record": {"say": "Leave a message.", "max_length": 30}, "next": "xfer"},
            "xfer": {"transfer": {"to": DNC}, "fallback": "bot"},
            "bot": {"agent": {"system_prompt": "You help callers."}},
            "bye": {"say": "Goodbye.", "then": "hangup"},
        },
    }


INPUTS = ["9", "1", "abc"]  # a miss, the match, a three-second message


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
        webhooks={"allow_private_targets": True},
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
    """What must not depend on the transport: nodes entered, inputs and branches, the
    webhook's answer, the transfer's verdict, the end."""
    out: list[tuple] = []
    for e in transcript:
        if "kind" in e:
            out.append(("node", e["node"], e["kind"], e.get("say"), e.get("play")))
        elif "input" in e:
            out.append(("input", e["node"], e["input"], e["result"], e.get("branch")))
        elif "webhook" in e:
            out.append(("webhook", e["webhook"], e.get("set"), e.get("branch")))
        elif "transfer" in e:
            out.append(("transfer", e["transfer"], e.get("branch")))
        elif "end" in e:
            out.append(("end", e["end"]))
    return out


async def test_the_same_flow_gives_the_same_transcript_everywhere(ivr, client, ami, aiohttp_server):
    agi = AsyncAgiSim(ami)
    db = client.app[RESOURCES].db
    hooks: list[dict] = []

    async def answer(request: web.Request) -> web.Response:
        hooks.append(await request.json())
        return web.json_response({"set": {"account": "4711"}, "next": "vm"})

    app = web.Application()
    app.router.add_post("/hook", answer)
    server = await aiohttp_server(app)
    await ivr.upload(flow(f"http://127.0.0.1:{server.port}/hook"))
    await db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities)"
        " SELECT '+14155550100', tenant_id, 'asterisk:main', '{voice}' FROM ivr_flows LIMIT 1;"
        "INSERT INTO dnc_entries (number, tenant_id, source)"
        f" SELECT '{DNC}', tenant_id, 'internal' FROM ivr_flows LIMIT 1"
    )
    await ivr.request("PUT", "/v1/dids/+14155550100", 200, {"ivr_flow": "same"})

    simulated = await ivr.simulate("same", INPUTS, to="+14155550100")

    async def logged_in() -> bool:
        return ami.logins >= 1

    await eventually(logged_in, timeout=10)
    phone = agi.inbound_call("14155550100", "14155550123", keys=list(INPUTS))

    twilio_call = {"CallSid": "CA1", "From": "+14155550123", "To": "+14155550100"}
    _, doc = await post(client, "/webhooks/twilio/ivr", twilio_call)
    for digits in INPUTS[:2]:
        _, doc = await post(client, action_of(doc), twilio_call | {"Digits": digits})
    assert "<Record" in doc  # the webhook was settled on our side, the message is asked for
    recorded = {"RecordingUrl": "https://api.twilio.com/rec/RE1", "RecordingDuration": "3"}
    _, doc = await post(client, record_action(doc), twilio_call | recorded)
    assert "<Sip>" in doc and "<Number>" not in doc  # the agent, never the refused number

    async def all_three():
        rows = await db.fetch("SELECT * FROM ivr_sessions")
        return rows if len(rows) == 3 else None

    rows = {r["transport"]: r for r in await eventually(all_three, timeout=15)}
    expected = shape(simulated["transcript"])
    kinds = {e[2] for e in expected if e[0] == "node"}
    assert kinds == {
        "say", "gather", "set", "condition", "play", "webhook", "record", "transfer", "agent"
    }  # fmt: skip
    assert ("input", "menu", "9", "invalid", "sorry") in expected
    assert ("webhook", "answered", ["account"], "vm") in expected
    assert ("transfer", "refused", "bot") in expected and expected[-1] == ("end", "agent")
    for transport in ("simulate", "asterisk", "twilio"):
        row = rows[transport]
        assert shape(row["transcript"]) == expected, transport
        variables = {k: v for k, v in row["variables"].items() if k != "recording_url"}
        assert variables == {"choice": "1", "tier": "gold", "account": "4711"}, transport
        assert len(row["recordings"]) == 1 and row["variables"]["recording_url"], transport
        # the refused transfer is a rejected call, on every transport
        await assert_refused_by_dnc(db, row["transcript"], DNC, "bot")
    assert len(hooks) == 3 and {h["node"] for h in hooks} == {"hook"}
    dials = [c for c in phone.commands if c.startswith("EXEC Dial")]
    assert len(dials) == 1 and "agents.sandbox.invalid" in dials[0]  # the agent only
    assert any(c.startswith("RECORD FILE") for c in phone.commands)


def record_action(doc: str) -> str:
    from xml.etree import ElementTree

    record = ElementTree.fromstring(doc).find("Record")
    assert record is not None, doc
    return record.attrib["action"].removeprefix(PUBLIC)
