"""The sequencer: commit-ordered ids, one leader at a time, and a hub that fills lost messages."""

from __future__ import annotations

import asyncio
import json

from gateway import db
from gateway.events import bus
from gateway.events.http import HUB
from gateway.events.model import COLUMNS, event_json, spliced_event_json
from gateway.events.outbox import NewEvent, emit
from gateway.events.sequencer import Sequencer, assign_batch
from tests.events.sse import SSEStream, sse_headers
from tests.events.support import emit_events


async def test_an_event_that_commits_late_gets_a_later_id(
    pg_pool, make_key, tenant_id, database_url
):
    """Row ids are taken at INSERT; seq is taken at commit time: resuming after seq is safe."""
    await make_key("acme")
    acme = await tenant_id("acme")
    slow = await db.connect(database_url)
    seqconn = await db.connect(database_url)
    try:
        tx = slow.transaction()
        await tx.start()
        await emit(slow, NewEvent(acme, "message.sent", "slow", None, {}))  # lower id, still open
        await emit_events(pg_pool, acme, 1, type_="message.sent")  # higher id, committed
        first = await assign_batch(seqconn, 100)
        assert [r["subject"] for r in first] == ["subj-0"]
        await tx.commit()
        second = await assign_batch(seqconn, 100)
        assert [r["subject"] for r in second] == ["slow"]
    finally:
        await slow.close()
        await seqconn.close()
    rows = await pg_pool.fetch("SELECT id, seq, subject FROM events ORDER BY seq")
    slow_row, fast_row = rows[1], rows[0]
    # A reader that had seen the fast event by *id* would never look below it again...
    assert slow_row["id"] < fast_row["id"]
    # ...by seq, the late event comes after what the reader saw.
    assert slow_row["seq"] > fast_row["seq"]


async def test_a_batch_is_numbered_in_insertion_order(pg_pool, make_key, tenant_id, database_url):
    await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 50)
    conn = await db.connect(database_url)
    try:
        rows = await assign_batch(conn, 1000)
    finally:
        await conn.close()
    assert [r["seq"] for r in rows] == list(range(rows[0]["seq"], rows[0]["seq"] + 50))
    ordered = await pg_pool.fetch("SELECT id, seq FROM events ORDER BY id")
    assert [r["seq"] for r in ordered] == [r["seq"] for r in rows]


async def test_one_sequencer_works_at_a_time_and_another_takes_over(
    pg_pool, redis_client, make_key, tenant_id, database_url
):
    await make_key("acme")
    acme = await tenant_id("acme")
    a = Sequencer(database_url, redis_client, interval=0.05)
    b = Sequencer(database_url, redis_client, interval=0.05)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    await _until(lambda: a.leader)
    task_b = asyncio.create_task(b.run(stop_b))
    try:
        await emit_events(pg_pool, acme, 3)
        await _until(lambda: a.sequenced == 3)
        assert not b.leader and b.sequenced == 0
        stop_a.set()
        await task_a
        await _until(lambda: b.leader)
        await emit_events(pg_pool, acme, 2)
        await _until(lambda: b.sequenced == 2)
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(task_a, task_b)
    seqs = [r["seq"] for r in await pg_pool.fetch("SELECT seq FROM events ORDER BY id")]
    assert seqs == sorted(seqs) and None not in seqs


async def _until(predicate, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_the_hub_fills_messages_lost_on_the_bus_from_the_log(
    app_client, redis_client, make_key, tenant_id, pg_pool, database_url
):
    """Pub/sub drops a message in the middle and the last one: the client still gets all, in order."""
    client = await app_client("api")  # no worker tasks: this test runs its own sequencer
    token = await make_key("acme")
    acme = await tenant_id("acme")
    lost = {"subj-2", "subj-5"}

    async def lossy_publish(rows):
        await bus.publish(redis_client, [r for r in rows if r["subject"] not in lost])

    sequencer = Sequencer(database_url, redis_client, interval=0.05, publish=lossy_publish)
    stopping = asyncio.Event()
    task = asyncio.create_task(sequencer.run(stopping))
    try:
        stream = SSEStream(await client.get("/v1/events", headers=sse_headers(token)))
        for i in range(6):  # one event per batch: subj-2 is missing between 1 and 3
            async with pg_pool.acquire() as conn, conn.transaction():
                await emit(conn, NewEvent(acme, "message.sent", f"subj-{i}", None, {}))
            await _until(lambda i=i: sequencer.sequenced == i + 1)
        frames = [await stream.next(timeout=10) for _ in range(6)]
        # subj-5 was the last: nothing follows it on the bus, the idle resync finds it.
        assert [f.json["subject"] for f in frames] == [f"subj-{i}" for i in range(6)]
        seqs = [f.seq for f in frames]
        assert seqs == sorted(seqs)
        assert client.app[HUB].hub.filled == 2  # ...and those two came from the log
        await stream.close()
    finally:
        stopping.set()
        await task


async def test_the_published_json_is_the_logs_with_the_data_spliced(
    pg_pool, make_key, tenant_id, database_url
):
    """The sequencer publishes each event with its data as PostgreSQL's text, not decoded and
    encoded again: the same JSON value as the log's reader gets (event_json), one line each."""
    await make_key("acme")
    acme = await tenant_id("acme")
    data = {
        "text": 'two\nlines, a "quote", a tab\t, \\ and ünïcödé ✓ \u0001',
        "numbers": [0, -1, 2**53, 1.5, 1e-7, 0.30000000000000004, 12.34],
        "nested": {"z": None, "a": [True, False, {}], "": "empty key"},
    }
    async with pg_pool.acquire() as conn, conn.transaction():
        await emit(conn, NewEvent(acme, "message.sent", "s-1", "t" * 32, data))
        await emit(conn, NewEvent(acme, "message.sent", "s-2", None, {}))
    conn = await db.connect(database_url)
    try:
        published = await assign_batch(conn, 100)
    finally:
        await conn.close()
    logged = await pg_pool.fetch(f"SELECT {COLUMNS} FROM events ORDER BY seq")
    assert len(published) == len(logged) == 2
    for sequenced, row in zip(published, logged, strict=True):
        line = spliced_event_json(sequenced)
        assert "\n" not in line
        assert json.loads(line) == json.loads(event_json(row))
    assert json.loads(spliced_event_json(published[0]))["data"] == data
