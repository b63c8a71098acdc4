"""Tenant and API key logic.

Keys are `tk_<key_id>_<secret>`: the key id is an indexed lookup handle, the
secret is 256 random bits stored only as SHA-256 (a slow KDF buys nothing for
a secret with that much entropy) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from gateway.billing import repo as billing_repo
from gateway.core import scopes as scopes_mod
from gateway.core.errors import Conflict, NotFound, ValidationFailed
from gateway.core.ids import new_id
from gateway.tenants import keycache, repo
from gateway.tenants.keycache import KeyCache

KEY_PREFIX = "tk_"
_KEY_ID_LEN = 16
_DUMMY_HASH = hashlib.sha256(b"dummy").digest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: every tenant-data query is filtered by `tenant_id`."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_id: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    token: str
    tenant: str
    scopes: list[str]


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    if not token.startswith(KEY_PREFIX) or len(token) < len(KEY_PREFIX) + _KEY_ID_LEN + 2:
        return None
    key_id = token[len(KEY_PREFIX) : len(KEY_PREFIX) + _KEY_ID_LEN]
    if token[len(KEY_PREFIX) + _KEY_ID_LEN] != "_":
        return None
    return key_id, token[len(KEY_PREFIX) + _KEY_ID_LEN + 1 :]


async def create_tenant(db: asyncpg.Pool | asyncpg.Connection, name: str) -> uuid.UUID:
    tenant_id = new_id()
    try:
        await repo.insert_tenant(db, tenant_id, name)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"tenant {name!r} already exists", code="tenant_exists") from None
    except asyncpg.CheckViolationError:
        raise Conflict(
            f"tenant name {name!r} must be 1-63 lowercase letters, digits, '-' or '_'",
            code="invalid_tenant_name",
        ) from None
    return tenant_id


_STRIPE_CUSTOMER = re.compile(r"^cus_[A-Za-z0-9_]{1,250}$")


async def set_stripe_customer(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, customer_id: str | None
) -> None:
    """The Stripe customer the tenant's usage is billed to (None: not exported). The operator's
    to set (the CLI), never the tenant's: a key that could name the customer could bill its
    usage to someone else."""
    if customer_id is not None and not _STRIPE_CUSTOMER.match(customer_id):
        raise ValidationFailed(
            f"{customer_id!r} is not a Stripe customer id (cus_...)",
            code="invalid_stripe_customer",
        )
    if not await billing_repo.set_customer(db, tenant, customer_id):
        raise NotFound(f"no tenant named {tenant!r}", code="tenant_not_found")


async def create_key(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    scopes: list[str] | None = None,
    name: str = "",
) -> IssuedKey:
    row = await repo.tenant_by_name(db, tenant)
    if row is None:
        raise NotFound(f"no tenant named {tenant!r}", code="tenant_not_found")
    granted = scopes_mod.validate(scopes) if scopes else sorted(scopes_mod.DEFAULT)
    key_id = secrets.token_hex(_KEY_ID_LEN // 2)
    secret = secrets.token_urlsafe(32)
    await repo.insert_key(
        db,
        key_uuid=new_id(),
        tenant_id=row["id"],
        key_id=key_id,
        secret_hash=_hash(secret),
        name=name,
        scopes=granted,
    )
    return IssuedKey(
        key_id=key_id, token=f"{KEY_PREFIX}{key_id}_{secret}", tenant=tenant, scopes=granted
    )


async def revoke_key(db: asyncpg.Pool | asyncpg.Connection, key_id: str) -> None:
    if key_id.startswith(KEY_PREFIX):  # accept a whole token too
        parsed = parse_token(key_id)
        key_id = parsed[0] if parsed else key_id
    if await repo.revoke_key(db, key_id) is None:
        raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
    keycache.forget_here(key_id)  # other processes: the trigger's NOTIFY


async def authenticate_token(
    db: asyncpg.Pool | asyncpg.Connection, token: str, cache: KeyCache | None = None
) -> Principal | None:
    """The principal for a bearer token, or None; never says which part was wrong.

    With `cache`, a key this process has seen live costs no round trip (see keycache.py);
    the secret is checked on every request either way."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    if cache is not None:
        entry = cache.get(key_id)
        if entry is not None:
            if hmac.compare_digest(_hash(secret), entry.secret_hash):
                return entry.principal
            return None
        generation = cache.generation
    row = await repo.key_for_auth(db, key_id)
    expected = row["secret_hash"] if row is not None else _DUMMY_HASH
    ok = hmac.compare_digest(_hash(secret), expected)
    if row is None or not ok or row["revoked_at"] is not None:
        return None
    principal = Principal(row["tenant_id"], row["tenant_name"], row["key_id"], tuple(row["scopes"]))
    if cache is not None:
        cache.put(key_id, row["secret_hash"], principal, generation)
    return principal
