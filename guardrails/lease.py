"""One pooled PostgreSQL connection kept by the chain while its traffic is steady.

Why: taking a connection from asyncpg's pool and giving it back costs ~0.1 ms of CPU per
query (an acquire context and proxy, a task for the shielded release, an inactivity timer
re-armed on every release) — as much as the query itself, on the one query every outbound
action makes, twice (accept and dispatch). So the suppression query keeps the connection it
was given: the next evaluation that finds it free uses it directly, and one that finds it busy
(concurrent traffic) uses the pool as before. The pool stays the owner:

* the connection goes back after `IDLE_S` without use, so the pool never waits long for it
  (`Pool.close()` waits for every connection to come back), and after `MAX_USES` queries, so
  the pool can recycle it as it does its others;
* a query that fails (or is cancelled) hands the connection back at once, for the pool to
  check and clean up as it does any connection (asyncpg's release waits for a cancelled
  query's cancellation to settle before anyone else can have the connection);
* a connection the server closed while kept here (a shutdown) is dropped before the next
  query, which gets a new one: asyncpg has already given it back to the pool;
* `aclose()` gives it back now — after the query running on it, if one is: the pool is
  released to without a reset query (gateway/db.py), so it would not notice a connection
  that is still busy, and its next user would fail with "another operation is in progress".

Nothing session-level is ever set on it: the chain only reads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

IDLE_S = 0.1
MAX_USES = 10_000


def _closed_under_us(conn: Any) -> bool:
    """Whether the pool took the leased connection back by itself: when the server closes a
    connection (a shutdown, `pg_terminate_backend`), asyncpg returns its holder to the pool and
    detaches the proxy at once, even one kept here idle; a query on it would then fail with
    InterfaceError "connection has been released back to the pool" (a misuse error, so a 500
    during an outage instead of a 503). `_con` is the proxy's slot for its connection."""
    return getattr(conn, "_con", None) is None


class LeasedConnection:
    """`fetchrow` on a kept pool connection when it is free, on the pool otherwise."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._conn: Any = None  # the pool's connection proxy, while leased
        self._busy = False
        self._uses = 0
        self._last_used = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._returning: set[asyncio.Task[None]] = set()
        self._in_use: asyncio.Future[None] | None = None  # done when the running query ends

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        loop = asyncio.get_running_loop()
        if self._busy or (self._conn is not None and self._loop is not loop):
            return await self.pool.fetchrow(query, *args)
        if self._conn is not None and _closed_under_us(self._conn):
            self._take()  # asyncpg already took it back: nothing of ours to release
        self._busy = True
        self._in_use = loop.create_future()
        try:
            if self._conn is None:
                self._conn, self._loop, self._uses = await self.pool.acquire(), loop, 0
            row = await self._conn.fetchrow(query, *args)
        except BaseException:
            self._busy = False
            await asyncio.shield(self._release_soon(self._take()))
            raise
        finally:
            self._busy = False
            in_use, self._in_use = self._in_use, None
            in_use.set_result(None)
        self._uses += 1
        self._last_used = loop.time()
        if self._uses >= MAX_USES:
            self._release_soon(self._take())
        elif self._timer is None:
            self._timer = loop.call_at(self._last_used + IDLE_S, self._idle)
        return row

    def _idle(self) -> None:
        """Give the connection back once it has not been used for `IDLE_S`."""
        self._timer = None
        if self._conn is None:
            return
        loop = asyncio.get_running_loop()
        due = self._last_used + IDLE_S
        if self._busy or loop.time() < due:
            self._timer = loop.call_at(max(due, loop.time() + 0.001), self._idle)
        else:
            self._release_soon(self._take())

    def _take(self) -> Any:
        """The leased connection, no longer leased (from this instant: nobody else gets it)."""
        conn, self._conn = self._conn, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return conn

    async def _release(self, conn: Any) -> None:
        if conn is not None:
            await self.pool.release(conn)

    def _release_soon(self, conn: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._release(conn))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)
        return task

    async def aclose(self) -> None:
        """Give the connection back now, or as soon as the query running on it has ended."""
        if self._in_use is not None:
            await asyncio.shield(self._in_use)
        if self._conn is not None and self._loop is asyncio.get_running_loop():
            await self._release(self._take())
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)
