"""The list endpoints: one envelope, keyset cursors, no duplicate, no gap, one tenant's rows.

Rows are written with SQL (1,000 per list through the API would test the pipeline, not the
list), in big statements on purpose: a statement's rows share one ``created_at``, so the
pages must be cut inside runs of equal timestamps by the id that breaks the tie.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.helpers import auth

ROWS = 1_000
_n = itertools.count(1)


def _ids(count: int) -> list[int]:
    return [next(_n) for _ in range(count)]


async def add_messages(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO messages (id, tenant_id, direction, channel, to_number, body, purpose, status,
                              encoding, segments, trace_id)
        SELECT gen_random_uuid(), $1, 'outbound', 'sms',
               CASE WHEN n % 2 = 0 THEN '+14155550100' ELSE '+14155550101' END, 'x',
               'transactional', CASE WHEN n % 3 = 0 THEN 'failed' ELSE 'delivered' END,
               'GSM-7', 1, md5(n::text)
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_calls(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO calls (id, tenant_id, to_number, purpose, status, pool, ring_timeout, trace_id)
        SELECT gen_random_uuid(), $1,
               CASE WHEN n % 2 = 0 THEN '+14155550100' ELSE '+14155550101' END, 'transactional',
               CASE WHEN n % 3 = 0 THEN 'busy' ELSE 'completed' END, 'api', 30, md5(n::text)
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_templates(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO message_templates (tenant_id, name, body)
        SELECT $1, 't-' || md5(n::text), 'hi {{ name }}' FROM unnest($2::int[]) n RETURNING name
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_dnc(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO dnc_entries (number, tenant_id, source)
        SELECT '+1212' || lpad(n::text, 7, '0'), $1,
               (CASE WHEN n % 2 = 0 THEN 'internal' ELSE 'consumer_opt_out' END)::dnc_source
        FROM unnest($2::int[]) n RETURNING number
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_keys(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO api_keys (id, tenant_id, key_id, secret_hash, scopes)
        SELECT gen_random_uuid(), $1, left(md5('key' || n), 16), '\\x00', '{messages:read}'
        FROM unnest($2::int[]) n RETURNING key_id
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_dead_letters(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO jobs (queue, tenant_id, payload, state, max_attempts, attempts, dead_at)
        SELECT 'list-test', $1, jsonb_build_object('n', n), 'dead', 1, 1, now()
        FROM unnest($2::int[]) n RETURNING id
        """,
        tenant,
        _ids(count),
    )
    return {str(r[0]) for r in rows}


