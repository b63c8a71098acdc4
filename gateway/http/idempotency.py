"""Stripe-style idempotency keys, stored in the same transaction as the work they protect.

`claim_many` inserts (tenant, key) in the transaction of the work it protects. A
concurrent duplicate blocks on that row until the first transaction commits,
then finds the stored response and replays it — so 50 identical requests make
exactly one message. The same key with a different body is refused. `lookup`
is the cheap look before any work, for retries of answered requests.

Requests whose work spends something before its transaction (a trunk channel, rate-limit
tokens, the guardrail chain) claim the key first, committed, with `begin`: an in-flight
row (no response, an `owner` and a `locked_until` lease) that duplicates in every process
see and wait on (gateway/pipeline/keygate.py). The work's transaction then claims the row
only if it still owns it (`claim_many` with the owner) and stores the answer.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg
from aiohttp import web

from gateway.core.errors import Problem

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class Replay(NamedTuple):
    """A stored answer given again: unpacks as (status, body) like a fresh one, and says it is
    a replay (the `Idempotent-Replayed: true` header, see `respond`)."""

    status: int
    body: Any


REPLAYED = {"Idempotent-Replayed": "true"}


def respond(answer: tuple[int, Any]) -> web.Response:
    """The JSON response of a keyed create's (status, body), marked when it is a replay."""
    status, body = answer
    headers = REPLAYED if isinstance(answer, Replay) else None
    return web.json_response(body, status=status, headers=headers)


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


async def from_request(request: web.Request, path: str | None = None) -> tuple[str | None, bytes]:
    """The request's Idempotency-Key, validated, and the digest that tells a retry of the same
    request (method, path, body bytes) from another one under that key; (None, b"") without one.

    `path` names the resource when the URL may spell it in more than one way (a parsed id).
    The body is the one the route already read and validated (aiohttp keeps it)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None, b""
    body = await request.read()
    return validate_key(key), request_hash(request.method, path or request.path, body)


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


def in_use(key: str, retry_after: float = 1.0) -> Problem:
    """409: another try of this key is still running; retry once it has answered."""
    return Problem(
        f"A request with {HEADER} {key!r} is still in progress; retry after it has answered",
        status=409,
        code="idempotency_key_in_use",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


@dataclass(frozen=True)
class InFlight:
    """Another try holds the key and has not answered; its lease runs `lease_left` s more."""

    lease_left: float


@dataclass(frozen=True)
class Claim:
    """One request's claim on (tenant, key), with what identifies the request."""

    tenant_id: uuid.UUID
    key: str
    method: str
    path: str
    digest: bytes
    owner: uuid.UUID | None = None  # the in-flight claim this try took with `begin`, if any

    @property
    def ident(self) -> tuple[uuid.UUID, str]:
        return (self.tenant_id, self.key)


