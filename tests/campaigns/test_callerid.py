"""Local presence: a DID with the prospect's area code, else its state, else its time zone, else
the fallback — read once per campaign run, never a query per dial; a resting DID is passed over."""

from __future__ import annotations

from campaigns.callerid import LocalPresence, place_of
from guardrails.rules import load_rules
from tests.campaigns.test_dialer import list_numbers

SF, NYC, CHI = "+14155550111", "+12125550111", "+13125550111"
FALLBACK = "+18005550100"


def test_area_code_then_state_then_time_zone_then_fallback():
    rules = load_rules()
    lp = LocalPresence.build([SF, NYC, CHI], rules, FALLBACK)

    def pick(number: str, state: str | None = None) -> tuple[str | None, str]:
        return lp.choose(place_of(number, rules, state))

    assert pick("+14155552000") == (SF, "area_code")
    assert pick("+16505552000") == (SF, "state")  # 650: California, no 650 DID
    assert pick("+13035552000", "NY") == (NYC, "state")  # the address state comes first
    assert pick("+17135552000") == (CHI, "time_zone")  # Houston: Central, like Chicago
    assert pick("+12065552000") == (SF, "time_zone")  # Seattle: Pacific
    assert pick("+442071234567") == (FALLBACK, "fallback")
    # Two DIDs of one area code take turns by prospect.
    two = LocalPresence.build([SF, "+14155550112"], rules, None)
    place = place_of("+14155552000", rules)
    assert {two.choose(place, turn)[0] for turn in range(4)} == {SF, "+14155550112"}


async def _dids(db, tenant: str, *numbers: str) -> None:
    tenant_id = await db.fetchval("SELECT id FROM tenants WHERE name = $1", tenant)
    await db.executemany(
        "INSERT INTO dids (number, tenant_id, provider, capabilities) "
        "VALUES ($1, $2, 'sandbox', '{voice}')",
        [(n, tenant_id) for n in numbers],
    )


async def test_a_campaign_dials_from_local_dids(campaigns, client):
    from gateway.campaigns.tasks import DIALER

    await _dids(campaigns.db, "acme", SF, NYC, CHI, FALLBACK)  # a caller id is one's own
    await campaigns.db.execute(  # Chicago rests: local presence passes it over
        "INSERT INTO did_rests (did, tenant_id, reason, calls, until) "
        "SELECT $1, tenant_id, 'test', 0, now() + interval '1 hour' FROM dids WHERE number = $1",
        CHI,
    )
    dialer = client.app[DIALER]
    loads = dialer.caller_ids.loads
    answering = [x for x in list_numbers(400) if int(x[-2:]) <= 54]
    by_npa = {x[2:5]: x for x in answering}
    prospects = {
        by_npa["415"]: SF,  # area code
        by_npa["212"]: NYC,  # area code
        by_npa["312"]: FALLBACK,  # Chicago rests; nothing else in Illinois nor Central
        by_npa["713"]: FALLBACK,  # Houston: Central time, and Chicago rests
        by_npa["206"]: SF,  # Pacific time
    }
    c = await campaigns.create(
        caller_id={"local_presence": True, "fallback": FALLBACK},
        pacing={"max_concurrent": 5, "cps": 50},
    )
    await campaigns.add(c["id"], [{"number": x} for x in prospects])
    await campaigns.act(c["id"], "start")
    done = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)
    assert done["prospects"] == {"total": 5, "done": 5}
    rows = await campaigns.db.fetch("SELECT to_number, from_number FROM calls")
    got = {r["to_number"]: r["from_number"] for r in rows}
    assert got == prospects, got
    assert dialer.caller_ids.loads - loads == 1  # one read of the DIDs for five dials
