"""Guardrails as API clients meet them: problem+json denials, 201 deferrals, the DNC and limits routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.app import create_app
from gateway.pipeline.wiring import CHAIN, PROVIDERS
from tests.guardrails.conftest import OPT_OUT_LINE, dispatch_ready, merged
from tests.helpers import auth

OPEN = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # Tuesday: noon in New York
EARLY = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 07:00 in New York


@pytest.fixture
async def api(aiohttp_client, settings, make_key):
    """An API-only app (no workers: queued messages stay queued) with a fixed guardrail clock."""
    cfg = merged(
        settings,
        guardrails={
            "policy": {"exempt_transactional_from_calling_hours": False},
            "tenants": {"lenient": {"exempt_transactional_from_calling_hours": True}},
        },
    )
    app = create_app(cfg, role="api")
    client = await aiohttp_client(app)
    app[CHAIN].clock = lambda: OPEN
    client.tokens = {"acme": await make_key("acme"), "lenient": await make_key("lenient")}
    yield client
    await client.close()


async def send(client, tenant="acme", **body):
    resp = await client.post("/v1/messages", json=body, headers=auth(client.tokens[tenant]))
    return resp, await resp.json()


# clock, tenant, body -> expected (HTTP status, status or code, send_at)
CASES = [
    (OPEN, "acme", {"to": "+12125550101"}, (201, "queued", None)),
    (EARLY, "acme", {"to": "+12125550102"}, (201, "scheduled", "2026-11-24T13:00:00Z")),
    (EARLY, "acme", {"to": "+12125550103", "when_closed": "deny"}, (422, "outside_calling_hours", None)),
    (EARLY, "acme", {"to": "+12125550104", "purpose": "transactional"}, (201, "scheduled", "2026-11-24T13:00:00Z")),
    (EARLY, "lenient", {"to": "+12125550105", "purpose": "transactional"}, (201, "queued", None)),
    (EARLY, "lenient", {"to": "+12125550106", "when_closed": "deny"}, (422, "outside_calling_hours", None)),
    # Florida's 8 p.m. close: 20:30 in Miami is deferred to 08:00 the next day
    (datetime(2026, 11, 25, 1, 30, tzinfo=UTC), "acme", {"to": "+13055550107"}, (201, "scheduled", "2026-11-25T13:00:00Z")),
    # Alabama: no solicitation on Sundays
    (datetime(2026, 11, 29, 18, 0, tzinfo=UTC), "acme", {"to": "+12055550108"}, (201, "scheduled", "2026-11-30T14:00:00Z")),
]  # fmt: skip


async def test_calling_hours_through_the_api_at_fixed_clock_times(api, pg_pool):
    for clock, tenant, body, (http, what, send_at) in CASES:
        api.app[CHAIN].clock = lambda clock=clock: clock
        resp, out = await send(api, tenant, body=f"Fall sale! {OPT_OUT_LINE}", **body)
        assert resp.status == http, (body, out)
        if http == 201:
            assert out["status"] == what and out["send_at"] == send_at, (body, out)
        else:
            assert resp.content_type == "application/problem+json"
            assert out["code"] == what and out["message_id"] and out["rule"], out
    # a deferred message's dispatch job waits for its time: the hour the chain's clock (07:00)
    # leaves until the opening (08:00), counted on the database's clock, which runs the queue
    wait = await pg_pool.fetchval(
        "SELECT j.run_at - now() FROM jobs j JOIN messages m ON j.payload->>'message_id' = "
        "m.id::text WHERE m.to_number = '+12125550102'"
    )
    assert timedelta(minutes=59) < wait <= timedelta(hours=1)


async def test_every_denial_is_problem_json_with_its_stable_code(api, pg_pool):
    token = api.tokens["acme"]
    r = await api.post("/v1/dnc", json={"number": "+12125550111"}, headers=auth(token))
    assert r.status == 201
    await api.post(
        "/v1/dnc",
        json={"number": "+12125550112", "source": "consumer_opt_out"},
        headers=auth(token),
    )
    cases = [
        ({"to": "+12125550111", "body": f"Hi. {OPT_OUT_LINE}"}, 422, "dnc_listed"),
        (
            {"to": "+12125550112", "body": "Your code is 1", "purpose": "transactional"},
            422,
            "opted_out",
        ),
        ({"to": "+12125550113", "body": "Hi there"}, 422, "content_blocked"),
        (
            {"to": "+12125550114", "body": f"Cold beer tonight! {OPT_OUT_LINE}"},
            422,
            "content_blocked",
        ),
    ]
    for body, status, code in cases:
        resp, out = await send(api, **body)
        assert (resp.status, out["code"]) == (status, code), out
        assert resp.content_type == "application/problem+json"
        assert out["title"] == "Refused by a guardrail" and out["detail"]
        msg = await api.get(f"/v1/messages/{out['message_id']}", headers=auth(token))
        detail = await msg.json()
        assert detail["status"] == "rejected" and detail["error_code"] == code
        deny = [e for e in detail["timeline"] if e["type"] == "guardrail.deny"]
        assert deny and deny[0]["data"]["code"] == code and deny[0]["data"]["stage"] == "accept"
    # the national registry does not cover transactional messages
    await pg_pool.execute(
        "INSERT INTO dnc_entries (number, tenant_id, source) VALUES ('+12125550115', NULL, 'national_registry')"
    )
    resp, out = await send(api, to="+12125550115", body=f"Sale! {OPT_OUT_LINE}")
    assert out["code"] == "dnc_listed" and out["rule"] == "dnc.national_registry.global"
    resp, out = await send(
        api, to="+12125550115", body="Your order shipped", purpose="transactional"
    )
    assert resp.status == 201 and out["status"] == "queued"


async def test_rate_limited_and_frequency_cap_are_429_with_retry_after(
    aiohttp_client, settings, make_key
):
    cfg = merged(settings, guardrails={"rate_limits": {"destination": {"rate": 0.001, "burst": 3}}})
    app = create_app(cfg, role="api")
    client = await aiohttp_client(app)
    app[CHAIN].clock = lambda: OPEN
    token = await make_key("acme")
    body = {"to": "+12125550121", "body": f"Deal! {OPT_OUT_LINE}"}
    for _ in range(3):
        assert (await client.post("/v1/messages", json=body, headers=auth(token))).status == 201
    resp = await client.post("/v1/messages", json=body, headers=auth(token))
    out = await resp.json()
    assert (
        resp.status == 429
        and out["code"] == "rate_limited"
        and out["rule"] == "rate_limit.destination"
    )
    assert 900 <= int(resp.headers["Retry-After"]) <= 1000

    florida = {"to": "+13055550122", "body": f"Deal! {OPT_OUT_LINE}"}
    for _ in range(3):
        resp = await client.post("/v1/messages", json=florida, headers=auth(token))
        assert resp.status == 201, await resp.text()
    resp = await client.post("/v1/messages", json=florida, headers=auth(token))
    out = await resp.json()
    # Florida's cap (3 per 24 h) outranks the destination bucket, which is also empty
    assert resp.status == 429 and out["code"] == "frequency_cap", out
    assert out["rule"] == "frequency_cap.fl.501.616.6"
    assert 86000 <= int(resp.headers["Retry-After"]) <= 86400
    await client.close()


async def test_dnc_added_after_queueing_stops_the_send_at_dispatch(api, pg_pool):
    token = api.tokens["acme"]
    resp, msg = await send(api, to="+12125550131", body=f"Weekend offer. {OPT_OUT_LINE}")
    assert resp.status == 201 and msg["status"] == "queued"
    # while it waits in the queue, the number goes on the tenant's list
    r = await api.post(
        "/v1/dnc", json={"number": "+12125550131", "source": "internal"}, headers=auth(token)
    )
    assert r.status == 201
    assert await dispatch_ready(api.app) == 1
    detail = await (await api.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
    assert detail["status"] == "rejected" and detail["error_code"] == "dnc_listed"
    assert detail["attempts"] == []  # no provider was ever asked
    verdicts = [
        (e["type"], e["data"]["stage"])
        for e in detail["timeline"]
        if e["type"].startswith("guardrail.")
    ]
    assert verdicts == [("guardrail.allow", "accept"), ("guardrail.deny", "dispatch")]
    deny = next(e for e in detail["timeline"] if e["type"] == "guardrail.deny")
    assert deny["data"]["rule"] == "dnc.internal.tenant"
    assert deny["data"]["inputs"]["blocked_by"] == [
        {"source": "internal", "scope": "tenant", "expires_at": None}
    ]
    # a message that was not listed is sent by the same dispatcher
    resp, ok = await send(api, to="+12125550132", body="Your code is 1", purpose="transactional")
    assert await dispatch_ready(api.app) == 1
    sent = await (await api.get(f"/v1/messages/{ok['id']}", headers=auth(token))).json()
    assert [a["outcome"] for a in sent["attempts"]] == ["accepted"]
    sandbox = api.app[PROVIDERS].messaging("sandbox")
    attempt_key = await pg_pool.fetchval(
        "SELECT attempt_key FROM message_attempts WHERE message_id = $1::uuid", ok["id"]
    )
    assert await sandbox.sends_for(attempt_key) == 1


async def test_dnc_routes(api, make_key, pg_pool):
    token = api.tokens["acme"]
    number = "+12125550141"
    r = await api.get(f"/v1/dnc/{number}", headers=auth(token))
    assert r.status == 404 and (await r.json())["code"] == "dnc_entry_not_found"
    r = await api.post(
        "/v1/dnc",
        json={
            "number": "(212) 555-0141",
            "source": "litigator",
            "expires_at": "2030-01-01T00:00:00Z",
            "note": "served 2026-11-01",
        },
        headers=auth(token) | {"Idempotency-Key": "dnc-1"},
    )
    out = await r.json()
    assert r.status == 201 and out["number"] == number  # a new entry: created
    assert out["blocked"] == {"marketing": True, "transactional": True}
    [entry] = out["entries"]
    assert (entry["source"], entry["scope"], entry["note"]) == (
        "litigator",
        "tenant",
        "served 2026-11-01",
    )
    assert entry["expires_at"].startswith("2030-01-01")
    again = await api.post(
        "/v1/dnc",
        json={"number": "(212) 555-0141", "source": "litigator", "expires_at": "2030-01-01T00:00:00Z",
              "note": "served 2026-11-01"},
        headers=auth(token) | {"Idempotency-Key": "dnc-1"},
    )  # fmt: skip
    assert again.status == 201 and await again.json() == out  # the first answer, replayed
    # A global registry entry is visible to every tenant, and only marketing is blocked by it.
    await pg_pool.execute(
        "INSERT INTO dnc_entries (number, tenant_id, source) VALUES ($1, NULL, 'national_registry')",
        number,
    )
    got = await (await api.get(f"/v1/dnc/{number.replace('+', '%2B')}", headers=auth(token))).json()
    assert [(e["source"], e["scope"]) for e in got["entries"]] == [
        ("litigator", "tenant"),
        ("national_registry", "global"),
    ]
    r = await api.delete(f"/v1/dnc/{number}", params={"source": "litigator"}, headers=auth(token))
    left = await r.json()
    assert r.status == 200 and left["blocked"] == {"marketing": True, "transactional": False}
    # the global entry is the operator's: a tenant cannot remove it
    r = await api.delete(f"/v1/dnc/{number}", headers=auth(token))
    assert r.status == 404
    lenient = await api.get(f"/v1/dnc/{number}", headers=auth(api.tokens["lenient"]))
    assert [e["scope"] for e in (await lenient.json())["entries"]] == ["global"]
    # scope and validation
    reader = await make_key("acme", ["messages:write"])
    r = await api.get(f"/v1/dnc/{number}", headers=auth(reader))
    assert r.status == 403
    r = await api.post("/v1/dnc", json={"number": "12"}, headers=auth(token))
    assert r.status == 422 and (await r.json())["code"] == "invalid_phone_number"
    r = await api.get("/v1/dnc/not-a-number", headers=auth(token))
    assert r.status == 422 and (await r.json())["code"] == "invalid_phone_number"
    types = await pg_pool.fetch("SELECT type FROM events WHERE type LIKE 'dnc.%' ORDER BY id")
    assert [t["type"] for t in types] == ["dnc.added", "dnc.removed"]


async def test_limits_route_shows_the_configured_limits(api):
    out = await (await api.get("/v1/limits", headers=auth(api.tokens["acme"]))).json()
    assert out["checks"] == ["suppression", "content", "rate_limits", "calling_hours"]
    rows = {r["limit"]: r for r in out["rate_limits"]}
    assert (rows["tenant"]["rate"], rows["tenant"]["burst"], rows["tenant"]["remaining"]) == (
        50.0,
        100,
        100,
    )
    assert rows["sender"]["rate"] == 1.0 and rows["destination"]["burst"] == 5
    assert "provider_cps" in rows
    assert {c["rule"] for c in out["frequency_caps"]} >= {"fl.501.616.6", "md.cl.14-4501"}
    assert out["exempt_transactional_from_calling_hours"] is False
    lenient = await (await api.get("/v1/limits", headers=auth(api.tokens["lenient"]))).json()
    assert lenient["exempt_transactional_from_calling_hours"] is True
    # (what a send takes from the buckets is shown by test_ratelimit_concurrency, at a slow rate)
