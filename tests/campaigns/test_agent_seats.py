"""max_agent_sessions is enforced when an answered call is connected, and the predictive pacer
dials beyond the free sessions only as far as the worst case allows: even if every dial in
flight were answered, the abandonment rate would stay within max_abandon_rate (16 CFR
310.4(b)(4)). Few sessions, many dials: without the worst-case cap the ratio's bet on the mean
answer rate abandons a burst of answers at once and crosses 3 %."""

from __future__ import annotations

import pytest

from campaigns.pacing import Stats, worst_case_extra
from tests.campaigns.test_dialer import list_numbers

SEATS = 10


@pytest.fixture
def overrides():
    return {"calls": {"sandbox_call_duration": 0.6}}


def test_worst_case_extra_dials_keep_the_cap():
    # No answers yet: with 6 free agents, one extra dial abandoned would be 1/7 > 3 %.
    assert worst_case_extra(Stats(0, 0, 0, 0), 6, 0.03) == 0
    # 200 answered, 2 abandoned, 6 free: (2 + E) / (206 + E) <= 0.03 → E <= 4.3
    assert worst_case_extra(Stats(0, 0, 200, 2), 6, 0.03) == 4
    for answered, abandoned, free in [(200, 2, 6), (1000, 29, 10), (50, 0, 3), (400, 3, 0)]:
        e = worst_case_extra(Stats(0, 0, answered, abandoned), free, 0.03)
        assert (abandoned + e) / (answered + free + e) <= 0.03  # the worst case holds
        assert (abandoned + e + 1) / (answered + free + e + 1) > 0.03  # and is not wasteful
    assert worst_case_extra(Stats(0, 0, 33, 1), 0, 0.03) == 0  # over the cap already: none
    assert worst_case_extra(Stats(0, 0, 1000, 0), 10, 0.0) == 0


async def test_agent_sessions_are_capped_and_the_rate_holds(campaigns):
    numbers = list_numbers(120)
    c = await campaigns.create(
        name="seats",
        on_answer={"agent": {"system_prompt": "You renew policies."}},
        abandon_message={"say": "This is Acme Insurance, 1-800-555-0100. To opt out, press 9."},
        pacing={
            "mode": "predictive",
            "max_concurrent": 30,
            "max_agent_sessions": SEATS,
            "cps": 100,
            "max_abandon_rate": 0.03,
        },
        retry={"max_attempts": 1},
    )
    await campaigns.add(c["id"], [{"number": x} for x in numbers])
    await campaigns.act(c["id"], "start")
    final = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=90)

    # Calls connected to an agent session at once: from its seat (agent set at connect) to the
    # call's end; the bridge lies inside. Never more than max_agent_sessions.
    spans = await campaigns.db.fetch(
        "SELECT bridged_at, ended_at FROM calls WHERE bridged_at IS NOT NULL ORDER BY bridged_at"
    )
    assert spans, "no call was connected"
    edges = sorted([(s["bridged_at"], 1) for s in spans] + [(s["ended_at"], -1) for s in spans])
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    assert peak <= SEATS, peak
    # The pacer did dial beyond the sessions (calls in flight above SEATS at some instant).
    flights = await campaigns.db.fetch("SELECT created_at, ended_at FROM calls")
    edges = sorted([(f["created_at"], 1) for f in flights] + [(f["ended_at"], -1) for f in flights])
    live = in_flight = 0
    for _, step in edges:
        live += step
        in_flight = max(in_flight, live)
    assert in_flight > SEATS, in_flight

    stats = final["stats"]
    assert stats["abandon_rate_30d"] is None or stats["abandon_rate_30d"] <= 0.03, stats
    progress = await campaigns.db.fetch(
        "SELECT data FROM events WHERE subject = $1 AND type = 'campaign.progress' ORDER BY id",
        c["id"],
    )
    assert all((p["data"]["abandon_rate_30d"] or 0) <= 0.03 for p in progress)
    # Every answered call still up when its 2 s ran out got a session or was abandoned with
    # the message: none is left in silence.
    answered = await campaigns.db.fetch(
        "SELECT id, bridged_at, error_code FROM calls WHERE answered_at IS NOT NULL "
        "AND ended_at > answered_at + interval '2 s'"
    )
    assert all(a["bridged_at"] is not None or a["error_code"] == "abandoned" for a in answered)
