"""A campaign's abandon message and voicemail drop on Asterisk (the test AMI server): the
answered call waits in AGI(agi:async), and the message goes as AGI commands on the AMI
connection — the text spoken by the TTS application, then HANGUP (05a, 05g); a voicemail drop
waits for the silence after the beep (AMD() said MACHINE mid-greeting, 09b) before speaking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sip import calls as sip_calls
from tests.amisim import AMISimServer, NoAnswer
from tests.amisim.asyncagi import AgiCall, Amd, AsyncAgiSim
from tests.helpers import eventually

MESSAGE = "This is Acme Insurance, 1-800-555-0100. To opt out, press 9."
PERSON = "+12125552001"
MACHINE = "+12125552002"


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
def agi(ami: AMISimServer) -> AsyncAgiSim:
    """The dialplan the README gives: answered calls wait in AGI(agi:async), AMD() first in
    trunkline-amd."""
    return AsyncAgiSim(ami, outbound={"trunkline-outbound": False, "trunkline-amd": True})


@pytest.fixture
def overrides(ami: AMISimServer, agi: AsyncAgiSim):
    return {
        "asterisk": {
            "main": {
                "host": "127.0.0.1",
                "port": ami.port,
                "username": "gateway",
                "secret": "secret",
                "action_timeout": 1.0,
                "connect_timeout": 1.0,
                "reconnect_backoff_initial": 0.01,
                "reconnect_backoff_max": 0.05,
                "tts_app": "Flite",
            }
        },
        "providers": {"voice": {"primary": "asterisk:main"}},
    }


async def test_abandoned_call_hears_the_message_within_two_seconds(campaigns, ami, agi):
    # The agent's SIP leg rings and never answers: the person is not connected in time.
    ami.outcomes["agent"] = NoAnswer(ring_for=30)
    c = await campaigns.create(
        on_answer={"bridge_to": "sip:agent@ultravox"},
        abandon_message={"say": MESSAGE},
        retry={"max_attempts": 1},
    )
    await campaigns.add(c["id"], [{"number": PERSON}])
    await campaigns.act(c["id"], "start")
    key = (await ami.wait_for_action("Originate", timeout=10)).get("ChannelId")
    call_id = sip_calls.parse(key).call_id

    async def told_to_hang_up() -> AgiCall | None:
        call = agi.call_of(key)
        return call if call is not None and call.commands[-1:] == ["HANGUP"] else None

    call = await eventually(told_to_hang_up, timeout=15)
    assert call.commands == [f'EXEC Flite "{MESSAGE}"', "HANGUP"]
    (spoken_at, first), *_ = call.started
    assert first.startswith("EXEC Flite")
    assert call.channel.answered is not None
    assert spoken_at - call.channel.answered <= 2.0, "the message began > 2 s after the answer"
    said = [a for a in ami.actions("AGI") if a.get("Command", "").startswith("EXEC")]
    assert [a.get("Channel") for a in said] == [key]  # addressed by our Uniqueid

    final = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=20)
    assert final["prospects"].get("abandoned") == 1
    event = await campaigns.db.fetchval(
        "SELECT data FROM events WHERE type = 'call.abandon_message' AND subject = $1",
        str(call_id),
    )
    assert event["played"] is True and "not_played" not in event
    assert event["after_answer_ms"] <= 2000
    row = await campaigns.db.fetchrow("SELECT status, error_code FROM calls WHERE id = $1", call_id)
    assert (row["status"], row["error_code"]) == ("completed", "abandoned")


async def test_voicemail_drop_waits_for_the_beep_then_speaks(campaigns, ami, agi):
    agi.amd[MACHINE] = Amd("MACHINE", "LONGGREETING-1500-1500", after=0.2)
    c = await campaigns.create(
        amd=True,
        on_machine="voicemail_drop",
        voicemail={"say": "Hi {{first_name}}, this is Acme about your renewal."},
        retry={"max_attempts": 1},
    )
    await campaigns.add(c["id"], [{"number": MACHINE, "variables": {"first_name": "Ana"}}])
    await campaigns.act(c["id"], "start")
    final = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=20)
    page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects", 200)
    [p] = page["data"]
    assert (p["status"], p["reason"], p["attempts"]) == ("done", "voicemail_dropped", 1)
    assert final["prospects"].get("done") == 1
    [originate] = ami.actions("Originate")
    assert originate.get("Context") == "trunkline-amd"
    call = agi.call_of(originate.get("ChannelId"))
    assert call is not None
    assert call.commands == [
        'EXEC WaitForSilence "1500,1,20"',
        'EXEC Flite "Hi Ana, this is Acme about your renewal."',
        "HANGUP",
    ]
    drop = await campaigns.db.fetchval("SELECT data FROM events WHERE type = 'call.voicemail_drop'")
    assert drop["played"] is True
    row = await campaigns.db.fetchrow("SELECT status, error_code, amd_result FROM calls")
    assert tuple(row) == ("completed", "voicemail_dropped", "machine")
