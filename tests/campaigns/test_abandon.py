"""Abandonment (16 CFR 310.4(b)(4)) under predictive pacing: every 70th agent leg connects
after 3 s, so its call — answered by a person — is not connected within 2 s: the abandon
message is played in time, the prospect ends `abandoned` (not re-dialled), the rolling rate
stays within the cap and the pacer's dial ratio goes down after an abandon (campaign.progress)."""

from __future__ import annotations

import pytest

from campaigns import pacing
from sip import calls as sip_calls
from tests.campaigns.test_dialer import list_numbers

MESSAGE = "This is Acme Insurance, 1-800-555-0100. To opt out, press 9."


@pytest.fixture
def overrides():
    return {
        "providers": {"sandbox": {"agent_connect_delay": 3.0, "agent_slow_every": 70}},
        "calls": {"sandbox_call_duration": 2.2},
    }


async def test_abandoned_calls_get_the_message_and_the_ratio_goes_down(campaigns, client):
    from gateway.pipeline.calls import VOICE

    numbers = list_numbers(150)
    c = await campaigns.create(
        name="predictive",
        on_answer={"agent": {"system_prompt": "You renew policies."}},
        abandon_message={"say": MESSAGE},
        pacing={
            "mode": "predictive",
            "max_concurrent": 30,
            "max_agent_sessions": 20,
            "cps": 100,
            "max_abandon_rate": 0.03,
        },
        retry={"max_attempts": 1},
    )
    await campaigns.add(c["id"], [{"number": x} for x in numbers])
    await campaigns.act(c["id"], "start")
    final = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=90)

    abandoned = await campaigns.db.fetch(
        """
        SELECT c.id, c.error_code, c.answered_at, c.bridged_at, c.to_number, p.status,
               p.attempts, e.data
          FROM calls c JOIN campaign_prospects p ON p.number = c.to_number
          JOIN events e ON e.subject = c.id::text AND e.type = 'call.abandon_message'
        """
    )
    assert abandoned, "no call was abandoned"
    voice = client.app[VOICE].registry.voice("sandbox")
    for a in abandoned:
        assert a["error_code"] == "abandoned" and a["status"] == "abandoned"
        assert a["attempts"] == 1  # never re-dialled as if unanswered
        assert a["data"]["played"] and a["data"]["say"] == MESSAGE
        assert a["data"]["after_answer_ms"] <= 2000, a["data"]
        said = await voice.said(sip_calls.attempt_key(a["id"], 1))
        assert [text for _, text in said] == [MESSAGE]
        assert said[0][0] - a["answered_at"].timestamp() <= 2.0
    stats = final["stats"]
    assert final["prospects"].get("abandoned") == len(abandoned)
    assert stats["abandoned"] == len(abandoned)
    assert stats["abandon_rate_30d"] <= 0.03
    # The ratio rose above 1:1 with answers, and where calls had been abandoned it was below
    # what the same answers would have given without them. (Read from each progress event's
    # own inputs, not from consecutive events: how many answers and abandons fall between two
    # of them depends on the machine's speed, and answers raise the ratio as abandons lower it.)
    progress = await campaigns.db.fetch(
        "SELECT data FROM events WHERE subject = $1 AND type = 'campaign.progress' ORDER BY id",
        c["id"],
    )
    ratios = [p["data"]["dial_ratio"] for p in progress]
    assert max(ratios) > 1.0, ratios
    lowered = []
    for p in progress:
        d = p["data"]
        unabandoned = pacing.Stats(d["recent_dials"], d["recent_answered"], d["answered_30d"], 0)
        without = pacing.dial_ratio(unabandoned, 0.03, 3.0)
        if d["abandoned_30d"] and without > 1.0:
            assert d["dial_ratio"] < without, d
            lowered.append(d)
    assert lowered, "no progress event after an abandon while the ratio was above 1:1"
    assert all((p["data"]["abandon_rate_30d"] or 0) <= 0.03 for p in progress), [
        p["data"] for p in progress
    ]


async def test_voicemail_drop_leaves_the_message_after_the_greeting(campaigns, client):
    from gateway.pipeline.calls import VOICE

    numbers = list_numbers(400)
    machine = next(x for x in numbers if 80 <= int(x[-2:]) <= 91)
    person = next(x for x in numbers if int(x[-2:]) <= 54)
    c = await campaigns.create(
        amd=True,
        on_machine="voicemail_drop",
        voicemail={"say": "Hi {{first_name}}, this is Acme about your renewal."},
        retry={"machine": {"after": "1s"}, "max_attempts": 2},
    )
    await campaigns.add(
        c["id"],
        [{"number": machine, "variables": {"first_name": "Ana"}}, {"number": person}],
    )
    await campaigns.act(c["id"], "start")
    await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)
    page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects", 200)
    got = {p["number"]: (p["status"], p["reason"], p["attempts"]) for p in page["data"]}
    assert got == {machine: ("done", "voicemail_dropped", 1), person: ("done", "answered", 1)}
    call = await campaigns.db.fetchrow("SELECT * FROM calls WHERE to_number = $1", machine)
    assert call["error_code"] == "voicemail_dropped" and call["agent"] is None
    voice = client.app[VOICE].registry.voice("sandbox")
    said = await voice.said(sip_calls.attempt_key(call["id"], 1))
    assert [text for _, text in said] == ["Hi Ana, this is Acme about your renewal."]
    drop = await campaigns.db.fetchval(
        "SELECT data FROM events WHERE subject = $1 AND type = 'call.voicemail_drop'",
        str(call["id"]),
    )
    assert drop["played"] is True
