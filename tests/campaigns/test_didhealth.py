"""DID health: each call's end is a did_health_events row (committed with the end); a DID whose
answer rate over enough calls is too low rests for its cool-off (did.rested), is not chosen by
local presence meanwhile, and comes back after it (did.restored) — on the database's clock,
moved forward by `at`, no sleeping."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest

from tests.campaigns.test_callerid import _dids
from tests.campaigns.test_dialer import list_numbers

DID, FALLBACK, SPAMMY = "+14155550111", "+18005550100", "+12125550119"


@pytest.fixture
def overrides():
    return {
        "campaigns": {
            "did_health": {
                "min_calls": 6,
                "min_answer_rate": 0.5,
                "cool_off": 600.0,
                "lookup": "sandbox",  # flags numbers ending in 9 (spam) and 8 (scam)
            },
        }
    }


async def test_a_did_rests_after_no_answers_and_comes_back(campaigns, client):
    from gateway.campaigns.tasks import DIALER

    dialer = client.app[DIALER]
    dialer.health_every, dialer._health_at = 3600.0, time.monotonic()  # reviewed by the test
    await _dids(campaigns.db, "acme", DID, FALLBACK, SPAMMY)
    numbers = list_numbers(400)
    rings_out = [x for x in numbers if x[2:5] == "415" and 55 <= int(x[-2:]) <= 69][:6]
    answers = [x for x in numbers if x[2:5] == "415" and int(x[-2:]) <= 54][:2]
    assert len(rings_out) == 6 and len(answers) == 2
    c = await campaigns.create(
        caller_id={"local_presence": True, "fallback": FALLBACK},
        pacing={"max_concurrent": 8, "cps": 50},
        retry={"max_attempts": 1},
    )
    await campaigns.add(c["id"], [{"number": x} for x in rings_out + answers])
    await campaigns.act(c["id"], "start")
    await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)

    outcomes = await campaigns.db.fetch(
        "SELECT e.outcome, c.to_number FROM did_health_events e JOIN calls c ON c.id = e.call_id "
        "WHERE e.did = $1",
        DID,
    )
    got = sorted(r["outcome"] for r in outcomes)
    assert got in (["answered"] * 2 + ["no_answer"] * 6, ["no_answer"] * 6 + ["short_call"] * 2)
    dids = await campaigns.request("GET", "/v1/dids", 200)
    health = {d["number"]: d["health"] for d in dids["data"]}
    assert health[DID]["calls"] == 8 and health[DID]["answer_rate"] == 0.25
    assert health[DID]["status"] == "ok"

    # 2 of 8 answered (25 % < 50 %) over 8 ≥ 6 calls: rested. The lookup flags SPAMMY: rested.
    assert await dialer.review_dids() == (sorted([DID, SPAMMY]), [])
    assert await dialer.review_dids() == ([], [])  # once
    health = {
        d["number"]: d["health"] for d in (await campaigns.request("GET", "/v1/dids", 200))["data"]
    }
    assert health[DID]["status"] == "rested" and health[DID]["rested_until"]
    assert health[FALLBACK]["calls"] == 0 and health[FALLBACK]["status"] == "ok"
    assert health[FALLBACK]["reputation"]["flags"] == []
    assert health[SPAMMY]["status"] == "rested"
    assert health[SPAMMY]["rest_reason"] == "flagged:spam_likely"
    assert health[SPAMMY]["reputation"]["flags"] == ["spam_likely"]
    tenant_id = await campaigns.db.fetchval("SELECT tenant_id FROM dids WHERE number = $1", DID)
    cid = uuid.UUID(c["id"])
    assert (await dialer.caller_ids.choose(cid, tenant_id, FALLBACK, answers[0], None, 0))[0] == (
        FALLBACK
    )

    # Not yet: a minute before the cool-off ends. Then after it: restored, chosen again, and
    # not rested again for the calls it had before (counted since the restore).
    now = await campaigns.db.fetchval("SELECT now()")
    assert await dialer.review_dids(at=now + timedelta(seconds=540)) == ([], [])
    assert await dialer.review_dids(at=now + timedelta(seconds=601)) == ([], sorted([DID, SPAMMY]))
    assert await dialer.review_dids(at=now + timedelta(seconds=602)) == ([], [])
    assert (await dialer.caller_ids.choose(cid, tenant_id, FALLBACK, answers[0], None, 0))[0] == DID
    events = await campaigns.db.fetch(
        "SELECT type, data FROM events WHERE subject = $1 AND type LIKE 'did.%' ORDER BY id",
        DID,
    )
    assert [e["type"] for e in events] == ["did.rested", "did.restored"]
    assert events[0]["data"]["calls"] == 8 and events[0]["data"]["answer_rate"] == 0.25