_CLAIM_MANY = """
INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash, owner)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::uuid[])
ORDER BY 1, 2
ON CONFLICT (tenant_id, key) DO UPDATE
    SET method = EXCLUDED.method, path = EXCLUDED.path, request_hash = EXCLUDED.request_hash,
        response_status = NULL, response_body = NULL, owner = EXCLUDED.owner, locked_until = NULL,
        created_at = CASE WHEN idempotency_keys.expires_at < now()
                          THEN now() ELSE idempotency_keys.created_at END,
        expires_at = CASE WHEN idempotency_keys.expires_at < now()
                          THEN now() + interval '24 hours' ELSE idempotency_keys.expires_at END
    WHERE idempotency_keys.expires_at < now()
       OR (idempotency_keys.owner = EXCLUDED.owner AND idempotency_keys.response_status IS NULL)
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
        [c.owner for c in claims],
    ]
    owned = {(r["tenant_id"], r["key"]) for r in await conn.fetch(_CLAIM_MANY, *columns)}
    out: dict[tuple[uuid.UUID, str], Replay | Problem | None] = dict.fromkeys(owned)
    taken = [c for c in claims if c.ident not in owned]
    if taken:
        out |= await answers_of(conn, taken)
    return out


async def answers_of(
    conn: asyncpg.Connection, taken: list[Claim]
) -> dict[tuple[uuid.UUID, str], Replay | Problem]:
    """For claims whose keys a claim statement just could not take: the stored answer, or
    the Problem to answer (the key used for another request, or taken over meanwhile)."""
    out: dict[tuple[uuid.UUID, str], Replay | Problem] = {}
    rows = await conn.fetch(_ANSWERED, [c.tenant_id for c in taken], [c.key for c in taken])
    stored = {(r["tenant_id"], r["key"]): r for r in rows}
    for c in taken:
        row = stored[c.ident]  # we just conflicted with it; keys are only purged once expired
        if bytes(row["request_hash"]) != c.digest:
            out[c.ident] = reused(c.key)
        elif row["response_status"] is None:  # another try took our lapsed claim over
            out[c.ident] = in_use(c.key)
        else:
            out[c.ident] = Replay(row["response_status"], row["response_body"])
    return out


# The in-flight claim is coordination, not data: it commits without waiting for its WAL
# flush (the commit is visible at once; only a PostgreSQL crash in the next ~200 ms could
# lose it). That is safe: the work's own transaction commits durably after it, which
# flushes the claim too, and a claim lost to a crash is a try that failed -- the key is free.
_NO_FLUSH = "set_config('synchronous_commit', 'off', true) IS NOT NULL"

_BEGIN_MANY = f"""
WITH c AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::uuid[])
           WITH ORDINALITY AS c(tenant_id, key, method, path, request_hash, owner, i)
), ins AS (
    INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash, owner, locked_until)
    SELECT tenant_id, key, method, path, request_hash, owner,
           now() + make_interval(secs => $7::float8)
    FROM c WHERE {_NO_FLUSH}
    ORDER BY tenant_id, key
    ON CONFLICT (tenant_id, key) DO NOTHING
    RETURNING owner
)
SELECT c.owner IN (SELECT owner FROM ins) AS owned, k.request_hash, k.response_status,
       k.response_body, k.expires_at < now() AS expired,
       extract(epoch FROM k.locked_until - now())::float8 AS lease_left
FROM c LEFT JOIN idempotency_keys k ON k.tenant_id = c.tenant_id AND k.key = c.key
ORDER BY c.i
"""

_TAKE_OVER = f"""
UPDATE idempotency_keys
SET method = $3, path = $4, request_hash = $5, owner = $6,
    locked_until = now() + make_interval(secs => $7::float8),
    response_status = NULL, response_body = NULL,
    created_at = now(), expires_at = now() + interval '24 hours'
WHERE tenant_id = $1 AND key = $2
  AND (expires_at < now()
       OR (response_status IS NULL AND (locked_until IS NULL OR locked_until < now())))
  AND {_NO_FLUSH}
