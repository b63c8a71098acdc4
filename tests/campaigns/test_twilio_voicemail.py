"""A voicemail drop on Twilio, end to end: the real twilio SDK against the local fake Twilio.
The campaign's call asks MachineDetection=DetectMessageEnd, so Twilio's AMD verdict comes
once the greeting is over (AnsweredBy machine_end_beep, in a signed status callback); the
call's TwiML is then replaced by <Say> the message, then <Hangup/>, and Twilio ends the call.
A person (AnsweredBy human) is connected to the campaign's target instead."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import eventually

PUBLIC = "https://gw.example.com"
MACHINE = "+12125552081"
PERSON = "+12125552001"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
def overrides(fake: FakeTwilio):
    return {
        "http": {"public_base_url": PUBLIC},
        "providers": {
            "voice": {"primary": "twilio", "default_from": "+15005550006"},
            "twilio": {
                "enabled": True,
                "account_sid": fake.account_sid,
                "auth_token": fake.auth_token,
                "api_base_url": fake.base_url,
            },
        },
    }


async def test_voicemail_drop_after_the_beep_on_twilio(campaigns, client, fake):
    fake.route_callbacks(PUBLIC, str(client.make_url("")).rstrip("/"))
    fake.script(MACHINE, call_outcome="in-progress", answered_by="machine_end_beep")
    fake.script(PERSON, call_outcome="in-progress", answered_by="human")
    c = await campaigns.create(
        amd=True,
        on_machine="voicemail_drop",
        on_answer={"bridge_to": "sip:agent@ultravox"},
        voicemail={"say": "Hi {{first_name}}, this is Acme & co about your renewal."},
        retry={"max_attempts": 1},
        pacing={"max_concurrent": 2, "cps": 10},
    )
    await campaigns.add(
        c["id"],
        [{"number": MACHINE, "variables": {"first_name": "Ana"}}, {"number": PERSON}],
    )
    await campaigns.act(c["id"], "start")

    async def machine_done() -> bool:
        row = await campaigns.db.fetchrow(
            "SELECT status FROM campaign_prospects WHERE number = $1", MACHINE
        )
        return row["status"] == "done"

    await eventually(machine_done, timeout=20)
    creates = {r.form["To"]: r for r in fake.requests_to("/Calls.json")}
    assert creates[MACHINE].form["MachineDetection"] == "DetectMessageEnd"

    call = await campaigns.db.fetchrow("SELECT * FROM calls WHERE to_number = $1", MACHINE)
    assert (call["amd_result"], call["amd_detail"]) == ("machine", "machine_end_beep")
    assert call["status"] == "completed" and call["error_code"] == "voicemail_dropped"
    assert call["agent"] is None, "a machine is never connected to the target"
    sid = call["provider_call_id"]
    [update] = [r for r in fake.requests_to(f"/Calls/{sid}.json") if r.method == "POST"]
    assert update.form["Twiml"] == (
        "<Response><Say>Hi Ana, this is Acme &amp; co about your renewal.</Say><Hangup/></Response>"
    )
    # The verdict came in a signed callback the gateway accepted (the webhook checks the
    # X-Twilio-Signature), then Twilio's own end of the call after the <Hangup/>.
    mine = [cb for cb in fake.callbacks if cb.params.get("CallSid") == sid]
    assert [cb.params.get("AnsweredBy") for cb in mine if cb.params["CallStatus"] == "in-progress"]
    assert all(cb.status == 200 and "X-Twilio-Signature" in cb.headers for cb in mine)
    assert mine[-1].params["CallStatus"] == "completed"
    page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects", 200)
    got = {p["number"]: (p["status"], p["reason"]) for p in page["data"]}
    assert got[MACHINE] == ("done", "voicemail_dropped")

    async def person_connected():
        return await campaigns.db.fetchrow(
            "SELECT * FROM calls WHERE to_number = $1 AND agent IS NOT NULL", PERSON
        )

    person = await eventually(person_connected, timeout=20)
    assert person["amd_result"] == "human"
    [create] = [r for r in fake.requests_to("/Calls.json") if r.form["To"] == PERSON]
    assert create.form["MachineDetection"] == "DetectMessageEnd"

    async def dialled():
        return [
            r
            for r in fake.requests_to(f"/Calls/{person['provider_call_id']}.json")
            if r.method == "POST" and "Twiml" in r.form
        ]

    [dial] = await eventually(dialled, timeout=10)
    assert "<Dial><Sip>sip:agent@ultravox</Sip></Dial>" in dial.form["Twiml"]
