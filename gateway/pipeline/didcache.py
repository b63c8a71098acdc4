"""Which DID a tenant sends from, cached per tenant, so routing costs no round trip per send.

Routing a message or a call asks the `dids` table which of the tenant's numbers carries the
channel (the one the caller named, or the tenant's first), and that number's provider decides
the route (gateway/pipeline/router.py). The answer changes only when the tenant's DIDs do, so
each process keeps what it read, per (tenant, channel, sender asked for) — "no such DID"
included, since an unknown sender is refused from it too.

**Invalidation.** A trigger on `dids` NOTIFYs `trunkline_dids` with the tenant's id in the
commit that adds, removes or re-routes one of its numbers (migration 0028), whatever made the
change; the process's change listener (gateway/listener.py) drops that tenant's answers at
once. The cache answers only while the listener has recently proven it is alive and forgets
everything when it is lost, so a changed route takes effect within a second on every process.
A read that raced a change (`generation`) is used once, never stored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg

from gateway.listener import ChangeListener
from gateway.messages import repo

CHANNEL = "trunkline_dids"
FORGET_ALL = "*"
_Key = tuple[str, str | None]  # (channel, the sender asked for)


class DidCache:
    def __init__(
        self, listener: ChangeListener, *, max_entries: int = 10_000, ttl: float = 60.0
    ) -> None:
        self.listener = listener
        self.max_entries = max_entries
        self.ttl = ttl
        self.generation = 0
        # tenant -> (channel, sender asked for) -> (the DID row or None, expiry on the monotonic clock)
        self._tenants: dict[uuid.UUID, dict[_Key, tuple[asyncpg.Record | None, float]]] = {}
        self._size = 0
        listener.subscribe(CHANNEL, self._notified, self._lost)

    async def did_for_sending(
        self, db: Any, tenant_id: uuid.UUID, channel: str, number: str | None
    ) -> asyncpg.Record | None:
        """`repo.did_for_sending`, from memory when this process has asked it before."""
        now = time.monotonic()
        key = (channel, number)
        if now < self.listener.trusted_until:
            found = self._tenants.get(tenant_id, {}).get(key)
            if found is not None and found[1] > now:
                return found[0]
        generation = self.generation
        did = await repo.did_for_sending(db, tenant_id, channel, number)
        self._put(tenant_id, key, did, generation)
        return did

    def _put(
        self, tenant_id: uuid.UUID, key: _Key, did: asyncpg.Record | None, generation: int
    ) -> None:
        now = time.monotonic()
        if generation != self.generation or now >= self.listener.trusted_until:
            return  # the read may predate a change
        while self._size >= self.max_entries and self._tenants:
            oldest = next(iter(self._tenants))  # dicts keep insertion order
            self._size -= len(self._tenants.pop(oldest))
        answers = self._tenants.setdefault(tenant_id, {})
        if key not in answers:
            self._size += 1
        answers[key] = (did, now + self.ttl)

    def forget(self, tenant: str = FORGET_ALL) -> None:
        self.generation += 1
        if tenant == FORGET_ALL:
            self._tenants.clear()
            self._size = 0
            return
        try:
            tenant_id = uuid.UUID(tenant)
        except ValueError:
            return self.forget(FORGET_ALL)
        self._size -= len(self._tenants.pop(tenant_id, {}))

    def __len__(self) -> int:
        return self._size

    def _notified(self, payload: str) -> None:
        self.forget(payload or FORGET_ALL)

    def _lost(self) -> None:
        self.forget(FORGET_ALL)
