"""The API keys this process has authenticated, so a known key costs no PostgreSQL round trip.

An entry holds what `authenticate_token` read from the database for one key id: the secret's
SHA-256 (every request's secret is still compared against it, in constant time) and the
principal. It is bounded in number (the oldest goes first) and in age (`ttl`).

**Revocation.** A trigger on `api_keys` and `tenants` NOTIFYs `trunkline_api_keys` in the
commit that changes a key (migration 0020), whatever made the change; the process's change
listener (gateway/listener.py) hears it and the entry is dropped at once. The cache answers
only while that listener has recently proven that it is alive, and forgets everything when it
is lost, so a revoked key fails within a second on every process, even over a connection that
died silently (see the listener's docstring).

**Races.** An entry is stored only if no notification (and no loss) arrived between the read
and the store (`generation`): a read that raced a revocation is used once, never cached.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.listener import APPLICATION_NAME, ChangeListener

if TYPE_CHECKING:
    from gateway.tenants.service import Principal

CHANNEL = "trunkline_api_keys"
FORGET_ALL = "*"
_HERE: weakref.WeakSet[KeyCache] = weakref.WeakSet()  # this process's caches


def forget_here(key_id: str = FORGET_ALL) -> None:
    """Drop `key_id` from this process's caches now (a revocation made here is exact here;
    other processes hear of it from the trigger's NOTIFY)."""
    for cache in list(_HERE):
        cache.forget(key_id)


@dataclass(frozen=True, slots=True)
class Entry:
    secret_hash: bytes
    principal: Principal
    expires: float  # monotonic


class KeyCache:
    def __init__(
        self, listener: ChangeListener, *, max_entries: int = 10_000, ttl: float = 60.0
    ) -> None:
        self.listener = listener
        self.max_entries = max_entries
        self.ttl = ttl
        self.generation = 0
        self._entries: dict[str, Entry] = {}
        self.hits = 0
        self.misses = 0
        listener.subscribe(CHANNEL, self._notified, self._lost)
        _HERE.add(self)

    @property
    def listening(self) -> bool:
        return self.listener.listening

    def get(self, key_id: str) -> Entry | None:
        now = time.monotonic()
        if now >= self.listener.trusted_until:
            return None
        entry = self._entries.get(key_id)
        if entry is None or entry.expires <= now:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key_id: str, secret_hash: bytes, principal: Principal, generation: int) -> None:
        """Store what a read begun at `generation` found (a live key), unless a change or a
        lost listener came in between: then the read may predate a revocation."""
        now = time.monotonic()
        if generation != self.generation or now >= self.listener.trusted_until:
            return
        entries = self._entries
        entries.pop(key_id, None)
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]  # the oldest (dicts keep insertion order)
        entries[key_id] = Entry(secret_hash, principal, now + self.ttl)

    def forget(self, key_id: str = FORGET_ALL) -> None:
        self.generation += 1
        if key_id == FORGET_ALL:
            self._entries.clear()
        else:
            self._entries.pop(key_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def _notified(self, payload: str) -> None:
        self.forget(payload or FORGET_ALL)

    def _lost(self) -> None:
        self.forget(FORGET_ALL)


__all__ = ["APPLICATION_NAME", "CHANNEL", "Entry", "KeyCache", "forget_here"]
