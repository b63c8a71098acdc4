"""The connection the suppression query keeps between evaluations, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway import db
from guardrails import lease as lease_mod
from guardrails.lease import LeasedConnection

PID = "SELECT pg_backend_pid() AS pid"


@pytest.fixture
async def pool(database_url):
    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_back_to_back_queries_keep_one_connection(pool):
    lease = LeasedConnection(pool)
    pids = {(await lease.fetchrow(PID))["pid"] for _ in range(20)}
    assert len(pids) == 1
    assert pool.get_size() - pool.get_idle_size() == 1  # leased: in use, from the pool's view
    await lease.aclose()
    assert pool.get_size() == pool.get_idle_size()


async def test_concurrent_queries_use_the_pool_beside_it(pool):
    lease = LeasedConnection(pool)
    await lease.fetchrow(PID)
    rows = await asyncio.gather(
        *(lease.fetchrow("SELECT pg_backend_pid() AS pid, pg_sleep(0.05)") for _ in range(4))
    )
    assert len({r["pid"] for r in rows}) == 4
    await lease.aclose()


async def test_an_idle_connection_goes_back_to_the_pool(pool):
    lease = LeasedConnection(pool)
    await lease.fetchrow(PID)
    assert pool.get_idle_size() < pool.get_size()
    await asyncio.sleep(lease_mod.IDLE_S * 3)
    assert pool.get_idle_size() == pool.get_size()
    assert (await lease.fetchrow("SELECT 1 AS one"))["one"] == 1  # and is taken again when needed
    await lease.aclose()


async def test_closing_the_pool_does_not_wait_for_a_kept_connection(database_url):
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    lease = LeasedConnection(pool)
    await lease.fetchrow(PID)
    started = time.monotonic()
    await asyncio.wait_for(pool.close(), timeout=5)
    assert time.monotonic() - started < 1.0


async def test_a_failed_query_gives_the_connection_back(pool):
    lease = LeasedConnection(pool)
    await lease.fetchrow(PID)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await lease.fetchrow("SELECT 1 / 0")
    assert pool.get_idle_size() == pool.get_size()
    assert (await lease.fetchrow("SELECT 1 AS one"))["one"] == 1
    await lease.aclose()


async def test_a_cancelled_query_gives_the_connection_back_and_the_next_one_works(pool):
    lease = LeasedConnection(pool)
    await lease.fetchrow(PID)
    slow = asyncio.ensure_future(lease.fetchrow("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert (await lease.fetchrow("SELECT 2 AS two"))["two"] == 2
    await lease.aclose()
    assert pool.get_idle_size() == pool.get_size()


# --- never a connection with an operation on it ------------------------------------------------
# Pooled connections are released without asyncpg's reset query (gateway/db.py), so the pool no
# longer finds out by itself that a connection is still busy: whatever gives one back must know
# its operation has ended, or the next acquirer gets "another operation is in progress".


@pytest.fixture
async def one(database_url):
    """A pool of one connection: whatever the lease gives back is what the next user gets."""
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    yield pool
    await pool.close()


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005, 0.05])
async def test_a_query_cancelled_at_any_point_leaves_the_one_connection_usable(one, delay):
    """Cancelled before it is sent, while it is prepared, or while the server runs it: the lease
    gives the connection back only once asyncpg's cancellation has settled, so the lease itself
    and the pool's next user both get a free connection."""
    lease = LeasedConnection(one)
    pid = (await lease.fetchrow(PID))["pid"]
    for round_ in range(3):
        # a new text each time, so the cancel can also land while it is being prepared
        slow = asyncio.ensure_future(lease.fetchrow(f"SELECT pg_sleep(5), {round_} AS r"))
        await asyncio.sleep(delay)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert (await lease.fetchrow(f"SELECT {round_} AS r, pg_backend_pid() AS pid"))[
            "pid"
        ] == pid
        assert await one.fetchval("SELECT pg_backend_pid()") == pid
    await lease.aclose()
    assert one.get_idle_size() == one.get_size() == 1


async def test_aclose_while_a_query_runs_on_the_kept_connection_waits_for_it(one):
    """`aclose()` (the chain closing, e.g. at shutdown) used to hand the kept connection back
    while an evaluation's query was still running on it: the pool's next user then failed with
    "another operation is in progress"."""
    lease = LeasedConnection(one)
    await lease.fetchrow(PID)
    running = asyncio.ensure_future(lease.fetchrow("SELECT pg_sleep(0.3), 7 AS n"))
    await asyncio.sleep(0.05)
    await lease.aclose()
    assert await one.fetchval("SELECT 8") == 8
    assert (await running)["n"] == 7
    assert one.get_idle_size() == one.get_size() == 1


async def test_aclose_while_a_query_is_cancelled_on_the_kept_connection(one):
    lease = LeasedConnection(one)
    await lease.fetchrow(PID)
    running = asyncio.ensure_future(lease.fetchrow("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.05)
    running.cancel()
    await lease.aclose()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await one.fetchval("SELECT 9") == 9


async def test_the_pool_never_hands_out_a_connection_released_mid_query(one):
    """Whatever the caller did wrong (here: a query left running by a failed gather), a
    connection given back while a query runs on it is closed, never handed to the next user."""

    async def boom() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    left_running: list[asyncio.Future] = []
    with pytest.raises((RuntimeError, asyncpg.InterfaceError)):
        async with one.acquire() as conn:
            query = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(0.5)"))
            left_running.append(query)
            await asyncio.gather(query, boom())
    assert await one.fetchval("SELECT 10") == 10  # a fresh connection, not the busy one
    with pytest.raises((asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)):
        await left_running[0]


async def test_a_kept_connection_the_server_closed_is_replaced_not_used(pool):
    """A PostgreSQL shutdown closes the kept connection while it idles: asyncpg takes it back
    and detaches the proxy at once. The next query must not fail with InterfaceError
    "connection has been released back to the pool" (a 500 in tests/outages/test_under_load.py,
    a crashed job handler at dispatch) but run on a new connection."""
    lease = LeasedConnection(pool)
    kept = (await lease.fetchrow(PID))["pid"]
    async with pool.acquire() as other:
        assert await other.fetchval("SELECT pg_terminate_backend($1)", kept)
    for _ in range(200):  # until asyncpg has seen the socket close and taken the holder back
        if pool.get_idle_size() == pool.get_size():
            break
        await asyncio.sleep(0.01)
    assert (await lease.fetchrow(PID))["pid"] != kept
    await lease.aclose()
    assert pool.get_size() == pool.get_idle_size()
