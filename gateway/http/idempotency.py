"""Stripe-style idempotency keys, stored in the same transaction as the work they protect.

`claim_many` inserts (tenant, key) in the transaction of the work it protects. A
concurrent duplicate blocks on that row until the first transaction commits,
then finds the stored response and replays it — so 50 identical requests make
exactly one message. The same key with a different body is refused. `lookup`
is the cheap look before any work, for retries of answered requests.
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
        raise reused(key)
    return Replay(row["response_status"], row["response_body"])


def reused(key: str) -> Problem:
    return Problem(
        f"{HEADER} {key!r} was already used with a different request",
        status=422,
        code="idempotency_key_reused",
    )


@dataclass(frozen=True)
class Claim:
    """One request's claim on (tenant, key), with what identifies the request."""

    tenant_id: uuid.UUID
    key: str
    method: str
    path: str
    digest: bytes

    @property
    def ident(self) -> tuple[uuid.UUID, str]:
        return (self.tenant_id, self.key)


_CLAIM_MANY = """
INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[])
ORDER BY 1, 2
ON CONFLICT (tenant_id, key) DO UPDATE
    SET method = EXCLUDED.method, path = EXCLUDED.path, request_hash = EXCLUDED.request_hash,
        response_status = NULL, response_body = NULL,
        created_at = now(), expires_at = now() + interval '24 hours'
    WHERE idempotency_keys.expires_at < now()
RETURNING tenant_id, key
"""

_ANSWERED = """
SELECT k.tenant_id, k.key, k.request_hash, k.response_status, k.response_body
FROM idempotency_keys k JOIN unnest($1::uuid[], $2::text[]) AS c(tenant_id, key)
  ON k.tenant_id = c.tenant_id AND k.key = c.key
"""


async def claim_many(
    conn: asyncpg.Connection, claims: list[Claim]
) -> dict[tuple[uuid.UUID, str], Replay | Problem | None]:
    """Claim distinct keys in one statement: None where the request owns its key now, the
    stored answer where it was answered before, a Problem where it must be refused.

    Rows are inserted in key order, so two transactions claiming overlapping keys wait
    for each other instead of deadlocking; a claim blocked by an uncommitted first try
    resolves when that transaction ends.
    """
    if not claims:
        return {}
    columns = [
        [c.tenant_id for c in claims],
        [c.key for c in claims],
        [c.method for c in claims],
        [c.path for c in claims],
        [c.digest for c in claims],
    ]
    owned = {(r["tenant_id"], r["key"]) for r in await conn.fetch(_CLAIM_MANY, *columns)}
    out: dict[tuple[uuid.UUID, str], Replay | Problem | None] = dict.fromkeys(owned)
    taken = [c for c in claims if c.ident not in owned]
    if not taken:
        return out
    rows = await conn.fetch(_ANSWERED, [c.tenant_id for c in taken], [c.key for c in taken])
    stored = {(r["tenant_id"], r["key"]): r for r in rows}
    for c in taken:
        row = stored[c.ident]  # we just conflicted with it; keys are only purged once expired
        if bytes(row["request_hash"]) != c.digest:
            out[c.ident] = reused(c.key)
        elif row["response_status"] is None:
            out[c.ident] = Problem(
                "A request with this Idempotency-Key is still in progress",
                status=409,
                code="idempotency_in_progress",
            )
        else:
            out[c.ident] = Replay(row["response_status"], row["response_body"])
    return out


async def record_many(
    conn: asyncpg.Connection, answers: list[tuple[uuid.UUID, str, int, Any]]
) -> None:
    """Store owned keys' answers, (tenant_id, key, status, body) each, for replays."""
    if not answers:
        return
    tenants, keys, statuses, bodies = zip(*answers, strict=True)
    await conn.execute(
        """
        UPDATE idempotency_keys k SET response_status = a.status, response_body = a.body
        FROM unnest($1::uuid[], $2::text[], $3::int[], $4::jsonb[]) AS a(tenant_id, key, status, body)
        WHERE k.tenant_id = a.tenant_id AND k.key = a.key
        """,
        list(tenants),
        list(keys),
        list(statuses),
        list(bodies),
    )


async def claim(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, method: str, path: str, digest: bytes
) -> Replay | None:
    """None if this request owns the key now; a Replay if it was answered before."""
    c = Claim(tenant_id, key, method, path, digest)
    found = (await claim_many(conn, [c]))[c.ident]
    if isinstance(found, Problem):
        raise found
    return found


async def record(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, status: int, body: Any
) -> None:
    await record_many(conn, [(tenant_id, key, status, body)])


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
