"""Fixtures: a clean database on real PostgreSQL and a clean real Redis for each test.

TRUNKLINE_TEST_DATABASE_URL / TRUNKLINE_TEST_REDIS_URL point at servers to use;
without them the suite starts private servers exactly as `trunkline dev` does.
Each test gets its own database cloned from a migrated template (fast, no
initdb per test; cloned ahead of need and dropped after the test, both in a thread of
their own: tests/databases.py) and an empty Redis database.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import db
from gateway.devservices import PrivatePostgres, PrivateRedis, short_runtime_dir
from tests.clock import INSTANTS, MovingClock, real_time_of_day
from tests.databases import DatabaseClones, throwaway_durability
from tests.helpers import free_port, with_database

# --- the time of day: chosen by each test, never the hour the suite runs at ---------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hours: the test depends on the time of day (calling hours, schedules, deferrals): "
        "it runs at a pinned day and a pinned night instant (tests/clock.py)",
    )


# TRUNKLINE_TEST_REAL_CLOCK=1: no pinning — the guardrails read the real clock, and a test
# marked `hours` runs once, as the variant of the real time of day (a check that the pinned
# instants stand for what the real hours do; CI runs pinned, both variants).
REAL_CLOCK = bool(os.environ.get("TRUNKLINE_TEST_REAL_CLOCK"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("hours"):
        variants = [real_time_of_day()] if REAL_CLOCK else ["day", "night"]
        metafunc.parametrize("time_of_day", variants, indirect=True)


@pytest.fixture
def time_of_day(request: pytest.FixtureRequest) -> str:
    """`day` or `night` for a test marked `hours`; `day` for every other test."""
    return getattr(request, "param", real_time_of_day() if REAL_CLOCK else "day")


@pytest.fixture(autouse=True)
def guardrail_clock(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, time_of_day: str
) -> Iterator[MovingClock]:
    """Every app's guardrail chain reads this clock, started at the test's time of day.

    A test not marked `hours` runs at the day instant, and fails if calling hours consulted
    the time of day for it (a check that was not exempt and had rules to apply): such a test
    would behave otherwise at night, so it must be marked and pass at both instants. A test
    that sets a chain's clock itself is in control of it and is not counted.
    """
    import gateway.app
    import guardrails.checks

    clock = MovingClock(datetime.now(UTC) if REAL_CLOCK else INSTANTS[time_of_day])
    build_chain = gateway.app.build_chain

    def pinned(res):  # type: ignore[no-untyped-def]
        chain = build_chain(res)
        chain.clock = clock
        return chain

    monkeypatch.setattr(gateway.app, "build_chain", pinned)
    consulted: list[str] = []
    check = guardrails.checks.check_calling_hours

    def recording(number, now, **kw):  # type: ignore[no-untyped-def]
        verdict = check(number, now, **kw)
        inputs = verdict.inputs
        if (
            clock.issued(now)
            and not inputs.get("exempt_transactional")
            and inputs.get("rules_applied")
            and inputs.get("zones")
        ):
            consulted.append(f"{kw.get('channel')} {kw.get('purpose')} to {number}")
        return verdict

    monkeypatch.setattr(guardrails.checks, "check_calling_hours", recording)
    yield clock
    if consulted and not request.node.get_closest_marker("hours"):
        pytest.fail(
            "calling hours consulted the time of day for this test "
            f"({', '.join(sorted(set(consulted))[:3])}): mark it @pytest.mark.hours so that "
            "it runs, and passes, at a day and a night instant (tests/clock.py)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def runtime_dir() -> Iterator[str]:
    path = short_runtime_dir("tl-test-")
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(runtime_dir: str) -> Iterator[str]:
    url = os.environ.get("TRUNKLINE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = PrivatePostgres(data_dir=pathlib.Path(runtime_dir) / "pg", delete_on_stop=True)
    url = server.start()
    asyncio.run(throwaway_durability(url))
    yield url
    server.stop()


@pytest.fixture(scope="session")
def redis_server_url(runtime_dir: str) -> Iterator[str]:
    url = os.environ.get("TRUNKLINE_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = PrivateRedis(data_dir=pathlib.Path(runtime_dir) / "redis")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """A migrated database that every test's database is cloned from."""
    name = f"tl_template_{os.getpid()}"

    async def setup() -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await db.migrate(with_database(pg_server_url, name))

    async def teardown() -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


@pytest.fixture(scope="session")
def database_clones(pg_server_url: str, template_database: str) -> Iterator[DatabaseClones]:
    """Clones of the template made ahead of the tests that take them (tests/databases.py)."""
    clones = DatabaseClones(pg_server_url, template_database)
    clones.start()
    yield clones
    clones.close()


@pytest.fixture
async def database_url(database_clones: DatabaseClones) -> AsyncIterator[str]:
    """The test's own database, a clone of the migrated template, dropped after the test."""
    url = await database_clones.take()
    yield url
    database_clones.drop(url)


@pytest.fixture
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def redis_url(redis_server_url: str) -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(redis_server_url)
    await client.flushdb()
    await client.aclose()
    yield redis_server_url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    from gateway.redis import create_redis

    client = create_redis(redis_url)
    yield client
    await client.aclose()


# --- the daemon's pieces, as users meet them --------------------------------------------


@pytest.fixture
def settings(database_url: str, redis_url: str):
    from gateway.settings import load_settings

    return load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
    )


@pytest.fixture
def _database_before_apps(request: pytest.FixtureRequest) -> None:
    """Set up the test's database (if it has one) before `aiohttp_client`, so that pytest
    tears it down after: every app a test started closes before its database is dropped.

    Otherwise a test asking for `aiohttp_client` ahead of `settings` dropped the database
    under a live app, whose supervised tasks then crashed on it one by one, each logging a
    traceback, for a minute or more of teardown."""
    if "database_url" in request.fixturenames:
        request.getfixturevalue("database_url")


@pytest.fixture
def aiohttp_client(_database_before_apps: None, aiohttp_client):  # type: ignore[no-untyped-def]
    """pytest-aiohttp's `aiohttp_client`, torn down before the test's database."""
    return aiohttp_client


@pytest.fixture
async def client(aiohttp_client, settings):
    """An aiohttp test client for the real app (all roles) on real PostgreSQL and Redis."""
    from gateway.app import create_app

    test_client = await aiohttp_client(create_app(settings, role="all"))
    yield test_client
    await test_client.close()  # before the database fixture drops the database under the workers


@pytest.fixture
def make_key(pg_pool):
    """Create a tenant (if new) and an API key for it; returns the bearer token."""
    from gateway.core.errors import Problem
    from gateway.tenants.service import create_key, create_tenant

    async def make(tenant: str = "acme", scopes: list[str] | None = None) -> str:
        try:
            await create_tenant(pg_pool, tenant)
        except Problem as exc:
            if exc.code != "tenant_exists":
                raise
        return (await create_key(pg_pool, tenant, scopes)).token

    return make


@pytest.fixture
def daemon_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Environment for running `trunkline` as a separate process against this test's servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env |= {
        "TRUNKLINE_DATABASE__URL": database_url,
        "TRUNKLINE_REDIS__URL": redis_url,
        "TRUNKLINE_HTTP__PORT": str(free_port()),
        "TRUNKLINE_LOG__FORMAT": "json",
    }
    return env
