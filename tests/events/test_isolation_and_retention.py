"""Tenant isolation on every event surface, and the retention worker."""

from __future__ import annotations

import asyncio

from tests.events.sse import SSEStream, sse_headers
from tests.events.support import emit_events
from tests.events.test_sse import wait_sequenced
from tests.helpers import auth


async def test_tenant_b_sees_none_of_tenant_a_events(pg_pool, client, make_key, tenant_id):
    token_a, token_b = await make_key("tenant-a"), await make_key("tenant-b")
    a, b = await tenant_id("tenant-a"), await tenant_id("tenant-b")
    live_b = SSEStream(await client.get("/v1/events", headers=sse_headers(token_b)))
    await emit_events(pg_pool, a, 5, type_="message.sent", secret="of-a")
    await emit_events(pg_pool, b, 1, type_="message.sent", mine=True)
    await wait_sequenced(pg_pool, 6)

    # Live: B's first (and only) event is its own.
    frame = await live_b.next(timeout=10)
    assert frame.json["data"] == {"i": 0, "mine": True}
    await live_b.close()
    # Replay from the very start: still only B's.
    replay_b = SSEStream(await client.get("/v1/events", headers=sse_headers(token_b, 0)))
    frames = [await replay_b.next(timeout=10)]
    try:
        extra = await replay_b.next(timeout=0.3)
    except TimeoutError:
        extra = None
    await replay_b.close()
    assert extra is None and [f.json["data"] for f in frames] == [{"i": 0, "mine": True}]
    # The JSON page.
    page = await (await client.get("/v1/events/page?after=0", headers=auth(token_b))).json()
    assert [e["data"] for e in page["data"]] == [{"i": 0, "mine": True}]
    assert "of-a" not in str(page)
    page_a = await (await client.get("/v1/events/page", headers=auth(token_a))).json()
    assert len(page_a["data"]) == 5 and all(e["data"]["secret"] == "of-a" for e in page_a["data"])
    assert str(b) not in str(page_a) and str(a) not in str(page)


async def test_retention_prunes_old_events_and_moves_the_low_water_mark(
    pg_pool, app_client, make_key, tenant_id
):
    client = await app_client(events={"retention": 60, "prune_interval": 0.05, "prune_batch": 2})
    token = await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 5)
    seqs = await wait_sequenced(pg_pool, 5)
    await pg_pool.execute(
        "UPDATE events SET created_at = now() - interval '2 minutes' WHERE seq <= $1", seqs[2]
    )
    for _ in range(750):
        if await pg_pool.fetchval("SELECT pruned_through FROM event_retention") == seqs[2]:
            break
        await asyncio.sleep(0.02)
    remaining = [r["seq"] for r in await pg_pool.fetch("SELECT seq FROM events ORDER BY seq")]
    assert remaining == seqs[3:]
    page = await (await client.get("/v1/events/page", headers=auth(token))).json()
    assert [e["id"] for e in page["data"]] == seqs[3:] and page["reset"] is False
