"""The daemon itself (all roles) answering an inbound Asterisk call with the flow bound to the
number called: PUT /v1/dids/{number} {"ivr_flow"}, then AsyncAGI on the test AMI server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.resources import RESOURCES
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim
from tests.helpers import eventually
from tests.ivr.conftest import entered
from tests.ivr.test_asyncagi import PHONE


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
def settings(database_url, redis_url, ami):
    from tests.calls.conftest import call_settings

    return call_settings(database_url, redis_url, ami_port=ami.port)


async def test_an_inbound_call_to_a_bound_did_runs_its_flow(ivr, client, ami):
    agi = AsyncAgiSim(ami)
    db = client.app[RESOURCES].db
    await ivr.upload(PHONE)
    missing = await ivr.request("PUT", "/v1/dids/+14155550100", 404, {"ivr_flow": "phone"})
    assert missing["code"] == "did_not_found"
    await db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities)"
        " SELECT '+14155550100', tenant_id, 'asterisk:main', '{voice}' FROM ivr_flows LIMIT 1"
    )
    nope = await ivr.request("PUT", "/v1/dids/+14155550100", 404, {"ivr_flow": "nope"})
    assert nope["code"] == "ivr_flow_not_found"
    bound = await ivr.request("PUT", "/v1/dids/(415) 555-0100", 200, {"ivr_flow": "phone"})
    assert bound == {"number": "+14155550100", "ivr_flow": "phone"}

    # the sandbox: a simulated inbound call to the DID takes the same route
    simulated = await ivr.request(
        "POST",
        "/v1/ivr/simulate",
        200,
        {"from": "+14155550123", "to": "+14155550100", "inputs": ["1"]},
    )
    assert entered(simulated["transcript"]) == ["greet", "menu", "thanks"]
    unbound = await ivr.request(
        "POST", "/v1/ivr/simulate", 404, {"from": "+14155550123", "to": "+14155550199"}
    )
    assert unbound["code"] == "did_not_found"

    async def logged_in() -> bool:
        return ami.logins >= 1

    await eventually(logged_in, timeout=10)
    call = agi.inbound_call("14155550100", "15550001111", keys=["1"])

    async def ended():
        return await db.fetchrow(
            "SELECT * FROM ivr_sessions WHERE transport = 'asterisk' ORDER BY ended_at LIMIT 1"
        )

    row = await eventually(ended, timeout=10)
    assert row["transport"] == "asterisk" and row["called"] == "14155550100"
    assert entered(row["transcript"]) == ["greet", "menu", "thanks"]

    async def hung_up_by_flow() -> bool:  # sent after the summary commits
        return call.commands[-1:] == ["HANGUP"]

    await eventually(hung_up_by_flow, timeout=5)

    # an agent node: a new agent session, dialled by its SIP URI, then the call is over
    agent_flow = PHONE | {
        "nodes": PHONE["nodes"]
        | {
            "menu": PHONE["nodes"]["menu"] | {"on": {"1": "thanks", "2": "bot"}},
            "bot": {"agent": {"system_prompt": "You help Acme customers."}},
        }
    }
    await ivr.upload(agent_flow)
    bot_call = agi.inbound_call("14155550100", "15550001111", keys=["2"])

    async def bridged() -> bool:
        return bot_call.commands[-1:] == ["HANGUP"]

    await eventually(bridged, timeout=5)
    dial = bot_call.commands[-2]
    assert dial.startswith('EXEC Dial "PJSIP/agent-') and dial.endswith('@agents.sandbox.invalid"')
    reasons = await db.fetch("SELECT end_reason FROM ivr_sessions WHERE transport = 'asterisk'")
    assert sorted(r["end_reason"] for r in reasons) == ["agent", "hangup"]

    # a number bound to no flow is hung up at once
    other = agi.inbound_call("14155550199", "15550001111", keys=["1"])

    async def hung_up() -> bool:
        return other.commands == ["HANGUP"]

    await eventually(hung_up, timeout=5)
