"""asyncpg pool and the SQL migration runner.

Migrations are numbered `NNNN_name.sql` files in `gateway/migrations/`. Each
is applied in its own transaction while holding a session advisory lock, so
two processes starting at once apply each file exactly once. Applied files are
checksummed: editing one after it ran is refused, because the database would
silently differ from what the file says.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

MIGRATION_LOCK_KEY = 0x7472756E6B  # "trunk"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database and the migration files disagree; the message says how."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("gateway.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {versions}")
    return found


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, **kwargs)
    await _init_connection(conn)
    return conn


class PooledConnection(asyncpg.Connection):
    """A pooled connection released without asyncpg's reset query.

    asyncpg sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release: one more round trip per acquire. Pooled connections here never hold
    session-level state (LISTEN and session advisory locks use dedicated connections;
    transactions take xact-scoped locks), so there is nothing to reset; an open
    transaction is still rolled back by asyncpg itself.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, command_timeout: float = 30.0
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
        connection_class=PooledConnection,
    )
    assert pool is not None
    return pool


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied_migrations(conn: asyncpg.Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


def _verify(applied: dict[int, str], files: list[Migration]) -> list[Migration]:
    """Refuse edited or unknown applied migrations; return the pending ones."""
    by_version = {m.version: m for m in files}
    for version, checksum in sorted(applied.items()):
        mig = by_version.get(version)
        if mig is None:
            raise MigrationError(
                f"database has migration {version:04d} that this build does not ship "
                "(is an older build running against a newer database?)"
            )
        if mig.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{mig.name}.sql was edited after it was applied "
                f"(checksum {checksum[:12]} in the database, {mig.checksum[:12]} on disk); "
                "add a new migration instead of editing an applied one"
            )
    return [m for m in files if m.version not in applied]


async def migrate(url: str) -> list[Migration]:
    """Apply pending migrations; safe to run from many processes at once."""
    files = load_migrations()
    conn = await connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(_CREATE_LEDGER)
            pending = _verify(await applied_migrations(conn), files)
            for mig in pending:
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
            return pending
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


async def migrations_current(conn: asyncpg.Connection) -> bool:
    """True when every shipped migration is applied and none was edited."""
    try:
        return not _verify(await applied_migrations(conn), load_migrations())
    except MigrationError:
        return False
