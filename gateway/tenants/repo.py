"""SQL for tenants and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg


async def insert_tenant(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: uuid.UUID, name: str
) -> None:
    await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tenant_id, name)


async def tenant_by_name(
    conn: asyncpg.Connection | asyncpg.Pool, name: str
) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, created_at FROM tenants WHERE name = $1", name)


async def insert_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    key_uuid: uuid.UUID,
    tenant_id: uuid.UUID,
    key_id: str,
    secret_hash: bytes,
    name: str,
    scopes: list[str],
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, tenant_id, key_id, secret_hash, name, scopes) VALUES ($1, $2, $3, $4, $5, $6)",
        key_uuid,
        tenant_id,
        key_id,
        secret_hash,
        name,
        scopes,
    )


async def key_for_auth(
    conn: asyncpg.Connection | asyncpg.Pool, key_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT k.secret_hash, k.scopes, k.revoked_at, k.key_id, t.id AS tenant_id, t.name AS tenant_name
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE k.key_id = $1
        """,
        key_id,
    )


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> datetime | None:
    return await conn.fetchval(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 RETURNING revoked_at",
        key_id,
    )
