"""Issue 10 items 4 and 5: our outage told apart from a bug, and a job that meets it keeps
its retry budget. The errors are real ones, from real clients against real servers (or
against an address where nothing listens); nothing is mocked."""

from __future__ import annotations

import asyncio
import pathlib

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from gateway import queue
from gateway.outage import OutageMonitor, unavailable
from gateway.redis import create_redis
from tests.helpers import eventually, free_port


async def _raised(coro) -> BaseException:
    try:
        await coro
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


async def test_database_outages_are_recognised(tmp_path: pathlib.Path):
    port = free_port()  # nothing listens there
    refused = await _raised(asyncpg.connect(f"postgresql://u@127.0.0.1:{port}/db", timeout=5))
    assert unavailable(refused) == "database", repr(refused)
    no_socket = await _raised(asyncpg.connect(f"postgresql://u@/db?host={tmp_path}", timeout=5))
    assert isinstance(no_socket, OSError)
    assert unavailable(no_socket) == "database", repr(no_socket)
    for exc in (
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.InterfaceError("cannot perform operation: connection is closed"),
        # An idle connection that got the shutdown's FATAL, used before its socket closed
        # (seen in tests/outages at `pg_ctl stop -m fast`): asyncpg's ERROR_CONSUME state.
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    ):
        assert unavailable(exc) == "database", repr(exc)


async def test_a_pool_that_cannot_hand_out_a_connection_in_time_is_an_outage(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire():
            timeout = await _raised(pool.acquire(timeout=0.05))
        assert isinstance(timeout, TimeoutError)
        assert unavailable(timeout) == "database"
    finally:
        await pool.close()


async def test_redis_outages_are_recognised():
    client = create_redis(f"redis://127.0.0.1:{free_port()}")
    try:
        exc = await _raised(client.ping())
    finally:
        await client.aclose()
    assert unavailable(exc) == "redis", repr(exc)
    from redis import exceptions as r

    for exc in (r.TimeoutError("Timeout reading from socket"), r.BusyLoadingError("LOADING")):
        assert unavailable(exc) == "redis"
    assert unavailable(r.AuthenticationError("invalid password")) is None  # configuration


async def test_bugs_stay_bugs(pg_pool, redis_client: aioredis.Redis, tmp_path: pathlib.Path):
    from redis import exceptions as r

    assert unavailable(await _raised(pg_pool.fetchval("SELECT 1/0"))) is None
    assert unavailable(await _raised(pg_pool.fetchval("SELEC 1"))) is None
    assert unavailable(await _raised(pg_pool.fetchval("SELECT $1::int", "x"))) is None
    assert unavailable(await _raised(redis_client.eval("return redis.call('nope')", 0))) is None
    assert unavailable(r.ResponseError("WRONGTYPE")) is None
    busy = asyncpg.exceptions.InterfaceError(
        "cannot perform operation: another operation is in progress"
    )
    assert unavailable(busy) is None  # a misused connection is our bug (issue 10 item 12)
    try:
        (tmp_path / "missing").stat()
    except FileNotFoundError as exc:
        assert unavailable(exc) is None  # an OSError, but not from a database or Redis client
    assert unavailable(ConnectionRefusedError("our own code")) is None
    assert unavailable(KeyError("x")) is None

    # A bug raised while handling an outage is still a bug; one that wraps it is the outage.
    try:
        try:
            await pg_pool.fetchval("SELECT 1/0")
        except asyncpg.PostgresError:
            raise r.ConnectionError("lost") from None
    except r.ConnectionError as outage:
        try:
            raise KeyError("oops")
        except KeyError as bug:
            bug.__context__ = outage
            assert unavailable(bug) is None
        wrapped = RuntimeError("wrapped")
        wrapped.__cause__ = outage
        assert unavailable(wrapped) == "redis"


async def test_the_monitor_logs_once_per_transition_and_probes_the_way_back():
    healthy = asyncio.Event()

    async def probe() -> None:
        if not healthy.is_set():
            raise ConnectionRefusedError("still down")

    monitor = OutageMonitor({"redis": probe}, probe_interval=0.02)
    try:
        with capture_logs() as logs:
            for _ in range(50):
                monitor.failed("redis", ConnectionRefusedError("down"))

            async def confirmed() -> bool:
                return monitor.down() == ["redis"]

            await eventually(confirmed, timeout=5)
            monitor.failed("redis", ConnectionRefusedError("down"))
            assert not await monitor.wait_up("redis", timeout=0.1)
            healthy.set()
            assert await monitor.wait_up("redis", timeout=5)
            # A connection found dead once the server is back (a LISTEN connection after a
            # restart) is confirmed by the probe to be no outage: nothing more is said.
            monitor.failed("redis", ConnectionResetError("lost while idle"))
            assert await monitor.wait_up("redis", timeout=5)
        events = [e["event"] for e in logs]
        assert events == ["redis unavailable", "redis available again"]
        assert monitor.transitions == [("redis", "down"), ("redis", "up")]
    finally:
        await monitor.aclose()


async def test_a_job_that_meets_an_outage_waits_without_spending_its_retry_budget(
    pg_pool, database_url
):
    """The breaker's Redis error used to count as an attempt: 20 of 30 messages were dead
    letters after a 20 s Redis outage. Here: 2 attempts allowed, 6 outages met, not dead."""
    dead: list[str] = []
    calls = 0
    down = create_redis(f"redis://127.0.0.1:{free_port()}")

    async def handler(job: queue.Job) -> None:
        nonlocal calls
        calls += 1
        if calls <= 6:
            await down.ping()  # a real redis-py ConnectionError

    async def on_dead(job: queue.Job, reason: str) -> None:
        dead.append(reason)

    worker = queue.Worker(
        pg_pool, database_url, "work", handler, on_dead=on_dead, outage_wait_max=0.05
    )
    async with pg_pool.acquire() as conn, conn.transaction():
        await queue.enqueue(conn, "work", {"n": 1}, max_attempts=2)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:

        async def done() -> bool:
            return await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0

        await eventually(done, timeout=20)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
        await down.aclose()
    assert calls == 7 and dead == []


@pytest.mark.parametrize("failure", ["bug", "provider"])
async def test_other_failures_still_spend_the_budget(pg_pool, database_url, failure):
    dead: list[str] = []

    async def handler(job: queue.Job) -> None:
        if failure == "bug":
            raise KeyError("a bug")
        raise queue.RetryableError("provider: upstream unavailable")

    async def on_dead(job: queue.Job, reason: str) -> None:
        dead.append(reason)

    worker = queue.Worker(pg_pool, database_url, "work", handler, on_dead=on_dead)
    async with pg_pool.acquire() as conn, conn.transaction():
        await queue.enqueue(conn, "work", {"n": 1}, max_attempts=1)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:

        async def buried() -> bool:
            return bool(dead)

        await eventually(buried, timeout=10)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
    assert await pg_pool.fetchval("SELECT state FROM jobs") == "dead"
