"""Gap-free resume under concurrency: the property the event ids exist for.

20 writers commit events for two tenants in overlapping transactions (so rows
commit out of insertion order) while SSE clients read a random number of
events, drop the connection and resume from their last id, and JSON pollers
page with random limits. Every client must end up with exactly its tenant's
events: each once, in id order, none of the other tenant's.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg

from gateway import db
from gateway.events.outbox import NewEvent, emit
from gateway.resources import RESOURCES
from tests.events.sse import SSEStream, sse_headers
from tests.helpers import auth

WRITERS = 20
TRANSACTIONS = 12


async def _write(pool: asyncpg.Pool, tenants: list, rng: random.Random) -> None:
    for n in range(TRANSACTIONS):
        async with pool.acquire() as conn, conn.transaction():
            for k in range(rng.randint(1, 3)):
                tenant = rng.choice(tenants)
                await emit(conn, NewEvent(tenant, "message.sent", f"w{id(rng)}-{n}-{k}", None, {}))
                # Hold the transaction open a little so commits interleave out of id order.
                await asyncio.sleep(rng.uniform(0, 0.006))
        await asyncio.sleep(rng.uniform(0, 0.01))


async def test_every_client_sees_every_event_of_its_tenant_once_in_order(
    client, make_key, tenant_id, database_url
):
    tokens = {"tenant-a": await make_key("tenant-a"), "tenant-b": await make_key("tenant-b")}
    ids = {name: await tenant_id(name) for name in tokens}
    writers_pool = await db.create_pool(database_url, min_size=WRITERS, max_size=WRITERS)
    done = asyncio.Event()
    expected: dict[str, list[int]] = {}
    reconnects = 0

    async def sse_client(name: str, rng: random.Random) -> list[int]:
        nonlocal reconnects
        seen: list[int] = []
        last = 0
        while not (done.is_set() and len(seen) >= len(expected[name])):
            if rng.random() < 0.5:
                resp = await client.get("/v1/events", headers=sse_headers(tokens[name], last))
            else:  # a browser's first connect: the id in the query string
                resp = await client.get(
                    f"/v1/events?last_event_id={last}", headers=sse_headers(tokens[name])
                )
            assert resp.status == 200
            stream = SSEStream(resp)
            # Mostly short visits; some stay long enough to go from replay into live.
            take = rng.randint(1, 15) if rng.random() < 0.8 else rng.randint(30, 120)
            if done.is_set():
                take = min(take, len(expected[name]) - len(seen))
            try:
                for _ in range(take):
                    frame = await stream.next(timeout=0.3)
                    assert frame is not None
                    assert frame.event == "message.sent", frame
                    seen.append(frame.seq)
                    last = frame.seq
            except TimeoutError:
                pass
            finally:
                await stream.close()
            reconnects += 1
            await asyncio.sleep(rng.uniform(0, 0.01))
        return seen

    async def poller(name: str, rng: random.Random) -> list[int]:
        seen: list[int] = []
        after = 0
        while not (done.is_set() and len(seen) >= len(expected[name])):
            resp = await client.get(
                f"/v1/events/page?after={after}&limit={rng.randint(1, 25)}",
                headers=auth(tokens[name]),
            )
            page = await resp.json()
            seen += [e["id"] for e in page["data"]]
            after = page["last_event_id"]
            if not page["has_more"]:
                await asyncio.sleep(rng.uniform(0, 0.01))
        return seen

    rng = random.Random(20251123)
    clients = {
        (name, kind, i): asyncio.create_task(
            (sse_client if kind == "sse" else poller)(name, random.Random(rng.random()))
        )
        for name in tokens
        for kind, count in (("sse", 3), ("page", 1))
        for i in range(count)
    }
    try:
        tenants = list(ids.values())
        await asyncio.gather(
            *[_write(writers_pool, tenants, random.Random(rng.random())) for _ in range(WRITERS)]
        )
        for name, tid in ids.items():
            expected[name] = [
                r["id"]
                for r in await writers_pool.fetch(
                    "SELECT id FROM events WHERE tenant_id = $1 ORDER BY id", tid
                )
            ]
        # Once every event is sequenced, the expected list is the tenant's seqs in order.
        for _ in range(750):
            if not await writers_pool.fetchval("SELECT count(*) FROM events WHERE seq IS NULL"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the sequencer did not catch up")
        for name, tid in ids.items():
            expected[name] = [
                r["seq"]
                for r in await writers_pool.fetch(
                    "SELECT seq FROM events WHERE tenant_id = $1 ORDER BY seq", tid
                )
            ]
        done.set()
        results = await asyncio.wait_for(asyncio.gather(*clients.values()), 30)
    finally:
        for task in clients.values():
            task.cancel()
        await writers_pool.close()

    total = sum(len(v) for v in expected.values())
    assert total >= WRITERS * TRANSACTIONS
    for (name, kind, i), seen in zip(clients, results, strict=True):
        assert seen == expected[name], f"{kind} client {i} of {name}"
    assert reconnects > 20, reconnects  # the clients really did drop and resume, many times
    print(f"{total} events, {reconnects} SSE reconnects")
    # Sanity: the writers really committed out of insertion order at least once.
    out_of_order = await client.app[RESOURCES].db.fetchval(
        "SELECT count(*) FROM (SELECT id, seq, lag(id) OVER (ORDER BY seq) AS prev FROM events) x "
        "WHERE prev > id"
    )
    assert out_of_order > 0


async def test_handoff_from_replay_to_live_loses_nothing_when_replay_is_slow(
    client, make_key, tenant_id, pg_pool, monkeypatch
):
    """Events that commit while a replay query is in flight arrive live, once."""
    from gateway.events import stream as stream_mod

    real_page = stream_mod.log.tenant_page

    async def slow_page(*args, **kwargs):
        rows = await real_page(*args, **kwargs)
        await asyncio.sleep(0.03)  # the snapshot is taken; events keep committing meanwhile
        return rows

    monkeypatch.setattr(stream_mod.log, "tenant_page", slow_page)
    token = await make_key("acme")
    acme = await tenant_id("acme")
    writing = True

    async def writer() -> None:
        for n in range(150):
            async with pg_pool.acquire() as conn, conn.transaction():
                await emit(conn, NewEvent(acme, "call.ringing", f"c{n}", None, {}))
            await asyncio.sleep(0.004)

    async def reader(rng: random.Random) -> list[int]:
        seen: list[int] = []
        while writing or not seen or seen[-1] < expected[-1]:
            stream = SSEStream(
                await client.get("/v1/events", headers=sse_headers(token, seen[-1] if seen else 0))
            )
            try:
                for _ in range(rng.randint(1, 12)):
                    frame = await stream.next(timeout=0.3)
                    assert frame is not None
                    seen.append(frame.seq)
            except TimeoutError:
                pass
            finally:
                await stream.close()
        return seen

    expected: list[int] = [0]
    readers = [asyncio.create_task(reader(random.Random(i))) for i in range(3)]
    try:
        await writer()
        for _ in range(750):
            if not await pg_pool.fetchval("SELECT count(*) FROM events WHERE seq IS NULL"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the sequencer did not catch up")
        expected = [r["seq"] for r in await pg_pool.fetch("SELECT seq FROM events ORDER BY seq")]
        writing = False
        results = await asyncio.wait_for(asyncio.gather(*readers), 30)
    finally:
        for r in readers:
            r.cancel()
    for seen in results:
        assert seen == expected
