"""The campaign resource: create, read, list, lifecycle, prospects, tenancy, idempotency."""

from __future__ import annotations

import uuid

from tests.helpers import auth


async def events_of(db, campaign_id: str) -> list[str]:
    rows = await db.fetch("SELECT type FROM events WHERE subject = $1 ORDER BY id", campaign_id)
    return [r["type"] for r in rows]


async def test_create_get_list_and_validation(campaigns, make_key, client):
    # The caller id fallback must be one of the tenant's numbers, in E.164: refused at once.
    bad = await campaigns.create(expect=422, caller_id={"fallback": "+14155550100"})
    assert bad["code"] == "unknown_caller_id" and "+14155550100" in bad["detail"]
    bad = await campaigns.create(expect=422, caller_id={"local_presence": True, "fallback": "42"})
    assert bad["code"] == "invalid_phone_number" and "fallback" in str(bad)
    await campaigns.db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities) "
        "SELECT '+14155550100', id, 'sandbox', '{voice}' FROM tenants WHERE name = 'acme'"
    )
    c = await campaigns.create(
        name="spring-renewals",
        caller_id={"fallback": "+14155550100"},
        amd=True,
        on_machine="retry",
        pacing={"max_concurrent": 5, "cps": 2},
        retry={"busy": {"after": "10m"}, "machine": {"after": "1d"}, "max_attempts": 3},
        window={"days": "mon-fri", "start": "10:00", "end": "19:00"},
    )
    assert c["status"] == "draft"
    assert c["config"]["window"]["days"] == [1, 2, 3, 4, 5]
    assert c["config"]["retry"]["busy"] == {"after": "10m"}
    got = await campaigns.get(c["id"])
    assert got["prospects"] == {"total": 0} and got["name"] == "spring-renewals"

    # Refused at the edge: campaigns ring at least 15 s; predictive needs an abandon message
    # (16 CFR 310.4(b)(4)) and a target; a voicemail drop needs AMD and a message.
    bad = await campaigns.create(expect=422, ring_timeout=10)
    assert bad["code"] == "validation_error"
    agent = {"agent": {"system_prompt": "You renew policies."}}
    bad = await campaigns.create(expect=422, pacing={"mode": "predictive"}, on_answer=agent)
    assert bad["code"] == "validation_error" and "abandon_message" in bad["detail"]
    bad = await campaigns.create(expect=422, on_machine="voicemail_drop", amd=True)
    assert bad["code"] == "validation_error" and "voicemail" in bad["detail"]
    bad = await campaigns.create(expect=422, pacing={"max_abandon_rate": 0.05})
    assert bad["code"] == "validation_error"
    bad = await campaigns.create(expect=422, channel="sms")  # neither body nor template
    assert bad["code"] == "validation_error"

    second = await campaigns.create(name="second")
    page = await campaigns.request("GET", "/v1/campaigns?limit=1", 200)
    assert [x["id"] for x in page["data"]] == [second["id"]] and page["next_cursor"]
    page = await campaigns.request(
        "GET", f"/v1/campaigns?limit=1&cursor={page['next_cursor']}", 200
    )
    assert [x["id"] for x in page["data"]] == [c["id"]] and page["next_cursor"] is None

    # Another tenant sees none of it.
    other = await make_key("globex")
    resp = await client.get(f"/v1/campaigns/{c['id']}", headers=auth(other))
    assert resp.status == 404 and (await resp.json())["code"] == "campaign_not_found"
    resp = await client.get("/v1/campaigns", headers=auth(other))
    assert (await resp.json())["data"] == []
    resp = await client.post(f"/v1/campaigns/{c['id']}/start", headers=auth(other))
    assert resp.status == 404
    resp = await client.post(
        f"/v1/campaigns/{c['id']}/prospects",
        json={"prospects": [{"number": "+14155550123"}]},
        headers=auth(other),
    )
    assert resp.status == 404
    # Scopes: a key with messages scopes only may not touch campaigns.
    narrow = await make_key("acme", ["messages:write"])
    resp = await client.post("/v1/campaigns", json={"name": "x"}, headers=auth(narrow))
    assert resp.status == 403


