"""Tenant A's key can read nothing of tenant B, on every /v1 route there is.

When a feature adds a /v1 route, this test fails until the route is covered:
add how tenant B comes to own that kind of resource (`seed_tenant_b`) and,
for write routes, a valid body (`BODIES`).
"""

import re

import pytest

from gateway.app import ROUTE_TABLES
from tests.helpers import auth

# A valid JSON body per write route, so the request reaches the tenant checks.
BODIES: dict[tuple[str, str], dict] = {
    ("POST", "/v1/messages"): {"to": "+14155550100", "body": "hello", "purpose": "transactional"},
    ("POST", "/v1/templates"): {"name": "a-template", "body": "hi {{ name }}"},
    ("POST", "/v1/webhook-endpoints"): {"url": "https://93.184.215.14/a-hook"},
    ("POST", "/v1/dnc"): {"number": "+12125550188", "source": "internal"},
    ("POST", "/v1/calls"): {"to": "+14155550100", "purpose": "transactional"},
    ("POST", "/v1/calls/{call_id}/bridge"): {"call_id": "00000000-0000-4000-8000-000000000000"},
    ("POST", "/v1/campaigns"): {"name": "a-campaign"},
    ("POST", "/v1/campaigns/{campaign_id}/prospects"): {"prospects": [{"number": "+14155550123"}]},
    ("POST", "/v1/ivr/flows"): {
        "name": "a-flow",
        "start": "hi",
        "nodes": {"hi": {"say": "Hello."}},
    },
    ("POST", "/v1/ivr/simulate"): {"flow": "b-secret-flow", "from": "+14155550123"},
    ("PUT", "/v1/dids/{number}"): {"ivr_flow": "b-secret-flow"},
    ("POST", "/v1/workflows"): {
        "name": "a-workflow",
        "steps": [{"wait": {"duration": "1h"}}],
    },
    ("PUT", "/v1/workflows/{workflow_id}"): {
        "name": "a-workflow",
        "steps": [{"wait": {"duration": "2h"}}],
    },
    ("POST", "/v1/workflows/{workflow_id}/runs"): {"variables": {}},
    ("POST", "/v1/email/suppressions"): {"address": "someone@example.com"},
}
# Query parameters a route requires.
QUERIES: dict[tuple[str, str], dict] = {
    ("GET", "/v1/usage"): {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
    ("GET", "/v1/usage/voice"): {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
}


async def seed_messages(client, token_b: str, pg_pool) -> dict[str, str]:
    resp = await client.post(
        "/v1/messages", json=BODIES[("POST", "/v1/messages")], headers=auth(token_b)
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    await client.post(
        "/v1/templates",
        json={"name": "b-secret-template", "body": "b {{x}}"},
        headers=auth(token_b),
    )
    await pg_pool.execute(
        "SELECT setval('jobs_id_seq', 987654320)"
    )  # an id that can't appear by chance
    job_id = await pg_pool.fetchval(
        """
        INSERT INTO jobs (queue, tenant_id, payload, state, max_attempts, last_error, dead_at)
        SELECT 'dispatch', tenant_id, jsonb_build_object('message_id', id), 'dead', 1, 'b-secret-error', now()
        FROM messages WHERE id = $1::uuid RETURNING id
        """,
        msg["id"],
    )
    return {
        "message_id": msg["id"],
        "trace_id": msg["trace_id"],
        "name": "b-secret-template",
        "job_id": str(job_id),
    }


async def seed_webhooks(client, token_b: str, pg_pool) -> dict[str, str]:
    """B's webhook endpoint, one delivery to it, and B's events (which A's stream must not show)."""
    import uuid

    from gateway.events.outbox import NewEvent, emit

    resp = await client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.215.14/b-secret-hook"},
        headers=auth(token_b),
    )
    assert resp.status == 201, await resp.text()
    endpoint = await resp.json()
    tenant_b = await pg_pool.fetchval(
        "SELECT tenant_id FROM webhook_endpoints WHERE id = $1", uuid.UUID(endpoint["id"])
    )
    delivery_id = uuid.uuid4()
    async with pg_pool.acquire() as conn, conn.transaction():
        await emit(
            conn,
            NewEvent(tenant_b, "message.sent", "b-secret-subject", None, {"b": "b-secret-data"}),
        )
        await conn.execute(
            """
            INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_seq, event_type, payload, status)
            VALUES ($1, $2, $3, 987654321, 'message.sent', '{"b": "b-secret-data"}', 'failed')
            """,
            delivery_id,
            tenant_b,
            uuid.UUID(endpoint["id"]),
        )
    # Path parameters, plus markers of B's data (not parameters: only checked for leaks).
    return {
        "endpoint_id": endpoint["id"],
        "delivery_id": str(delivery_id),
        "webhook_url_marker": "b-secret-hook",
        "event_subject_marker": "b-secret-subject",
        "event_data_marker": "b-secret-data",
    }


async def seed_dnc(client, token_b: str, pg_pool) -> dict[str, str]:
    """A number on B's do-not-contact list (A's GET/DELETE of it must be 404, its note unseen)."""
    resp = await client.post(
        "/v1/dnc",
        json={"number": "+12125550177", "source": "litigator", "note": "b-secret-note"},
        headers=auth(token_b),
    )
    assert resp.status == 201, await resp.text()
    return {"number": "+12125550177", "dnc_note_marker": "b-secret-note"}


async def seed_calls(client, token_b: str, pg_pool) -> dict[str, str]:
    """A live call of B's (the sandbox number that stays up): A can neither read, hang up nor
    bridge it."""
    resp = await client.post(
        "/v1/calls",
        json={"to": "+14155550207", "purpose": "transactional", "metadata": {"b": "b-secret-call"}},
        headers=auth(token_b),
    )
    assert resp.status == 201, await resp.text()
    return {"call_id": (await resp.json())["id"], "call_marker": "b-secret-call"}


async def seed_campaigns(client, token_b: str, pg_pool) -> dict[str, str]:
    """A draft campaign of B's with one prospect: A can neither read it, list its prospects,
    add to it nor start, pause, resume or cancel it."""
    resp = await client.post(
        "/v1/campaigns", json={"name": "b-secret-campaign"}, headers=auth(token_b)
    )
    assert resp.status == 201, await resp.text()
    campaign_id = (await resp.json())["id"]
    resp = await client.post(
        f"/v1/campaigns/{campaign_id}/prospects",
        json={"prospects": [{"number": "+14155550166", "variables": {"x": "b-secret-var"}}]},
        headers=auth(token_b),
    )
    assert resp.status == 200, await resp.text()
    return {
        "campaign_id": campaign_id,
        "campaign_marker": "b-secret-campaign",
        "prospect_marker": "b-secret-var",
    }


async def seed_ivr(client, token_b: str, pg_pool) -> dict[str, str]:
    """An IVR flow of B's and a session of it: A can read neither, nor run B's flow, nor bind
    a number to it."""
    flow = {"name": "b-secret-flow", "start": "hi", "nodes": {"hi": {"say": "b-secret-say"}}}
    resp = await client.post("/v1/ivr/flows", json=flow, headers=auth(token_b))
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/v1/ivr/simulate",
        json={"flow": "b-secret-flow", "from": "+14155550123"},
        headers=auth(token_b),
    )
    assert resp.status == 200, await resp.text()
    return {
        "name": "b-secret-flow",
        "session_id": (await resp.json())["id"],
        "ivr_say_marker": "b-secret-say",
    }


async def seed_workflows(client, token_b: str, pg_pool) -> dict[str, str]:
    """A workflow of B's and a run of it (waiting): A can neither read them, start the
    workflow nor cancel the run."""
    resp = await client.post(
        "/v1/workflows",
        json={
            "name": "b-secret-workflow",
            "steps": [{"wait": {"duration": "1h"}}],
        },
        headers=auth(token_b),
    )
    assert resp.status == 201, await resp.text()
    workflow_id = (await resp.json())["id"]
    resp = await client.post(
        f"/v1/workflows/{workflow_id}/runs",
        json={"variables": {"x": "b-secret-variable"}},
        headers=auth(token_b),
    )
    assert resp.status == 201, await resp.text()
    return {
        "workflow_id": workflow_id,
        "run_id": (await resp.json())["id"],
        "workflow_marker": "b-secret-workflow",
        "run_marker": "b-secret-variable",
    }


async def seed_email(client, token_b: str, pg_pool) -> dict[str, str]:
    """An address on B's email suppression list: A can neither see it nor take it off."""
    resp = await client.post(
        "/v1/email/suppressions",
        json={"address": "b-secret@example.com", "detail": "b-secret-detail"},
        headers=auth(token_b),
    )
    assert resp.status == 201, await resp.text()
    return {"address": "b-secret@example.com", "suppression_marker": "b-secret-detail"}


# Each feature adds a seeder: (client, tenant-B token, pg_pool) -> {path parameter: B's id}.
SEEDERS = [
    seed_messages,
    seed_webhooks,
    seed_dnc,
    seed_calls,
    seed_campaigns,
    seed_ivr,
    seed_workflows,
    seed_email,
]


async def seed_tenant_b(client, token_b: str, pg_pool) -> dict[str, str]:
    """Create one of each kind of tenant-B resource; map path parameter name -> B's id."""
    ids: dict[str, str] = {}
    for seeder in SEEDERS:
        ids |= await seeder(client, token_b, pg_pool)
    return ids


def v1_endpoints():
    return [ep for t in ROUTE_TABLES for ep in t.endpoints if ep.path.startswith("/v1/")]


# Its seeded call was once deferred by calling hours outside 08:00-21:00 Pacific (issue 10 item 1)
@pytest.mark.hours
async def test_tenant_a_sees_nothing_of_tenant_b_on_any_route(client, make_key, pg_pool):
    token_a = await make_key("tenant-a")
    token_b = await make_key("tenant-b")
    b_ids = await seed_tenant_b(client, token_b, pg_pool)
    b_me = await (await client.get("/v1/whoami", headers=auth(token_b))).json()
    secrets_of_b = {
        b_me["tenant_id"],
        b_me["key_id"],
        "tenant-b",
        "b-secret-error",
        *b_ids.values(),
    }

    # Counts are B's data too: B's live call (seed_calls) holds a channel of the shared api
    # pool, which A's view of the pools must not show (A has no call yet).
    def occupancy(body: dict) -> dict[str, tuple[int, int]]:
        return {p["name"]: (p["in_use"], p["waiting"]) for p in body["pools"]}

    seen_by_a = await (await client.get("/v1/pools", headers=auth(token_a))).json()
    seen_by_b = await (await client.get("/v1/pools", headers=auth(token_b))).json()
    assert set(occupancy(seen_by_a).values()) == {(0, 0)}, seen_by_a
    assert occupancy(seen_by_b)["api"] == (1, 0), seen_by_b

    endpoints = v1_endpoints()
    assert endpoints, "no /v1 routes found"
    for ep in endpoints:
        params = re.findall(r"\{(\w+)\}", ep.path)
        missing = [p for p in params if p not in b_ids]
        assert not missing, f"{ep.method} {ep.path}: seed_tenant_b must provide {missing}"
        path = ep.path.format(**b_ids)
        kwargs: dict = {"params": QUERIES.get((ep.method, ep.path), {})}
        if ep.body is not None:
            assert (ep.method, ep.path) in BODIES, f"{ep.method} {ep.path}: add a body to BODIES"
            kwargs["json"] = BODIES[(ep.method, ep.path)]
        resp = await client.request(ep.method, path, headers=auth(token_a), **kwargs)
        text = await resp.text()
        assert resp.status < 500, (ep.method, path, resp.status, text)
        said = text.replace(
            path, ""
        )  # echoing the path A asked for (problem `instance`) reveals nothing
        leaked = [s for s in secrets_of_b if s in said]
        assert not leaked, f"{ep.method} {path} leaked {leaked} of tenant B to tenant A"
        if params and ep.method == "GET":
            assert resp.status == 404, (ep.method, path, resp.status)

    me = await (await client.get("/v1/whoami", headers=auth(token_a))).json()
    assert me["tenant"] == "tenant-a"
