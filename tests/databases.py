"""Each test's database, cloned from the migrated template ahead of need.

Every test still gets a database of its own, cloned from the template, and it is still
dropped (`WITH (FORCE)`) as soon as the test is over; only the waiting moves off the tests'
path. A thread of this module's own keeps a few clones ready, so that a test takes one
without waiting, and drops a finished test's database while the next test runs: the clone
and the drop were ~0.3 s of every test's setup and teardown, for most of the suite's 1,000
tests.

Drops go first (a finished test's leftovers are cut off at once), then clones, up to
`ahead` ready or on their way. Two workers, each on its own connection, clone and drop side
by side: with one, a run of quick tests (a request or two each) outpaced the clones and each
such test waited for its database (tests/foundation/test_lists.py and test_auth_and_errors.py,
39 tests, base and this alternated twice on the loaded 2-core box: the database fixture's
wait 583 and 464 ms a test with one worker, 238 and 22 ms with two; the files 43.3 and
33.2 s against 28.7 and 25.5 s). Clones use the WAL_LOG strategy: with the server's fsync off it is cheaper
than FILE_COPY, which forces two checkpoints per clone that write out every dirty page of
the other tests' databases too (measured on this template, 9.6 MB: ~0.08 s of server CPU a
clone against ~0.2 s).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import threading

import asyncpg

from tests.helpers import with_database


class DatabaseClones:
    """Clones of `template` on the server at `server_url`, made and dropped in a thread."""

    def __init__(self, server_url: str, template: str, *, ahead: int = 3, workers: int = 2) -> None:
        self.server_url = server_url
        self.template = template
        self.ahead = ahead
        self.workers = workers
        self._names = (f"tl_test_{os.getpid()}_{n}" for n in itertools.count())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-database-clones", daemon=True
        )
        self._ready: collections.deque[str] = collections.deque()
        self._drops: collections.deque[str] = collections.deque()
        self._clone_error: BaseException | None = None
        self._drop_errors: list[BaseException] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._cloning = 0  # clones on their way, counted against `ahead`
        self._closing = False
        self._taken: dict[str, str] = {}  # URL → name, of the clones handed out

    # --- called from the tests' side ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._call(self._open()).result(60)

    async def take(self, timeout: float = 120) -> str:
        """A fresh clone's URL; it is the caller's until `drop`."""
        future = self._call(self._take())
        name = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        url = with_database(self.server_url, name)
        self._taken[url] = name
        return url

    def drop(self, url: str) -> None:
        """Drop a test's database (now, in the thread: the caller does not wait for it)."""
        name = self._taken.pop(url)
        self._loop.call_soon_threadsafe(self._queue_drop, name)

    def close(self) -> None:
        """Drop every database left (ready or still to drop), then stop the thread; raises the
        first error a background drop met, so that a failure there fails the session."""
        try:
            self._call(self._close()).result(120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._drop_errors:
            raise RuntimeError("a test database could not be dropped") from self._drop_errors[0]

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # --- the thread's side ---------------------------------------------------------------------

    async def _open(self) -> None:
        self._admins = [await asyncpg.connect(self.server_url) for _ in range(self.workers)]
        self._wake = asyncio.Event()
        self._workers = [asyncio.create_task(self._work(admin)) for admin in self._admins]

    async def _take(self) -> str:
        while not self._ready:
            if self._clone_error is not None:
                raise RuntimeError("no test database could be cloned") from self._clone_error
            if all(worker.done() for worker in self._workers):
                raise RuntimeError("the clone workers stopped")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._wake.set()
            await waiter
        name = self._ready.popleft()
        self._wake.set()
        return name

    def _queue_drop(self, name: str) -> None:
        self._drops.append(name)
        self._wake.set()

    async def _work(self, admin: asyncpg.Connection) -> None:
        while not self._closing:
            try:
                if self._drops:
                    name = self._drops.popleft()
                    try:
                        await self._drop(admin, name)
                    except Exception as exc:  # raised by close(): the session fails
                        self._drop_errors.append(exc)
                elif len(self._ready) + self._cloning < self.ahead:
                    name = next(self._names)
                    self._cloning += 1
                    try:
                        await admin.execute(
                            f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY wal_log'
                        )
                    except Exception as exc:  # raised by take(): the waiting test fails
                        self._clone_error = exc
                        await asyncio.sleep(0.5)
                    else:
                        self._clone_error = None
                        self._ready.append(name)
                    finally:
                        self._cloning -= 1
                else:
                    self._wake.clear()
                    await self._wake.wait()
            finally:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _drop(self, admin: asyncpg.Connection, name: str) -> None:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _close(self) -> None:
        self._closing = True
        self._wake.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
        try:
            for name in [*self._drops, *self._ready]:
                try:
                    await self._drop(self._admins[0], name)
                except Exception as exc:
                    self._drop_errors.append(exc)
        finally:
            self._drops.clear()
            self._ready.clear()
            for admin in self._admins:
                await admin.close()


async def throwaway_durability(url: str) -> None:
    """The private test server's data is thrown away with it: no fsync (a crash of the
    server process still keeps every commit — the OS has them — so the outage tests, which
    stop and kill PostgreSQL, see what a real one would). Each test's CREATE DATABASE from
    the template then costs no flush to disk (three test files took 41 s with it, 27 s
    without)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET fsync = off")
        await conn.execute("ALTER SYSTEM SET full_page_writes = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
