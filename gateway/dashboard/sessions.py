"""Dashboard sessions: an API key exchanged for a short-lived, HttpOnly session cookie.

`EventSource` cannot send an `Authorization` header, and a key in a URL ends up in
logs, history and Referer headers. So the page sends the key once, in a
`POST /v1/dashboard/session` with the usual Bearer header, and gets back a cookie
holding a random token (256 bits). Only the token's SHA-256 is stored, in
PostgreSQL, bound to the key, its tenant and its scopes; every use joins the key,
so revoking the key ends its sessions at once. The cookie authorises GET
requests only (see gateway/http/auth.py): a state-changing request needs the
Bearer key, so a cross-site request can never act with the cookie.

PostgreSQL rather than Redis: a session is authority, and revocation must be
exact; a join on `api_keys` in the same query gives that with no second store
to keep in step, and an outage of Redis (which only serves the live fan-out)
does not log every operator out. The TTL is enforced by `expires_at` against
the database's clock; expired rows are purged when sessions are created.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiohttp import web

from gateway.tenants.service import Principal

COOKIE = "trunkline_session"
TOKEN_PREFIX = "tds_"
TTL_SECONDS = 900  # 15 minutes; the open page renews it (GET /v1/dashboard/session)
WATCH_SECONDS = 30.0  # how often an open stream checks that its session still stands


@dataclass(frozen=True)
class Session:
    principal: Principal
    expires_at: datetime


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create(
    db: asyncpg.Pool | asyncpg.Connection, principal: Principal, ttl: int = TTL_SECONDS
) -> tuple[str, datetime]:
    """A new session for an authenticated key: (the cookie's token, when it expires)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await db.execute("DELETE FROM dashboard_sessions WHERE expires_at < now() - interval '1 hour'")
    expires_at = await db.fetchval(
        """
        INSERT INTO dashboard_sessions (token_hash, key_id, tenant_id, scopes, expires_at)
        VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
        RETURNING expires_at
        """,
        _hash(token),
        principal.key_id,
        principal.tenant_id,
        list(principal.scopes),
        float(ttl),
    )
    return token, expires_at


_VALID = """
    FROM dashboard_sessions s
    JOIN api_keys k ON k.key_id = s.key_id AND k.revoked_at IS NULL
    JOIN tenants t ON t.id = s.tenant_id
    WHERE s.token_hash = $1 AND s.expires_at > now()
"""


def _session(row: asyncpg.Record) -> Session:
    principal = Principal(row["tenant_id"], row["tenant_name"], row["key_id"], tuple(row["scopes"]))
    return Session(principal, row["expires_at"])


async def lookup(db: asyncpg.Pool | asyncpg.Connection, token: str) -> Session | None:
    """The live session for a cookie token, or None (unknown, expired, or its key revoked)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    row = await db.fetchrow(
        "SELECT s.tenant_id, t.name AS tenant_name, s.key_id, s.scopes, s.expires_at " + _VALID,
        _hash(token),
    )
    return _session(row) if row is not None else None


async def renew(
    db: asyncpg.Pool | asyncpg.Connection, token: str, ttl: int = TTL_SECONDS
) -> Session | None:
    """Push a live session's expiry to now + ttl (the page renews while it is open)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    row = await db.fetchrow(
        """
        UPDATE dashboard_sessions s SET expires_at = now() + make_interval(secs => $2)
        FROM api_keys k, tenants t
        WHERE s.token_hash = $1 AND s.expires_at > now()
          AND k.key_id = s.key_id AND k.revoked_at IS NULL AND t.id = s.tenant_id
        RETURNING s.tenant_id, t.name AS tenant_name, s.key_id, s.scopes, s.expires_at
        """,
        _hash(token),
        float(ttl),
    )
    return _session(row) if row is not None else None


async def end(db: asyncpg.Pool | asyncpg.Connection, token: str) -> None:
    await db.execute("DELETE FROM dashboard_sessions WHERE token_hash = $1", _hash(token))


async def watch_stream(db: asyncpg.Pool, token: str, request: web.Request) -> None:
    """End a stream opened with a session once the session does (expired, signed out, or its
    key revoked): authentication only ran when the stream began. Cancelled when it ends."""
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        try:
            alive = await lookup(db, token)
        except (OSError, asyncpg.PostgresError):
            continue  # our outage is not a revocation: look again next time
        if alive is None:
            transport = request.transport
            if transport is not None:
                transport.close()
            return