RETURNING true
"""

Begun = bool | Replay | InFlight


async def begin_many(
    db: asyncpg.Pool | asyncpg.Connection, claims: Sequence[Claim], lease: float
) -> list[Begun | Problem]:
    """`begin` for many claims (of distinct owners) in one statement; a Problem where `begin`
    would raise it. Rows are inserted in key order, so concurrent batches never deadlock."""
    out: list[Begun | Problem] = [InFlight(0.0)] * len(claims)
    pending = list(range(len(claims)))
    for _ in range(3):
        if not pending:
            break
        picked = [claims[i] for i in pending]
        assert all(c.owner is not None for c in picked)
        rows = await db.fetch(
            _BEGIN_MANY,
            [c.tenant_id for c in picked],
            [c.key for c in picked],
            [c.method for c in picked],
            [c.path for c in picked],
            [c.digest for c in picked],
            [c.owner for c in picked],
            lease,
        )
        again = []
        for i, claim, row in zip(pending, picked, rows, strict=True):
            if row["owned"]:
                out[i] = True
            elif row["expired"] is None:
                again.append(i)  # the holder's row changed under our snapshot: look again
            elif row["expired"] or (
                row["response_status"] is None and not (row["lease_left"] or 0.0) > 0.0
            ):  # answered 24 h ago, or its holder let the lease lapse: take it over
                args = (claim.tenant_id, claim.key, claim.method, claim.path, claim.digest)
                if await db.fetchval(_TAKE_OVER, *args, claim.owner, lease):
                    out[i] = True
                else:
                    again.append(i)
            elif row["response_status"] is None:
                out[i] = InFlight(row["lease_left"])
            elif bytes(row["request_hash"]) != claim.digest:
                out[i] = reused(claim.key)
            else:
                out[i] = Replay(row["response_status"], row["response_body"])
        pending = again
    return out  # still pending: contended (InFlight(0)), the caller waits and begins again


async def begin(db: asyncpg.Pool, claim: Claim, lease: float) -> bool | Replay | InFlight:
    """Claim (tenant, key) for `claim.owner` before any work, in its own committed statement.

    True: this try owns the key for `lease` seconds (renew while working). A Replay: the key
    was answered. InFlight: another try holds it. Raises 422 for an answered key used with a
    different request. A key whose holder let its lease lapse (a process that died, an
    error that was not stored) or whose 24 h expired is taken over.
    """
    found = (await begin_many(db, [claim], lease))[0]
    if isinstance(found, Problem):
        raise found
    return found


async def renew(db: asyncpg.Pool, claim: Claim, lease: float) -> bool:
    """Extend an unanswered claim this try still owns; False if it was lost."""
    return bool(
        await db.fetchval(
            f"""
            UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $4::float8)
            WHERE tenant_id = $1 AND key = $2 AND owner = $3 AND response_status IS NULL
              AND {_NO_FLUSH}
            RETURNING true
            """,
            claim.tenant_id,
            claim.key,
            claim.owner,
            lease,
        )
    )


async def release(db: asyncpg.Pool, claim: Claim) -> None:
    """Give an unanswered claim back (its try failed and stored nothing): the key is free."""
    await db.execute(
        f"""
        DELETE FROM idempotency_keys
        WHERE tenant_id = $1 AND key = $2 AND owner = $3 AND response_status IS NULL
          AND {_NO_FLUSH}
        """,
        claim.tenant_id,
        claim.key,
        claim.owner,
    )


async def record_many(
    conn: asyncpg.Connection, answers: list[tuple[uuid.UUID, str, int, Any]]
) -> None:
    """Store owned keys' answers, (tenant_id, key, status, body) each, for replays."""
    if not answers:
        return
    tenants, keys, statuses, bodies = zip(*answers, strict=True)
    await conn.execute(
        """
        UPDATE idempotency_keys k
        SET response_status = a.status, response_body = a.body, locked_until = NULL
        FROM ROWS FROM (unnest($1::uuid[]), unnest($2::text[]), unnest($3::int[]),
                        jsonb_array_elements($4::jsonb)) AS a(tenant_id, key, status, body)
        WHERE k.tenant_id = a.tenant_id AND k.key = a.key
        """,
        list(tenants),
        list(keys),
        list(statuses),
        list(bodies),  # ONE jsonb array, not a jsonb[] (see gateway/events/outbox.py)
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


async def in_transaction(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    key: str | None,
    path: str,
    digest: bytes,
    status: int,
    work: Callable[[asyncpg.Connection], Awaitable[dict[str, Any]]],
) -> tuple[int, dict[str, Any]]:
    """Run `work` in a transaction that also claims and answers the Idempotency-Key (for
    writes that spend nothing before their transaction: campaigns, workflows)."""
    if key is not None:
        replay = await lookup(db, tenant_id, key, digest)
        if replay is not None:
            return replay
    async with db.acquire() as conn, conn.transaction():
        if key is not None:
            replay = await claim(conn, tenant_id, key, "POST", path, digest)
            if replay is not None:
                return replay
        body = await work(conn)
        if key is not None:
            await record(conn, tenant_id, key, status, body)
    return status, body
