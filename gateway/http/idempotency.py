"""Stripe-style idempotency keys, stored in the same transaction as the work they protect.

`claim` inserts (tenant, key) first thing in the request's transaction. A
concurrent duplicate blocks on that row until the first transaction commits,
then finds the stored response and replays it — so 50 identical requests make
exactly one message. The same key with a different body is refused.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.core.errors import Problem

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Replay:
    status: int
    body: Any


def request_hash(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b"\0" + path.encode() + b"\0" + body).digest()


def validate_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Problem(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable characters",
            status=400,
            code="invalid_idempotency_key",
        )
    return key


async def lookup(db: asyncpg.Pool, tenant_id: uuid.UUID, key: str, digest: bytes) -> Replay | None:
    """A cheap look before any work: the stored answer for a key already answered, else None."""
    row = await db.fetchrow(
        """
        SELECT request_hash, response_status, response_body FROM idempotency_keys
        WHERE tenant_id = $1 AND key = $2 AND expires_at >= now()
        """,
        tenant_id,
        key,
    )
    if row is None or row["response_status"] is None:
        return None
    if bytes(row["request_hash"]) != digest:
        raise _reused(key)
    return Replay(row["response_status"], row["response_body"])


def _reused(key: str) -> Problem:
    return Problem(
        f"{HEADER} {key!r} was already used with a different request",
        status=422,
        code="idempotency_key_reused",
    )


async def claim(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, method: str, path: str, digest: bytes
) -> Replay | None:
    """None if this request owns the key now; a Replay if it was answered before."""
    owned = await conn.fetchval(
        """
        INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (tenant_id, key) DO UPDATE
            SET method = EXCLUDED.method, path = EXCLUDED.path, request_hash = EXCLUDED.request_hash,
                response_status = NULL, response_body = NULL,
                created_at = now(), expires_at = now() + interval '24 hours'
            WHERE idempotency_keys.expires_at < now()
        RETURNING true
        """,
        tenant_id,
        key,
        method,
        path,
        digest,
    )
    if owned:
        return None
    row = await conn.fetchrow(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        tenant_id,
        key,
    )
    assert row is not None  # we just conflicted with it and keys are only purged when expired
    if bytes(row["request_hash"]) != digest:
        raise _reused(key)
    if row["response_status"] is None:
        raise Problem(
            "A request with this Idempotency-Key is still in progress",
            status=409,
            code="idempotency_in_progress",
        )
    return Replay(row["response_status"], row["response_body"])


async def record(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, status: int, body: Any
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE tenant_id = $1 AND key = $2",
        tenant_id,
        key,
        status,
        body,
    )


async def purge_expired(db: asyncpg.Pool, batch: int = 5000) -> int:
    """Delete expired keys in bounded batches (a janitor task runs this)."""
    total = 0
    while True:
        status = await db.execute(
            """
            DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT $1))
            """,
            batch,
        )
        n = int(status.split()[-1])
        total += n
        if n < batch:
            return total
