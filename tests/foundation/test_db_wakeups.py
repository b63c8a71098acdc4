"""Wake-ups are sent after commit, never for rolled-back work, and never lost to a
connection outside our pools."""

import asyncio

import asyncpg
import pytest

from gateway import db, queue
from gateway.events.outbox import NOTIFY_CHANNEL as EVENTS_CHANNEL
from gateway.events.outbox import NewEvent, emit
from gateway.tenants.service import create_tenant


@pytest.fixture
async def listener(database_url):
    """A LISTEN connection recording (channel, payload, jobs visible when it arrived)."""
    conn = await asyncpg.connect(database_url)
    peek = await asyncpg.connect(database_url)
    heard: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
    reading: set[asyncio.Future[None]] = set()
    one_at_a_time = asyncio.Lock()

    def on_notify(_conn: object, _pid: int, channel: str, payload: str) -> None:
        async def record() -> None:
            async with one_at_a_time:
                visible = await peek.fetchval("SELECT count(*) FROM jobs")
            heard.put_nowait((channel, payload, visible))

        task = asyncio.ensure_future(record())
        reading.add(task)
        task.add_done_callback(reading.discard)

    for channel in (queue.NOTIFY_CHANNEL, EVENTS_CHANNEL):
        await conn.add_listener(channel, on_notify)
    yield heard
    await conn.close()
    await peek.close()


async def test_a_commit_wakes_listeners_after_its_rows_are_visible(pg_pool, listener):
    tenant = await create_tenant(pg_pool, "wakeups")
    async with pg_pool.acquire() as conn, conn.transaction():
        await queue.enqueue(conn, "probe", {"n": 1})
        await emit(conn, NewEvent(tenant, "probe.happened", "s1"))
        await asyncio.sleep(0.2)
        assert listener.empty(), "woken before commit"
    heard = {(await asyncio.wait_for(listener.get(), 5))[:2] for _ in range(2)}
    assert heard == {(queue.NOTIFY_CHANNEL, "probe"), (EVENTS_CHANNEL, "")}


async def test_the_woken_listener_finds_the_committed_job(pg_pool, listener):
    async with pg_pool.acquire() as conn, conn.transaction():
        await queue.enqueue(conn, "probe", {"n": 1})
    channel, payload, visible = await asyncio.wait_for(listener.get(), 5)
    assert (channel, payload, visible) == (queue.NOTIFY_CHANNEL, "probe", 1)


async def test_rolled_back_work_wakes_nobody(pg_pool, listener):
    with pytest.raises(RuntimeError):
        async with pg_pool.acquire() as conn, conn.transaction():
            await queue.enqueue(conn, "probe", {"n": 1})
            raise RuntimeError("abort")
    async with pg_pool.acquire() as conn, conn.transaction():
        pass  # a later commit on the same connections must not carry the old wake-up
    await asyncio.sleep(0.3)
    assert listener.empty()


async def test_a_connection_outside_the_pool_notifies_in_its_own_transaction(
    database_url, listener
):
    conn = await db.connect(database_url)
    try:
        async with conn.transaction():
            await queue.enqueue(conn, "probe", {"n": 1})
        channel, payload, visible = await asyncio.wait_for(listener.get(), 5)
        assert (channel, payload, visible) == (queue.NOTIFY_CHANNEL, "probe", 1)
    finally:
        await conn.close()


async def test_many_concurrent_commits_share_wakeups(pg_pool, listener):
    async def one(i: int) -> None:
        async with pg_pool.acquire() as conn, conn.transaction():
            await queue.enqueue(conn, "probe", {"n": i})

    await asyncio.gather(*(one(i) for i in range(200)))
    await asyncio.sleep(0.5)
    wakes = listener.qsize()
    assert 1 <= wakes < 200, f"{wakes} NOTIFYs for 200 commits"
    assert await pg_pool.fetchval("SELECT count(*) FROM jobs") == 200
