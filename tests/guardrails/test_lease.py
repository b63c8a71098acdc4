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