async def add_endpoints(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO webhook_endpoints (id, tenant_id, url, secret, status)
        SELECT gen_random_uuid(), $1, 'https://93.184.215.14/h' || n, 'whsec', 'disabled'
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_campaigns(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    from gateway.campaigns.schemas import CampaignIn

    body = CampaignIn.model_validate({"name": "c", "channel": "voice", "purpose": "marketing"})
    config = body.model_dump(mode="json", exclude={"name", "channel", "purpose"})
    rows = await db.fetch(
        """
        INSERT INTO campaigns (id, tenant_id, name, channel, purpose, config)
        SELECT gen_random_uuid(), $1, 'c' || n, 'voice', 'marketing', $3
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
        config,
    )
    return {r[0] for r in rows}


async def add_workflows(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    rows = await db.fetch(
        """
        INSERT INTO workflows (id, tenant_id, name, steps, webhook_secret)
        SELECT gen_random_uuid(), $1, 'w' || n, '[{"wait": {"duration": "1s"}}]', 'whsec'
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
    )
    return {r[0] for r in rows}


async def add_workflow_runs(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    [workflow] = await add_workflows(db, tenant, 1)
    rows = await db.fetch(
        """
        INSERT INTO workflow_runs (id, tenant_id, workflow_id, workflow_version, status, trace_id)
        SELECT gen_random_uuid(), $1, $3::uuid, 1, 'completed', md5(n::text)
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
        workflow,
    )
    return {r[0] for r in rows}


async def add_ivr_flows(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    """New names at version 1, and a second version of each: a name is listed once, at its
    latest version."""
    flow = '{"name": "x", "start": "bye", "nodes": {"bye": {"hangup": true}}}'
    rows = await db.fetch(
        """
        INSERT INTO ivr_flows (id, tenant_id, name, version, document, signing_secret)
        SELECT gen_random_uuid(), $1, 'f-' || md5(n::text), v, $3::jsonb, 'whsec'
        FROM unnest($2::int[]) n, generate_series(1, 2) v RETURNING name
        """,
        tenant,
        _ids(count),
        flow,
    )
    return {r[0] for r in rows}


async def add_ivr_sessions(db: asyncpg.Pool, tenant: uuid.UUID, count: int) -> set[str]:
    """Summaries of ended sessions (a statement's rows share one started_at)."""
    flow = await db.fetchval(
        "SELECT id FROM ivr_flows WHERE tenant_id = $1 AND name = 'sessions'", tenant
    )
    if flow is None:
        flow = uuid.uuid4()
        await db.execute(
            "INSERT INTO ivr_flows (id, tenant_id, name, version, document, signing_secret)"
            " VALUES ($1, $2, 'sessions', 1, '{}', 'whsec')",
            flow,
            tenant,
        )
    rows = await db.fetch(
        """
        INSERT INTO ivr_sessions (id, tenant_id, flow_id, flow_name, flow_version, transport,
                                  caller, called, started_at, ended_at, end_reason, steps)
        SELECT gen_random_uuid(), $1, $3, 'sessions', 1, 'asterisk', '+1555' || n, NULL,
               now(), now(), 'hangup', 2
        FROM unnest($2::int[]) n RETURNING id::text
        """,
        tenant,
        _ids(count),
        flow,
    )
    return {r[0] for r in rows}


@dataclass(frozen=True)
class Listing:
    path: str
    key: str  # the field that identifies a row
    add: Callable[[asyncpg.Pool, uuid.UUID, int], Awaitable[set[str]]]


LISTINGS = [
    Listing("/v1/messages", "id", add_messages),
    Listing("/v1/calls", "id", add_calls),
    Listing("/v1/templates", "name", add_templates),
    Listing("/v1/dnc", "number", add_dnc),
    Listing("/v1/keys", "key_id", add_keys),
    Listing("/v1/dead-letters", "id", add_dead_letters),
    Listing("/v1/webhook-endpoints", "id", add_endpoints),
    Listing("/v1/campaigns", "id", add_campaigns),
    Listing("/v1/workflows", "id", add_workflows),
    Listing("/v1/workflow-runs", "id", add_workflow_runs),
    Listing("/v1/ivr/flows", "name", add_ivr_flows),
    Listing("/v1/ivr/sessions", "id", add_ivr_sessions),
]


async def _tenant(db: asyncpg.Pool, name: str) -> uuid.UUID:
    return await db.fetchval("SELECT id FROM tenants WHERE name = $1", name)


async def read_all(client, path: str, token: str, limit: int, params: dict | None = None):
    """Every page of a list, following next_cursor; the pages' rows in order."""
    rows: list[dict] = []
    cursor: str | None = None
    for _ in range(10_000):
        query = {"limit": str(limit), **(params or {})}
        if cursor is not None:
            query["cursor"] = cursor
        resp = await client.get(path, params=query, headers=auth(token))
        body = await resp.json()
        assert resp.status == 200, body
        assert set(body) == {"data", "next_cursor"}, body.keys()
        assert len(body["data"]) <= limit
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
        await asyncio.sleep(0)  # let the writer in between pages
    raise AssertionError("the cursor never ended")


@pytest.mark.parametrize("listing", LISTINGS, ids=lambda x: x.path)
async def test_a_list_pages_through_1000_rows_while_rows_are_added(
    client, make_key, pg_pool, listing: Listing
):
    token_a = await make_key("tenant-a")
    token_b = await make_key("tenant-b")
    tenant_a, tenant_b = await _tenant(pg_pool, "tenant-a"), await _tenant(pg_pool, "tenant-b")
    before: set[str] = set()
    for size in (600, 1, 1, 398):  # a 600-row run with one created_at, then a few more
        before |= await listing.add(pg_pool, tenant_a, size)
    if listing.path == "/v1/keys":  # make_key's own key is in the list too
        before |= {
            r[0]
            for r in await pg_pool.fetch(
                "SELECT key_id FROM api_keys WHERE tenant_id = $1", tenant_a
            )
        }
    assert len(before) >= ROWS
    others = await listing.add(pg_pool, tenant_b, 50)

    added: set[str] = set()
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            added.update(await listing.add(pg_pool, tenant_a, 3))
            others.update(await listing.add(pg_pool, tenant_b, 3))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(writer())
    try:
        rows = await read_all(client, listing.path, token_a, limit=37)
    finally:
        stop.set()
        await task
    assert added, "nothing was added while the list was read"
    seen = [str(r[listing.key]) for r in rows]
    assert len(seen) == len(set(seen)), "a row appeared twice"
    assert before <= set(seen), f"{len(before - set(seen))} rows were skipped"
    assert set(seen) <= before | added
    assert not set(seen) & others, "tenant B's rows in tenant A's list"
    # and B sees its own rows only
    rows_b = await read_all(client, listing.path, token_b, limit=500)
    seen_b = {str(r[listing.key]) for r in rows_b}
    assert not seen_b & (before | added)


async def test_message_and_call_filters(client, make_key, pg_pool):
    token = await make_key("acme")
    tenant = await _tenant(pg_pool, "acme")
    await add_messages(pg_pool, tenant, 30)
    await add_calls(pg_pool, tenant, 30)
    mid = await pg_pool.fetchval("SELECT now()")
    await asyncio.sleep(0.01)
    late_messages = await add_messages(pg_pool, tenant, 5)
    late_calls = await add_calls(pg_pool, tenant, 5)
    for path, late, failed in (
        ("/v1/messages", late_messages, "failed"),
        ("/v1/calls", late_calls, "busy"),
    ):
        everything = await read_all(client, path, token, limit=7)
        assert len(everything) == 35
        stamps = [(r["created_at"], r["id"]) for r in everything]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        rows = await read_all(client, path, token, limit=7, params={"status": failed})
        assert rows and {r["status"] for r in rows} == {failed}
        assert len(rows) == sum(1 for r in everything if r["status"] == failed)
        # "+" in a query string is a space unless encoded; both forms mean the number
        rows = await read_all(client, path, token, limit=50, params={"to": "(415) 555-0100"})
        assert rows and {r["to"] for r in rows} == {"+14155550100"}
        after = mid.astimezone(UTC).isoformat()
        rows = await read_all(client, path, token, limit=3, params={"created_after": after})
        assert {r["id"] for r in rows} == late
        rows = await read_all(client, path, token, limit=50, params={"created_before": after})
        assert len(rows) == 30 and not {r["id"] for r in rows} & late
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert await read_all(client, path, token, limit=5, params={"created_after": future}) == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "WyJjYWxscyIsIjIwMjYtMDEtMDFUMDA6MDA6MDArMDA6MDAiLCJ4Il0"}, "invalid_cursor"),
        ({"limit": "0"}, "validation_error"),
        ({"limit": "501"}, "validation_error"),
        ({"status": "nonsense"}, "validation_error"),
        ({"created_after": "2026-01-01T00:00:00"}, "validation_error"),  # no offset: ambiguous
        ({"to": "12"}, "invalid_phone_number"),
        ({"colour": "red"}, "validation_error"),
    ],
)
async def test_bad_list_parameters_are_a_422(client, make_key, params, code):
    token = await make_key("acme")
    resp = await client.get("/v1/messages", params=params, headers=auth(token))
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


async def test_a_cursor_of_one_list_is_refused_by_another(client, make_key, pg_pool):
    token = await make_key("acme")
    await add_calls(pg_pool, await _tenant(pg_pool, "acme"), 3)
    page = await (await client.get("/v1/calls?limit=1", headers=auth(token))).json()
    assert page["next_cursor"]
    resp = await client.get(
        "/v1/messages", params={"cursor": page["next_cursor"]}, headers=auth(token)
    )
    assert resp.status == 422 and (await resp.json())["code"] == "invalid_cursor"


@pytest.mark.parametrize("key", [2**63, -(2**63) - 1, "12", 1.5, True])
async def test_a_forged_integer_cursor_is_a_422_not_a_500(client, make_key, key):
    """The integer-keyed lists (dead letters here) take only a bigint back."""
    token = await make_key("acme")
    forged = base64.urlsafe_b64encode(json.dumps(["dead-letters", key]).encode()).decode()
    resp = await client.get("/v1/dead-letters", params={"cursor": forged}, headers=auth(token))
    assert resp.status == 422 and (await resp.json())["code"] == "invalid_cursor"


async def test_keys_list_shows_no_secret(client, make_key, pg_pool):
    token = await make_key("acme")
    body = await (await client.get("/v1/keys", headers=auth(token))).json()
    [key] = body["data"]
    assert set(key) == {"key_id", "name", "scopes", "created_at", "revoked_at"}
    prefix = f"tk_{key['key_id']}_"
    assert token.startswith(prefix)
    secret = token.removeprefix(prefix)  # the whole secret: it may itself hold a "_"
    assert len(secret) >= 20 and secret not in str(body)
    narrow = await make_key("acme", ["messages:read"])
    resp = await client.get("/v1/keys", headers=auth(narrow))
    assert resp.status == 403  # keys:read is a scope of its own


async def test_every_create_is_a_201_and_an_update_a_200(client, make_key):
    token = await make_key("acme")
    headers = auth(token)
    template = {"name": "otp", "body": "code {{ code }}"}
    assert (await client.post("/v1/templates", json=template, headers=headers)).status == 201
    assert (await client.post("/v1/templates", json=template, headers=headers)).status == 200
    entry = {"number": "+12125550100", "source": "internal"}
    assert (await client.post("/v1/dnc", json=entry, headers=headers)).status == 201
    assert (await client.post("/v1/dnc", json=entry, headers=headers)).status == 200
    hook = {"url": "https://93.184.215.14/hook"}
    assert (await client.post("/v1/webhook-endpoints", json=hook, headers=headers)).status == 201
    # a message and a call are created (stored, their send or dial to follow): 201, and a
    # replay of the same Idempotency-Key answers the first answer's status
    for path, body in (
        ("/v1/messages", {"to": "+14155550100", "body": "hi", "purpose": "transactional"}),
        ("/v1/calls", {"to": "+14155550100", "purpose": "transactional"}),
    ):
        keyed = headers | {"Idempotency-Key": f"create-{path}"}
        first = await client.post(path, json=body, headers=keyed)
        assert first.status == 201, await first.text()
        again = await client.post(path, json=body, headers=keyed)
        assert again.status == 201 and again.headers.get("Idempotent-Replayed") == "true"
        assert (await again.json())["id"] == (await first.json())["id"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_not_sent_as_json_is_a_415(client, make_key, content_type):
    token = await make_key("acme")
    headers = auth(token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    raw = b'{"name": "otp", "body": "code {{ code }}"}'
    resp = await client.post("/v1/templates", data=raw, headers=headers)
    assert resp.status == 415 and resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "unsupported_media_type"
    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json"):
        resp = await client.post(
            "/v1/templates", data=raw, headers=auth(token) | {"Content-Type": ctype}
        )
        assert resp.status in (200, 201), await resp.text()


async def test_openapi_documents_lists_creates_and_415(client):
    doc = await (await client.get("/openapi.json")).json()
    for path in [x.path for x in LISTINGS]:
        op = doc["paths"][path]["get"]
        names = {p["name"] for p in op.get("parameters", [])}
        assert {"limit", "cursor"} <= names, path
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(schema["properties"]) == {"data", "next_cursor"}, path
    for path in ("/v1/messages", "/v1/calls"):
        names = {p["name"] for p in doc["paths"][path]["get"]["parameters"]}
        assert {"status", "to", "created_after", "created_before"} <= names
    for path in ("/v1/templates", "/v1/dnc", "/v1/webhook-endpoints", "/v1/campaigns"):
        assert "201" in doc["paths"][path]["post"]["responses"], path
    prospects = doc["paths"]["/v1/campaigns/{campaign_id}/prospects"]["get"]
    assert {"limit", "cursor", "status"} <= {p["name"] for p in prospects["parameters"]}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert "415" in op["responses"], (method, path)


async def test_openapi_names_the_scope_of_each_operation(client):
    from gateway.app import ROUTE_TABLES

    doc = await (await client.get("/openapi.json")).json()
    for table in ROUTE_TABLES:
        for ep in table.endpoints:
            op = doc["paths"][ep.path][ep.method.lower()]
            if ep.public:
                assert "security" not in op, ep.path
                continue
            assert op["x-required-scope"] == ep.scope, ep.path
            assert op["security"] == [{"bearer": [ep.scope] if ep.scope else []}], ep.path
    assert doc["paths"]["/v1/keys"]["get"]["x-required-scope"] == "keys:read"


async def test_openapi_states_the_real_constraints(client):
    """A schema-driven client learns what the server checks: phone numbers, URLs, event types."""
    import re

    doc = await (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    # `to` is a phone number (sms, whatsapp) or an email address (email): one pattern each.
    to = schemas["SendMessage"]["properties"]["to"]["anyOf"]
    phone = next(alt for alt in to if "pattern" in alt)
    assert re.match(phone["pattern"], "+14155550100")
    assert not re.match(phone["pattern"], "call me maybe, tomorrow at noon please!")
    assert {"type": "string", "format": "email", "maxLength": 254} in to
    url = schemas["EndpointIn"]["properties"]["url"]
    assert url["format"] == "uri" and url["pattern"] == "^https?://"
    types = next(p for p in doc["paths"]["/v1/events"]["get"]["parameters"] if p["name"] == "types")
    pattern = types["schema"]["pattern"]
    assert re.match(pattern, "message.*,call.completed") and not re.match(pattern, "Message")
    item = schemas["EndpointIn"]["properties"]["event_types"]["items"]["pattern"]
    assert re.match(item, "call.*") and not re.match(item, "call.* ,x")
