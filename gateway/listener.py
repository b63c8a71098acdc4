"""One LISTEN connection per process for the caches that must forget at once what changed.

A cache of rows (API keys, a tenant's DIDs) is only as good as its invalidation. Triggers
NOTIFY a channel in the very commit that changes the rows, whatever made the change (the
CLI, an operator's psql, a cascade); this listener holds one plain connection per process,
LISTENs on every subscribed channel and hands each payload to its cache at once.
PostgreSQL rather than Redis pub/sub: the notification is part of the changing
transaction, so it cannot be lost between the commit and a publish, and it needs no second
store to be up for a change to count.

**A listener that is lost never hides a change.** A cache answers only while the listener
has recently proven that it is alive (`listening`): it runs `SELECT 1` every `heartbeat`
seconds, and a reply to a query sent after a change committed comes after that change's
notification (PostgreSQL delivers pending notifications before it reports the query done;
the connection keeps order). So an entry is used at time t only if a heartbeat sent after
t - `stale_after` has been answered: a change takes effect within `stale_after` seconds
plus the notification's own trip, on every process, even over a connection that died
silently. When the listener fails, every subscriber is told (`on_lost`: drop everything)
and the caches answer nothing until it listens again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from gateway.logs import get_logger
from gateway.stopping import cancel_and_wait

log = get_logger(__name__)
APPLICATION_NAME = "trunkline-listener"  # its connection, in pg_stat_activity


@dataclass(frozen=True, slots=True)
class Subscriber:
    channel: str
    on_change: Callable[[str], None]  # the NOTIFY payload
    on_lost: Callable[[], None]  # the listener was lost: whatever changed meanwhile is unknown


class ChangeListener:
    def __init__(
        self,
        database_url: str,
        *,
        heartbeat: float = 0.2,
        stale_after: float = 0.6,
        reconnect: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.reconnect = reconnect
        self.probe = "SELECT 1"  # the heartbeat
        self.trusted_until = 0.0  # monotonic: caches may answer until then
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._conn: asyncpg.Connection | None = None
        self._closing = False

    def subscribe(
        self, channel: str, on_change: Callable[[str], None], on_lost: Callable[[], None]
    ) -> None:
        """Hear `channel` (before `start`: the connection LISTENs on what it knows then)."""
        if self._task is not None:
            raise RuntimeError("subscribe before the listener starts")
        self._subscribers.append(Subscriber(channel, on_change, on_lost))

    @property
    def listening(self) -> bool:
        return time.monotonic() < self.trusted_until

    def _lost(self) -> None:
        self.trusted_until = 0.0
        for sub in self._subscribers:
            sub.on_lost()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-listener")

    async def close(self) -> None:
        """Stop listening. Bounded: a cancellation that a wait inside swallowed (Python 3.11's
        wait_for can, when the awaited query completes at the same moment) is sent again, and
        the loops also stop on `_closing`, so shutdown never waits on a task that goes on."""
        self._closing = True
        self._lost()
        task, self._task = self._task, None
        await cancel_and_wait(task)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL away or slow: no cache until it answers
                self._lost()
                self._failures += 1
                if self._failures == 1:
                    log.warning("caches off: their change listener is lost", error=repr(exc))
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
        for channel in dict.fromkeys(s.channel for s in self._subscribers):
            handlers = [s.on_change for s in self._subscribers if s.channel == channel]

            def notified(
                _conn: object, _pid: int, _channel: str, payload: str, handlers=handlers
            ) -> None:
                for handle in handlers:
                    handle(payload)

            await conn.add_listener(channel, notified)
        for sub in self._subscribers:  # whatever changed while nobody listened
            sub.on_lost()
        log.debug("change listener listening")
        while not self._closing:
            sent = time.monotonic()
            async with asyncio.timeout(5.0):
                await conn.execute(self.probe)
            if not conn.is_closed():
                self.trusted_until = max(self.trusted_until, sent + self.stale_after)
                if self._failures:
                    self._failures = 0
                    log.info("caches on again: their change listener is back")
            await asyncio.sleep(self.heartbeat)
