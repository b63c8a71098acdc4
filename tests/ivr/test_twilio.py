"""The Twilio transport: signed voice webhooks in, TwiML out, the same flow step by step; a
transfer refused by the chain never becomes a <Dial>; a retried request replays its answer."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from gateway.resources import RESOURCES
from tests.ivr.conftest import (
    OPEN,
    assert_refused_by_dnc,
    assert_transferred,
    transfer_call,
)

PUBLIC = "https://gw.example.com"
TOKEN = "f" * 32
FLOW = {
    "name": "tw",
    "start": "greet",
    "fallback": "bye",
    "nodes": {
        "greet": {"say": "Thanks for calling.", "voice": "alice", "next": "menu"},
        "menu": {
            "gather": {"say": "Press 1 or 3.", "digits": 1, "timeout": 4, "retries": 0},
            "on": {"1": "dnc", "2": "bot", "3": "ok"},
            "no_input": "bye",
        },
        "dnc": {"transfer": {"to": "+12125550143"}},
        "ok": {"transfer": {"to": "+12125550199"}},
        "bot": {"agent": {"system_prompt": "You help callers."}},
        "bye": {"say": "Goodbye & thanks.", "then": "hangup"},
    },
}


@pytest.fixture
def settings(database_url, redis_url):
    from gateway.settings import load_settings

    return load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5, "public_base_url": PUBLIC},
        providers={
            "twilio": {
                "enabled": True,
                "account_sid": "AC" + "0" * 32,
                "auth_token": TOKEN,
                "api_base_url": "http://127.0.0.1:9",
                "timeout": 1,
            }
        },
        guardrails={
            "policy": {"exempt_transactional_from_calling_hours": True},
            "rate_limits": {"tenant": OPEN, "api_key": OPEN, "destination": OPEN, "sender": OPEN},
        },
    )


async def post(client, path: str, params: dict[str, str], *, forge: bool = False):
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)
    headers = {"X-Twilio-Signature": "x" + signature if forge else signature}
    resp = await client.post(
        path,
        data=urlencode(params),
        headers=headers | {"Content-Type": "application/x-www-form-urlencoded"},
    )
    return resp.status, await resp.text()


def verbs(doc: str) -> list[tuple[str, str, dict]]:
    root = ET.fromstring(doc)
    assert root.tag == "Response"
    return [(v.tag, "".join(v.itertext()), dict(v.attrib)) for v in root]


def action_of(doc: str) -> str:
    gather = ET.fromstring(doc).find("Gather")
    assert gather is not None, doc
    return gather.attrib["action"].removeprefix(PUBLIC)


@pytest.fixture
async def bound(ivr, client):
    await ivr.upload(FLOW)
    db = client.app[RESOURCES].db
    await db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities)"
        " SELECT '+14155550100', tenant_id, 'twilio', '{voice}' FROM ivr_flows LIMIT 1;"
        "INSERT INTO dnc_entries (number, tenant_id, source)"
        " SELECT '+12125550143', tenant_id, 'internal' FROM ivr_flows LIMIT 1"
    )
    await ivr.request("PUT", "/v1/dids/+14155550100", 200, {"ivr_flow": "tw"})
    return db


def call(sid: str) -> dict[str, str]:
    return {"CallSid": sid, "From": "+14155550123", "To": "+14155550100", "CallStatus": "ringing"}


async def test_twiml_step_by_step_and_a_refused_transfer_never_dials(client, bound):
    status, _ = await post(client, "/webhooks/twilio/ivr", call("CA1"), forge=True)
    assert status == 403
    status, doc = await post(client, "/webhooks/twilio/ivr", call("CA1"))
    assert status == 200
    got = verbs(doc)
    assert got[0] == ("Say", "Thanks for calling.", {"voice": "alice"})
    assert got[1][0] == "Gather" and got[1][1] == "Press 1 or 3."
    assert got[1][2]["numDigits"] == "1" and got[1][2]["timeout"] == "4"
    assert got[2][0] == "Redirect" and got[2][1] == got[1][2]["action"]
    action = action_of(doc)

    status, doc = await post(client, action, call("CA1") | {"Digits": "1"})
    assert verbs(doc) == [("Say", "Goodbye & thanks.", {}), ("Hangup", "", {})]  # no <Dial>
    again = await post(client, action, call("CA1") | {"Digits": "1"})  # Twilio retried
    assert again == (200, doc)
    wrong = await post(client, action, call("CA9") | {"Digits": "1"})  # not this call's session
    assert "<Hangup/>" in wrong[1]

    row = await bound.fetchrow("SELECT * FROM ivr_sessions")
    assert row["transport"] == "twilio" and row["end_reason"] == "hangup"
    await assert_refused_by_dnc(bound, row["transcript"], "+12125550143", "bye")
    kinds = [
        r["type"]
        for r in await bound.fetch(
            "SELECT type FROM events WHERE subject = $1 ORDER BY id", str(row["id"])
        )
    ]
    assert "ivr.transfer" in kinds


async def test_a_cleared_transfer_dials_and_silence_takes_no_input(client, bound):
    _, doc = await post(client, "/webhooks/twilio/ivr", call("CA2"))
    _, doc = await post(client, action_of(doc), call("CA2") | {"Digits": "3"})
    ((tag, text, attrs),) = verbs(doc)
    assert (tag, text) == ("Dial", "+12125550199")
    dial_action = attrs.pop("action").removeprefix(PUBLIC)
    assert attrs == {"timeout": "30", "callerId": "+14155550100", "method": "POST"}
    # a call through the pipeline, dialling while Twilio rings the number
    row = await bound.fetchrow("SELECT * FROM ivr_sessions WHERE end_reason = 'transferred'")
    call_row, _ = await transfer_call(bound, row["transcript"])
    assert call_row["status"] == "dialing" and call_row["provider"] == "twilio"
    # the <Dial action>: nobody answered; the record says so, and the status callback after it
    # changes nothing
    status, doc = await post(client, dial_action, call("CA2") | {"DialCallStatus": "no-answer"})
    assert status == 200 and verbs(doc) == [("Hangup", "", {})]
    await post(client, "/webhooks/twilio/ivr/status", call("CA2") | {"CallStatus": "completed"})
    await assert_transferred(bound, row["transcript"], "+12125550199", "no_answer")

    _, doc = await post(client, "/webhooks/twilio/ivr", call("CA6"))  # an agent node
    _, doc = await post(client, action_of(doc), call("CA6") | {"Digits": "2"})
    ((tag, text, _),) = verbs(doc)
    assert tag == "Dial" and text.startswith("sip:agent-") and "@agents.sandbox.invalid" in text

    _, doc = await post(client, "/webhooks/twilio/ivr", call("CA3"))
    _, doc = await post(client, action_of(doc), call("CA3"))  # the <Redirect>: no Digits
    assert verbs(doc) == [("Say", "Goodbye & thanks.", {}), ("Hangup", "", {})]


async def test_the_status_callback_ends_a_session_mid_gather(client, bound):
    _, doc = await post(client, "/webhooks/twilio/ivr", call("CA4"))
    session_id = action_of(doc).split("session=")[1].split("&")[0]
    status, _ = await post(
        client, "/webhooks/twilio/ivr/status", call("CA4") | {"CallStatus": "completed"}
    )
    assert status == 200
    row = await bound.fetchrow(
        "SELECT end_reason, last_node FROM ivr_sessions WHERE id = $1", uuid.UUID(session_id)
    )
    assert dict(row) == {"end_reason": "caller_hangup", "last_node": "menu"}
    # a number bound to no flow hangs up
    _, doc = await post(client, "/webhooks/twilio/ivr", call("CA5") | {"To": "+14155550199"})
    assert verbs(doc) == [("Hangup", "", {})]
