"""Migrations: concurrent runners apply each file once; an edited applied file is refused."""

import asyncio

import asyncpg
import pytest

from gateway import db
from tests.helpers import trunkline, with_database


async def test_two_migrate_processes_at_once_apply_each_migration_once(pg_server_url, daemon_env):
    name = "tl_fresh_migrate"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(pg_server_url, name)
        env = daemon_env | {"TRUNKLINE_DATABASE__URL": url}
        first, second = await asyncio.gather(
            asyncio.to_thread(trunkline, "migrate", env=env),
            asyncio.to_thread(trunkline, "migrate", env=env),
        )
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        outputs = first.stdout + second.stdout
        for mig in db.load_migrations():
            assert outputs.count(f"applied {mig.version:04d}_{mig.name}") == 1
        conn = await db.connect(url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == [m.version for m in db.load_migrations()]
            assert await db.migrations_current(conn)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrate_is_a_no_op_when_current(database_url):
    assert await db.migrate(database_url) == []


async def test_edited_applied_migration_is_refused(database_url, pg_pool):
    await pg_pool.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(db.MigrationError, match="edited after it was applied"):
        await db.migrate(database_url)
    async with pg_pool.acquire() as conn:
        assert not await db.migrations_current(conn)


async def test_unknown_applied_migration_is_refused(database_url, pg_pool):
    await pg_pool.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
    )
    with pytest.raises(db.MigrationError, match="does not ship"):
        await db.migrate(database_url)
