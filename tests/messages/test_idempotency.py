"""Idempotency-Key: Stripe semantics, safe under concurrency."""

import asyncio
from datetime import datetime

from tests.helpers import auth


async def test_fifty_concurrent_identical_requests_make_one_message(client, token, pg_pool):
    body = {"to": "+14155550100", "body": "Your code is 1234", "purpose": "transactional"}
    headers = auth(token) | {"Idempotency-Key": "inv-42"}
    responses = await asyncio.gather(
        *(client.post("/v1/messages", json=body, headers=headers) for _ in range(50))
    )
    statuses = [r.status for r in responses]
    assert statuses == [201] * 50, statuses
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    assert sum(1 for r in responses if r.headers.get("Idempotent-Replayed") == "true") == 49
    assert await pg_pool.fetchval("SELECT count(*) FROM messages") == 1
    assert await pg_pool.fetchval("SELECT count(*) FROM jobs") <= 1


async def test_same_key_different_body_is_refused_and_changes_nothing(client, token, pg_pool):
    headers = auth(token) | {"Idempotency-Key": "inv-43"}
    first = await client.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "a", "purpose": "transactional"},
        headers=headers,
    )
    assert first.status == 201
    again = await client.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "b", "purpose": "transactional"},
        headers=headers,
    )
    assert again.status == 422
    assert (await again.json())["code"] == "idempotency_key_reused"
    assert await pg_pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_a_failed_validation_leaves_the_key_usable_and_keys_are_per_tenant(
    client, token, make_key, pg_pool
):
    headers = auth(token) | {"Idempotency-Key": "k1"}
    bad = {"to": "+14155550100", "template": "missing"}
    first = await client.post("/v1/messages", json=bad, headers=headers)
    assert first.status == 422
    # A validation failure inside the transaction rolls the claim back: the key stays usable.
    ok = await client.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "x", "purpose": "transactional"},
        headers=headers,
    )
    assert ok.status == 201
    other = await make_key("other-tenant")
    theirs = await client.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "y", "purpose": "transactional"},
        headers=auth(other) | {"Idempotency-Key": "k1"},
    )
    assert theirs.status == 201
    assert (await theirs.json())["id"] != (await ok.json())["id"]


async def test_expired_keys_are_reusable_and_purged(client, token, pg_pool):
    from gateway.http.idempotency import purge_expired

    headers = auth(token) | {"Idempotency-Key": "old"}
    first = await (
        await client.post(
            "/v1/messages",
            json={"to": "+14155550100", "body": "a", "purpose": "transactional"},
            headers=headers,
        )
    ).json()
    await pg_pool.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    second = await (
        await client.post(
            "/v1/messages",
            json={"to": "+14155550100", "body": "b", "purpose": "transactional"},
            headers=headers,
        )
    ).json()
    assert second["id"] != first["id"]
    await pg_pool.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    assert await purge_expired(pg_pool) == 1
    assert await pg_pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_bad_idempotency_key_is_400(client, token):
    resp = await client.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "a", "purpose": "transactional"},
        headers=auth(token) | {"Idempotency-Key": "x" * 300},
    )
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_idempotency_key"


async def test_the_answer_its_replay_and_the_message_agree_on_its_timestamps(
    client, token, pg_pool
):
    # The batch's statement sets created_at/updated_at into the stored answer (acceptwrite.py):
    # they must be the row's, formatted as every other answer formats them.
    headers = auth(token) | {"Idempotency-Key": "stamps-1"}
    body = {"to": "+14155550100", "body": "Your code is 1234", "purpose": "transactional"}
    first = await client.post("/v1/messages", json=body, headers=headers)
    assert first.status == 201
    answer = await first.json()
    again = await client.post("/v1/messages", json=body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == answer
    got = await client.get(f"/v1/messages/{answer['id']}", headers=auth(token))
    detail = await got.json()
    assert detail["created_at"] == answer["created_at"]
    # updated_at is the answer's until the worker moves the message on (it may have by now)
    if detail["status"] == answer["status"]:
        assert detail["updated_at"] == answer["updated_at"]
    else:
        moved, stamped = (
            datetime.fromisoformat(t.replace("Z", "+00:00"))
            for t in (detail["updated_at"], answer["updated_at"])
        )
        assert moved > stamped
    unkeyed = await client.post("/v1/messages", json=body, headers=auth(token))
    made = await unkeyed.json()
    row = await pg_pool.fetchrow("SELECT created_at FROM messages WHERE id = $1::uuid", made["id"])
    listed = await client.get(f"/v1/messages/{made['id']}", headers=auth(token))
    assert (await listed.json())["created_at"] == made["created_at"]
    assert row["created_at"].isoformat().startswith(made["created_at"][:19])
