"""Signed deliveries: retries, early stops, dead letters, disabling, redelivery, catch-up."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from gateway.webhooks import signing
from tests.events.support import emit_events
from tests.helpers import auth

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_verifier():
    """The verification snippet exactly as README.md documents it."""
    text = README.read_text()
    section = text[text.index("## Webhooks") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["verify_trunkline_signature"]


async def make_endpoint(client, token, url, **extra) -> dict:
    resp = await client.post(
        "/v1/webhook-endpoints", json={"url": url, **extra}, headers=auth(token)
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def deliveries(client, token, endpoint_id) -> list[dict]:
    resp = await client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=auth(token))
    assert resp.status == 200
    return (await resp.json())["data"]


async def wait_delivery(client, token, endpoint_id, predicate, timeout=15.0) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await deliveries(client, token, endpoint_id)
        if found and predicate(found):
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.03)


async def dead_jobs(pg_pool, n: int, timeout: float = 15.0) -> list:
    """The queue buries a job just after the handler recorded the failure: wait for it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        dead = await pg_pool.fetch("SELECT payload, last_error FROM jobs WHERE state = 'dead'")
        if len(dead) >= n:
            assert len(dead) == n, dead
            return dead
        assert asyncio.get_running_loop().time() < deadline, dead
        await asyncio.sleep(0.02)


async def test_a_receiver_that_fails_twice_then_succeeds_gets_the_event_acknowledged_once(
    receiver, client, make_key, tenant_id, pg_pool
):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    endpoint = await make_endpoint(client, token, receiver.url, event_types=["message.*"])
    receiver.script = [500, 503]  # then 200
    await emit_events(pg_pool, acme, 1, type_="message.delivered", to="+14155550100")
    await emit_events(pg_pool, acme, 1, type_="call.completed")  # not subscribed

    await receiver.wait_for(lambda r: len(r.acknowledged()) == 1)
    found = await wait_delivery(
        client, token, endpoint["id"], lambda d: d[0]["status"] == "succeeded"
    )
    assert len(found) == 1
    delivery = found[0]
    assert delivery["attempts"] == 3 and delivery["last_status_code"] == 200
    assert delivery["event_type"] == "message.delivered"
    assert [r.status for r in receiver.requests] == [500, 503, 200]
    assert len(receiver.acknowledged()) == 1

    # The same delivery each time, attempt numbers counting up.
    ids = {r.headers["Trunkline-Delivery-Id"] for r in receiver.requests}
    assert ids == {delivery["id"]}
    assert [r.headers["Trunkline-Delivery-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    ack = receiver.acknowledged()[0]
    event = json.loads(ack.body)
    assert event["type"] == "message.delivered" and event["data"]["to"] == "+14155550100"
    assert ack.headers["Trunkline-Event-Id"] == str(event["id"]) == str(delivery["event_id"])
    assert ack.headers["Content-Type"] == "application/json"
    assert ack.headers["X-Trace-Id"] == event["trace_id"]

    # The documented snippet verifies it; a wrong secret or a changed body does not.
    verify = readme_verifier()
    header = ack.headers[signing.HEADER]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify(endpoint["secret"], ack.body, header)
    assert not verify("whsec_wrong", ack.body, header)
    assert not verify(endpoint["secret"], ack.body + b" ", header)
    assert not verify(endpoint["secret"], ack.body, "t=1,v1=" + header.split("v1=")[1])
    # The server-side helper agrees with the snippet.
    assert signing.verify(endpoint["secret"], ack.body, header)


async def test_a_4xx_stops_at_once_and_is_dead_lettered_with_the_response(
    receiver, client, make_key, tenant_id, pg_pool
):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    endpoint = await make_endpoint(client, token, receiver.url)
    receiver.default = 400
    await emit_events(pg_pool, acme, 1, type_="message.failed")
    found = await wait_delivery(client, token, endpoint["id"], lambda d: d[0]["status"] == "failed")
    delivery = found[0]
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 400
    assert delivery["last_response"] == "receiver said 400"
    assert "not retryable" in delivery["last_error"]
    dead = await dead_jobs(pg_pool, 1)
    assert dead[0]["payload"] == {"delivery_id": delivery["id"]}
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1

    # Fixed receiver: redeliver.
    receiver.default = 200
    resp = await client.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{delivery['id']}/redeliver",
        headers=auth(token),
    )
    assert resp.status == 202 and (await resp.json())["status"] == "pending"
    found = await wait_delivery(
        client, token, endpoint["id"], lambda d: d[0]["status"] == "succeeded"
    )
    assert found[0]["attempts"] == 2
    assert [r.status for r in receiver.requests] == [400, 200]


async def test_408_and_429_are_retried(receiver, client, make_key, tenant_id, pg_pool):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    endpoint = await make_endpoint(client, token, receiver.url)
    receiver.script = [429, 408]
    await emit_events(pg_pool, acme, 1)
    await wait_delivery(client, token, endpoint["id"], lambda d: d[0]["status"] == "succeeded")
    assert [r.status for r in receiver.requests] == [429, 408, 200]


async def test_retrying_stops_after_the_window_and_keeps_the_last_response(
    receiver, app_client, make_key, tenant_id, pg_pool
):
    client = await app_client(webhooks={"retry_window": 0.4})
    token = await make_key("acme")
    acme = await tenant_id("acme")
    endpoint = await make_endpoint(client, token, receiver.url)
    receiver.default = 503
    await emit_events(pg_pool, acme, 1)
    found = await wait_delivery(client, token, endpoint["id"], lambda d: d[0]["status"] == "failed")
    delivery = found[0]
    assert delivery["attempts"] >= 2 and delivery["attempts"] == len(receiver.requests)
    assert delivery["last_status_code"] == 503 and delivery["last_response"] == "receiver said 503"
    assert "retry window" in delivery["last_error"]
    await dead_jobs(pg_pool, 1)


async def test_an_endpoint_failing_continuously_is_disabled_with_an_event(
    receiver, app_client, make_key, tenant_id, pg_pool
):
    client = await app_client(webhooks={"disable_after": 0.3})
    token = await make_key("acme")
    acme = await tenant_id("acme")
    endpoint = await make_endpoint(client, token, receiver.url, event_types=["message.*"])
    receiver.default = 500
    await emit_events(pg_pool, acme, 1, type_="message.sent")
    for _ in range(500):
        one = await (
            await client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=auth(token))
        ).json()
        if one["status"] == "disabled":
            break
        await asyncio.sleep(0.03)
    assert one["status"] == "disabled" and "failing continuously" in one["disabled_reason"]
    found = await wait_delivery(client, token, endpoint["id"], lambda d: d[0]["status"] == "failed")
    assert "disabled" in found[0]["last_error"]
    page = await (
        await client.get("/v1/events/page?types=webhook_endpoint.*", headers=auth(token))
    ).json()
    for _ in range(500):
        if page["data"]:
            break
        await asyncio.sleep(0.03)
        page = await (
            await client.get("/v1/events/page?types=webhook_endpoint.*", headers=auth(token))
        ).json()
    (event,) = page["data"]
    assert event["type"] == "webhook_endpoint.disabled" and event["subject"] == endpoint["id"]
    # Disabled endpoints get nothing new; re-enabled ones do.
    calls = len(receiver.requests)
    receiver.default = 200
    await emit_events(pg_pool, acme, 1, type_="message.sent")
    await asyncio.sleep(0.4)
    assert len(receiver.requests) == calls
    resp = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/enable", headers=auth(token))
    assert resp.status == 200 and (await resp.json())["status"] == "enabled"
    await emit_events(pg_pool, acme, 1, type_="message.sent")
    await receiver.wait_for(lambda r: len(r.acknowledged()) == 1)


