"""The API keys this process has authenticated, so a known key costs no PostgreSQL round trip.

An entry holds what `authenticate_token` read from the database for one key id: the secret's
SHA-256 (every request's secret is still compared against it, in constant time) and the
principal. It is bounded in number (the oldest goes first) and in age (`ttl`).

**Revocation.** A trigger on `api_keys` and `tenants` NOTIFYs `trunkline_api_keys` in the
commit that changes a key (migration 0020), whatever made the change; every process LISTENs on
a connection of its own and drops the entry at once. PostgreSQL rather than Redis pub/sub:
the notification is part of the revoking transaction, so it cannot be lost between the commit
and a publish, and it needs no second store to be up for a revocation to count.

**A listener that is lost never hides a revocation.** The cache answers only while the
listener has recently proven that it is alive: it runs `SELECT 1` every `heartbeat` seconds,
and a reply to a query sent after a revocation committed comes after that revocation's
notification (PostgreSQL delivers pending notifications before it reports the query done; the
connection keeps order). So an entry is used at time t only if a heartbeat sent after
t - `stale_after` has been answered: a revoked key fails within `stale_after` seconds plus the
notification's own trip, on every process, even over a connection that died silently. When
the listener fails, every entry is dropped and the cache answers nothing (each request reads
PostgreSQL, as without a cache) until it listens again.

**Races.** An entry is stored only if no notification (and no loss) arrived between the read
and the store (`generation`): a read that raced a revocation is used once, never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from gateway.logs import get_logger

if TYPE_CHECKING:
    from gateway.tenants.service import Principal

log = get_logger(__name__)
CHANNEL = "trunkline_api_keys"
APPLICATION_NAME = "trunkline-keycache"  # its connection, in pg_stat_activity
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
        self,
        database_url: str,
        *,
        max_entries: int = 10_000,
        ttl: float = 60.0,
        heartbeat: float = 0.2,
        stale_after: float = 0.6,
        reconnect: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.max_entries = max_entries
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.reconnect = reconnect
        self.probe = "SELECT 1"  # the heartbeat
        self.generation = 0
        self._entries: dict[str, Entry] = {}
        self._trusted_until = 0.0  # monotonic: entries may be used until then
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._conn: asyncpg.Connection | None = None
        self.hits = 0
        self.misses = 0
        _HERE.add(self)

    # -- the request side -------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return time.monotonic() < self._trusted_until

    def get(self, key_id: str) -> Entry | None:
        now = time.monotonic()
        if now >= self._trusted_until:
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
        if generation != self.generation or now >= self._trusted_until:
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

    # -- the listener -------------------------------------------------------------------------

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.forget(payload or FORGET_ALL)

    def _lost(self) -> None:
        self._trusted_until = 0.0
        self.forget(FORGET_ALL)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="key-cache")

    async def close(self) -> None:
        self._lost()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL away or slow: no cache until it answers
                self._lost()
                self._failures += 1
                if self._failures == 1:
                    log.warning("API key cache off: its listener is lost", error=repr(exc))
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self.reconnect)

    async def _listen(self) -> None:
        # A plain connection (no pool, no codecs): it only listens and answers heartbeats.
        self._conn = conn = await asyncpg.connect(
            self.database_url, timeout=10, server_settings={"application_name": APPLICATION_NAME}
        )
        conn.add_termination_listener(lambda _conn: self._lost())
        await conn.add_listener(CHANNEL, self._notified)
        self.forget(FORGET_ALL)  # whatever changed while nobody listened
        log.debug("API key cache listening")
        while True:
            sent = time.monotonic()
            await asyncio.wait_for(conn.execute(self.probe), timeout=5.0)
            if not conn.is_closed():
                self._trusted_until = max(self._trusted_until, sent + self.stale_after)
                if self._failures:
                    self._failures = 0
                    log.info("API key cache on again: its listener is back")
            await asyncio.sleep(self.heartbeat)
