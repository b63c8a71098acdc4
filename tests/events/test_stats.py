"""GET /v1/stats: per-tenant counters kept from the event log, each event counted once."""

from __future__ import annotations

import asyncio

from gateway.events.stats import StatsAggregator
from tests.events.support import emit_events
from tests.helpers import auth


async def wait_stats(client, token, predicate, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get("/v1/stats", headers=auth(token))
        assert resp.status == 200
        body = await resp.json()
        if predicate(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_stats_count_status_events_per_tenant(pg_pool, client, make_key, tenant_id):
    token_a, token_b = await make_key("tenant-a"), await make_key("tenant-b")
    a, b = await tenant_id("tenant-a"), await tenant_id("tenant-b")
    await emit_events(pg_pool, a, 2, type_="message.queued")
    await emit_events(pg_pool, a, 1, type_="message.delivered")
    await emit_events(pg_pool, a, 1, type_="call.status", status="answered")
    await emit_events(pg_pool, a, 1, type_="pool.occupancy", pool="campaign", in_use=3, size=60)
    await emit_events(pg_pool, a, 1, type_="pool.occupancy", pool="campaign", in_use=5)
    await emit_events(pg_pool, b, 4, type_="message.failed")
    expected_a = {
        "messages": {"delivered": 1, "queued": 2},
        "calls": {"answered": 1},
        "pools": {"campaign": {"in_use": 5, "size": 60}},
    }
    body = await wait_stats(client, token_a, lambda s: _counters(s) == expected_a)
    assert body["as_of_event_id"] > 0
    expected_b = {"messages": {"failed": 4}, "calls": {}, "pools": {}}
    await wait_stats(client, token_b, lambda s: _counters(s) == expected_b)


def _counters(body: dict) -> dict:
    return {k: body[k] for k in ("messages", "calls", "pools")}


async def test_a_cursor_ahead_of_the_log_resets_and_recounts(
    pg_pool, redis_client, make_key, tenant_id, database_url
):
    """Redis kept counters of another database (e.g. a restored one): start over, don't stall."""
    await make_key("acme")
    acme = await tenant_id("acme")
    await redis_client.set("trunkline:stats:cursor", 10_000)
    await redis_client.hset(f"trunkline:stats:{acme}", "messages:stale", 99)
    await emit_events(pg_pool, acme, 3, type_="message.sent")
    conn = await pg_pool.acquire()
    try:
        from gateway.events.sequencer import assign_batch

        await assign_batch(conn, 1000)
    finally:
        await pg_pool.release(conn)
    agg = StatsAggregator(pg_pool, database_url, redis_client)
    while await agg.step():
        pass
    await agg.step()  # nothing after the cursor, which is beyond the log: reset
    while await agg.step():
        pass
    counts = await redis_client.hgetall(f"trunkline:stats:{acme}")
    assert counts == {b"messages:sent": b"3"}


async def test_racing_aggregators_count_each_event_once(
    pg_pool, redis_client, make_key, tenant_id, database_url
):
    await make_key("acme")
    acme = await tenant_id("acme")
    for _ in range(10):
        await emit_events(pg_pool, acme, 30, type_="message.sent")
    conn = await pg_pool.acquire()
    try:
        from gateway.events.sequencer import assign_batch

        while await assign_batch(conn, 1000):
            pass
    finally:
        await pg_pool.release(conn)
    aggregators = [StatsAggregator(pg_pool, database_url, redis_client, batch=7) for _ in range(4)]

    async def drain(agg: StatsAggregator) -> None:
        while await agg.step():
            pass

    await asyncio.gather(*(drain(a) for a in aggregators))
    assert int(await redis_client.hget(f"trunkline:stats:{acme}", "messages:sent")) == 300
