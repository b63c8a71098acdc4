"""Every create that takes an Idempotency-Key reads it one way (idempotency.from_request):
the same key and body replay the first answer, status included; another body under the key
is 422 idempotency_key_reused; a malformed key is 400 invalid_idempotency_key."""

from __future__ import annotations

import pytest

from tests.helpers import auth

FLOW = {"name": "a-flow", "start": "hi", "nodes": {"hi": {"say": "Hello."}}}
WAIT = {"wait": {"duration": "1h"}}
# path, a body, another body, the status of a first answer
ROUTES = [
    ("/v1/messages", {"to": "+14155550100", "body": "a", "purpose": "transactional"},
     {"to": "+14155550100", "body": "b", "purpose": "transactional"}, 201),
    ("/v1/calls", {"to": "+14155550100", "purpose": "transactional"},
     {"to": "+14155550101", "purpose": "transactional"}, 201),
    ("/v1/dnc", {"number": "+12125550188", "source": "internal"},
     {"number": "+12125550189", "source": "internal"}, 201),
    ("/v1/webhook-endpoints", {"url": "https://93.184.215.14/a-hook"},
     {"url": "https://93.184.215.14/b-hook"}, 201),
    ("/v1/campaigns", {"name": "a-campaign"}, {"name": "b-campaign"}, 201),
    ("/v1/ivr/flows", FLOW, FLOW | {"name": "b-flow"}, 201),
    ("{campaign}/prospects", {"prospects": [{"number": "+14155550123"}]},
     {"prospects": [{"number": "+14155550124"}]}, 200),
    ("/v1/workflows", {"name": "a", "steps": [WAIT]}, {"name": "b", "steps": [WAIT]}, 201),
    ("{workflow}/runs", {"variables": {"a": 1}}, {"variables": {"a": 2}}, 201),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "other", "status"), ROUTES, ids=[r[0] for r in ROUTES])
async def test_each_keyed_create_replays_and_refuses_another_body(
    client, make_key, path, body, other, status
):
    token = await make_key("acme")
    if "{campaign}" in path:
        made = await client.post("/v1/campaigns", json={"name": "c"}, headers=auth(token))
        path = path.replace("{campaign}", f"/v1/campaigns/{(await made.json())['id']}")
    if "{workflow}" in path:
        body_ = {"name": "w", "steps": [WAIT]}
        made = await client.post("/v1/workflows", json=body_, headers=auth(token))
        path = path.replace("{workflow}", f"/v1/workflows/{(await made.json())['id']}")
    keyed = auth(token) | {"Idempotency-Key": "k-1"}
    first = await client.post(path, json=body, headers=keyed)
    assert first.status == status, await first.text()
    again = await client.post(path, json=body, headers=keyed)
    assert again.status == status, await again.text()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert first.headers.get("Idempotent-Replayed") is None
    assert await again.json() == await first.json()
    reused = await client.post(path, json=other, headers=keyed)
    assert reused.status == 422 and (await reused.json())["code"] == "idempotency_key_reused"
    bad = await client.post(path, json=other, headers=auth(token) | {"Idempotency-Key": "k" * 256})
    assert bad.status == 400 and (await bad.json())["code"] == "invalid_idempotency_key"
