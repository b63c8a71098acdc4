"""Managing webhook endpoints: secrets shown once, scopes, idempotency, the SSRF guard."""

from __future__ import annotations

from tests.helpers import auth

URL = "https://93.184.215.14/hook"  # a public address literal: no DNS in tests


async def test_create_list_get_delete(client, make_key):
    token = await make_key("acme")
    resp = await client.post(
        "/v1/webhook-endpoints",
        json={"url": URL, "event_types": ["message.*", "call.completed"], "description": "crm"},
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert created["status"] == "enabled"
    assert created["event_types"] == ["call.completed", "message.*"]
    eid = created["id"]

    listed = await (await client.get("/v1/webhook-endpoints", headers=auth(token))).json()
    assert [e["id"] for e in listed["data"]] == [eid]
    assert "secret" not in listed["data"][0] and created["secret"] not in str(listed)
    one = await (await client.get(f"/v1/webhook-endpoints/{eid}", headers=auth(token))).json()
    assert one["url"] == URL and "secret" not in one

    deliveries = await client.get(f"/v1/webhook-endpoints/{eid}/deliveries", headers=auth(token))
    assert (await deliveries.json()) == {"data": [], "next_cursor": None}

    assert (await client.delete(f"/v1/webhook-endpoints/{eid}", headers=auth(token))).status == 204
    gone = await client.get(f"/v1/webhook-endpoints/{eid}", headers=auth(token))
    assert gone.status == 404 and (await gone.json())["code"] == "webhook_endpoint_not_found"
    assert (await client.delete(f"/v1/webhook-endpoints/{eid}", headers=auth(token))).status == 404
    bad = await client.get("/v1/webhook-endpoints/not-a-uuid", headers=auth(token))
    assert bad.status == 404


async def test_scope_and_validation(client, make_key):
    reader = await make_key("acme", ["events:read"])
    resp = await client.post("/v1/webhook-endpoints", json={"url": URL}, headers=auth(reader))
    assert resp.status == 403
    token = await make_key("acme")
    for body in (
        {"url": URL, "event_types": ["Message.*"]},
        {"url": URL, "event_types": ["message.**"]},
        {"url": URL, "nope": 1},
        {},
    ):
        resp = await client.post("/v1/webhook-endpoints", json=body, headers=auth(token))
        assert resp.status == 422, body


async def test_idempotency_key_returns_the_first_answer(client, make_key):
    token = await make_key("acme")
    headers = auth(token) | {"Idempotency-Key": "ep-1"}
    first = await client.post("/v1/webhook-endpoints", json={"url": URL}, headers=headers)
    again = await client.post("/v1/webhook-endpoints", json={"url": URL}, headers=headers)
    assert first.status == again.status == 201
    assert (await first.json()) == (await again.json())
    other = await client.post("/v1/webhook-endpoints", json={"url": URL + "2"}, headers=headers)
    assert other.status == 422 and (await other.json())["code"] == "idempotency_key_reused"
    listed = await (await client.get("/v1/webhook-endpoints", headers=auth(token))).json()
    assert len(listed["data"]) == 1


REFUSED = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://172.16.5.5/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://0.0.0.0/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[fd00::1]/hook",  # unique local
    "http://2130706433/hook",  # 127.0.0.1 as one number
    "ftp://93.184.215.14/hook",
    "https://user:pw@93.184.215.14/hook",
]


async def test_private_and_odd_targets_are_refused(app_client, make_key):
    client = await app_client(webhooks={"allow_private_targets": False})
    token = await make_key("acme")
    for url in REFUSED:
        resp = await client.post("/v1/webhook-endpoints", json={"url": url}, headers=auth(token))
        assert resp.status == 422, (url, await resp.text())
        assert (await resp.json())["code"] == "webhook_url_refused", url
    resp = await client.post("/v1/webhook-endpoints", json={"url": URL}, headers=auth(token))
    assert resp.status == 201
    listed = await (await client.get("/v1/webhook-endpoints", headers=auth(token))).json()
    assert [e["url"] for e in listed["data"]] == [URL]


async def test_the_guard_also_runs_at_delivery_time(app_client, make_key, tenant_id, pg_pool):
    """A URL that passed creation but now points inside (DNS changed, or settings flipped)."""
    from gateway.settings import WebhookSettings
    from gateway.webhooks.deliver import Deliverer, http_session

    cfg = WebhookSettings(allow_private_targets=False, timeout=2)
    async with http_session(cfg) as session:
        deliverer = Deliverer(pg_pool, cfg, session)
        for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook"):
            row = {
                "id": "d",
                "url": url,
                "secret": "s",
                "payload": {},
                "event_seq": 1,
                "event_type": "message.sent",
                "trace_id": None,
            }
            outcome = await deliverer.attempt(row, 1)
            assert not outcome.retryable and "refused target" in outcome.error, outcome.error