async def test_idempotency_key_on_create_and_add(campaigns):
    key = {"Idempotency-Key": "create-1"}
    body = {"name": "idem", "channel": "voice"}
    first = await campaigns.request("POST", "/v1/campaigns", 201, body, key)
    again = await campaigns.request("POST", "/v1/campaigns", 201, body, key)
    assert again["id"] == first["id"]
    reused = await campaigns.request("POST", "/v1/campaigns", 422, body | {"name": "x"}, key)
    assert reused["code"] == "idempotency_key_reused"
    page = await campaigns.request("GET", "/v1/campaigns", 200)
    assert len(page["data"]) == 1

    add = {"prospects": [{"number": "+14155550123"}, {"number": "+14155550124"}]}
    path = f"/v1/campaigns/{first['id']}/prospects"
    one = await campaigns.request("POST", path, 200, add, {"Idempotency-Key": "add-1"})
    two = await campaigns.request("POST", path, 200, add, {"Idempotency-Key": "add-1"})
    assert one == two and one["added"] == 2  # replayed, not counted as duplicates
    three = await campaigns.request("POST", path, 200, add, {"Idempotency-Key": "add-2"})
    assert three["added"] == 0 and three["duplicates"] == 2


async def test_lifecycle_and_events(campaigns):
    c = await campaigns.create(window={"days": ["sat"], "start": "09:00", "end": "10:00"})
    cid = c["id"]
    await campaigns.add(cid, [{"number": "+14155550123"}, {"number": "+14155550124"}])
    assert (await campaigns.act(cid, "pause", 409))["code"] == "campaign_state_conflict"
    assert (await campaigns.act(cid, "resume", 409))["code"] == "campaign_state_conflict"
    assert (await campaigns.act(cid, "start"))["status"] == "running"
    assert (await campaigns.act(cid, "start"))["status"] == "running"  # already: no-op
    assert (await campaigns.act(cid, "pause"))["status"] == "paused"
    assert (await campaigns.act(cid, "resume"))["status"] == "running"
    cancel = await campaigns.act(cid, "cancel")
    # The window (Saturdays) is closed on the pinned Wednesday: nothing was dialled.
    assert cancel["status"] == "canceled" and cancel["prospects"] == {"total": 2, "canceled": 2}
    assert (await campaigns.act(cid, "resume", 409))["code"] == "campaign_state_conflict"
    assert (await campaigns.add(cid, [{"number": "+14155550125"}], 409))["code"] == (
        "campaign_state_conflict"
    )
    assert await events_of(campaigns.db, cid) == [
        "campaign.created",
        "campaign.prospects_added",
        "campaign.started",
        "campaign.paused",
        "campaign.resumed",
        "campaign.canceled",
    ]
    listed = await campaigns.request("GET", f"/v1/campaigns/{cid}/prospects?status=canceled", 200)
    assert [p["number"] for p in listed["data"]] == ["+14155550123", "+14155550124"]
    assert all(p["reason"] == "campaign_canceled" for p in listed["data"])


async def test_add_prospects_counts_rejects_and_suppression(campaigns):
    c = await campaigns.create()
    # On the tenant's DNC list and opted out before the import: stored suppressed.
    await campaigns.request(
        "POST", "/v1/dnc", 201, {"number": "+14155550131", "source": "internal"}
    )
    await campaigns.request(
        "POST", "/v1/dnc", 201, {"number": "+14155550132", "source": "consumer_opt_out"}
    )
    out = await campaigns.add(
        c["id"],
        [
            {"number": "(415) 555-0130", "variables": {"first_name": "Ana"}, "state": "CA"},
            {"number": "+14155550131"},
            {"number": "4155550132"},
            {"number": "not a number"},
            {"number": "+1 415 555 0130"},  # a duplicate in another form
            {"number": "+1999555012"},  # too short
            {"number": "+14155550133", "state": "California"},  # bad state
        ],
    )
    assert out == out | {
        "received": 7,
        "added": 1,
        "duplicates": 1,
        "suppressed": 2,
        "rejected": 3,
    }
    assert [(r["index"], r["value"]) for r in out["rejects"]] == [
        (3, "not a number"),
        (5, "+1999555012"),
        (6, "California"),
    ]
    page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects", 200)
    got = {p["number"]: (p["status"], p["reason"]) for p in page["data"]}
    assert got == {
        "+14155550130": ("pending", None),
        "+14155550131": ("suppressed", "dnc_listed"),
        "+14155550132": ("suppressed", "opted_out"),
    }
    assert page["data"][0]["variables"] == {"first_name": "Ana"}
    counts = (await campaigns.get(c["id"]))["prospects"]
    assert counts == {"total": 3, "pending": 1, "suppressed": 2}
    assert (await campaigns.get(str(uuid.uuid4()), 404))["code"] == "campaign_not_found"
