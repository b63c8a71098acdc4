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


async def list_keys(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: uuid.UUID | None,
    *,
    limit: int,
    after: tuple[datetime | None, str | None],
) -> list[asyncpg.Record]:
    """One page of API keys newest first on (created_at, key_id), `limit` rows plus one; never
    the secret's hash. `tenant_id=None` (the operator's CLI): every tenant's."""
    return await conn.fetch(
        """
        SELECT k.key_id, k.name, k.scopes, k.created_at, k.revoked_at, t.name AS tenant
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE ($1::uuid IS NULL OR k.tenant_id = $1)
          AND ($3::timestamptz IS NULL OR (k.created_at, k.key_id) < ($3, $4::text))
        ORDER BY k.created_at DESC, k.key_id DESC
        LIMIT $2
        """,
        tenant_id,
        limit + 1,
        *after,
    )


async def list_tenants(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every tenant with its count of live keys (the operator's CLI: tenants are few)."""
    return await conn.fetch(
        """
        SELECT t.id, t.name, t.created_at, t.stripe_customer_id,
               count(k.key_id) FILTER (WHERE k.revoked_at IS NULL) AS active_keys
        FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
        GROUP BY t.id ORDER BY t.name
        """
    )