async def test_the_deliverer_catches_up_from_the_log_after_being_down(
    receiver, app_client, make_key, tenant_id, pg_pool, redis_client, database_url, settings
):
    from aiohttp import web

    from gateway.app import create_app
    from gateway.events.sequencer import Sequencer

    api = await app_client("api")  # serves HTTP, runs no workers: nobody delivers webhooks
    token = await make_key("acme")
    acme = await tenant_id("acme")
    endpoint = await make_endpoint(api, token, receiver.url)
    sequencer = Sequencer(database_url, redis_client, interval=0.05)
    stopping = asyncio.Event()
    seq_task = asyncio.create_task(sequencer.run(stopping))
    worker = None
    try:
        for _ in range(4):
            await emit_events(pg_pool, acme, 3, type_="message.sent")
        for _ in range(750):
            if sequencer.sequenced == 12:
                break
            await asyncio.sleep(0.02)
        assert sequencer.sequenced == 12  # the events happened (and SSE clients could see them)
        await asyncio.sleep(0.2)
        assert receiver.requests == [] and await deliveries(api, token, endpoint["id"]) == []

        # A worker process comes back: it resumes from its cursor in PostgreSQL.
        worker = web.AppRunner(create_app(settings, role="worker"))
        await worker.setup()
        await receiver.wait_for(lambda r: len(r.acknowledged()) == 12)
    finally:
        stopping.set()
        await seq_task
        if worker is not None:
            await worker.cleanup()
    got = sorted(json.loads(r.body)["id"] for r in receiver.requests)
    expected = [r["seq"] for r in await pg_pool.fetch("SELECT seq FROM events ORDER BY seq")]
    assert got == expected  # each event once
    assert (
        await pg_pool.fetchval("SELECT seq FROM event_cursors WHERE name = 'webhooks'")
        == expected[-1]
    )
