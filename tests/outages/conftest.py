"""Servers of our own to take down: PostgreSQL and Redis that only this package's tests use.

The suite's session servers serve every other test and must never be stopped, so the outage
tests start a second PostgreSQL and Redis (the same `trunkline dev` machinery) once for all
the outage tests — each test leaves them running: the `outage` fixture starts what its test
stopped — and each test gets a fresh database cloned from a migrated template and an empty
Redis. Like the session's server it runs without fsync (tests/databases.py says why that
keeps what a crash of the server process would). `Outage` stops and starts them as an
operator or a crash would: PostgreSQL with `pg_ctl stop -m fast` (sessions terminated, the
socket gone) and restarted on the same data, Redis terminated and started again empty (no
persistence), on the same socket.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import db
from gateway.devservices import PrivatePostgres, PrivateRedis, short_runtime_dir
from tests.databases import throwaway_durability
from tests.helpers import with_database

_names = itertools.count()


@dataclass
class Servers:
    pg: PrivatePostgres
    redis: PrivateRedis
    pg_url: str
    redis_url: str
    template: str


@pytest.fixture(scope="session")
def outage_servers() -> Iterator[Servers]:
    root = short_runtime_dir("tl-out-")
    pg = PrivatePostgres(data_dir=pathlib.Path(root) / "pg", delete_on_stop=True)
    redis = PrivateRedis(data_dir=pathlib.Path(root) / "redis")
    try:
        pg_url = pg.start()
        asyncio.run(throwaway_durability(pg_url))
        redis_url = redis.start()
        template = "tl_outage_template"

        async def migrate() -> None:
            conn = await asyncpg.connect(pg_url)
            try:
                await conn.execute(f'CREATE DATABASE "{template}"')
            finally:
                await conn.close()
            await db.migrate(with_database(pg_url, template))

        asyncio.run(migrate())
        yield Servers(pg, redis, pg_url, redis_url, template)
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


class Outage:
    """One test's database and Redis on the outage servers, and the switches to cut them."""

    def __init__(self, servers: Servers, database_url: str) -> None:
        self.servers = servers
        self.database_url = database_url
        self.redis_url = servers.redis_url
        self.database_up = True
        self.redis_up = True

    async def stop_database(self) -> None:
        await asyncio.to_thread(self.servers.pg.halt, "fast")
        self.database_up = False

    async def start_database(self) -> None:
        await asyncio.to_thread(self.servers.pg.resume)
        self.database_up = True

    async def stop_redis(self) -> None:
        await asyncio.to_thread(self.servers.redis.stop)
        self.redis_up = False

    async def start_redis(self) -> None:
        await asyncio.to_thread(self.servers.redis.start)  # empty: no persistence
        self.redis_up = True


@pytest.fixture
async def outage(outage_servers: Servers) -> AsyncIterator[Outage]:
    name = f"tl_outage_{next(_names)}"
    admin = await asyncpg.connect(outage_servers.pg_url)
    try:
        await admin.execute(
            f'CREATE DATABASE "{name}" TEMPLATE "{outage_servers.template}" STRATEGY file_copy'
        )
    finally:
        await admin.close()
    client = aioredis.Redis.from_url(outage_servers.redis_url)
    await client.flushdb()
    await client.aclose()
    cut = Outage(outage_servers, with_database(outage_servers.pg_url, name))
    try:
        yield cut
    finally:  # a failed test must not leave the next one without servers
        if not cut.database_up:
            await cut.start_database()
        if not cut.redis_up:
            await cut.start_redis()
        admin = await asyncpg.connect(outage_servers.pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
