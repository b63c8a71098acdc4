"""Sleep until a PostgreSQL NOTIFY, a safety timeout or shutdown (never a busy loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from gateway import db as dbmod


class Wakeup:
    """Wakes a loop on NOTIFY `channel` received by `conn` (which must stay open)."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.event = asyncio.Event()

    async def listen(self) -> None:
        await self.conn.add_listener(self.channel, self._notified)

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    async def wait(
        self,
        stopping: asyncio.Event,
        timeout: float,
        settle: float = 0.0,
        *,
        on: asyncio.Event | None = None,
    ) -> None:
        """Return on NOTIFY (after `settle` more seconds, to batch a burst), stop or timeout;
        `on`: an event the notifications set only for some payloads, in place of any NOTIFY.

        Raises if the listening connection died (the supervisor restarts the task).
        """
        flag = self.event if on is None else on
        if self.conn.is_closed():
            raise _lost(self.channel)
        await sleep_until(stopping, flag, timeout)
        if self.conn.is_closed():
            raise _lost(self.channel)
        if settle > 0 and flag.is_set() and not stopping.is_set():
            await sleep_until(stopping, None, settle)


def _lost(channel: str) -> asyncpg.ConnectionDoesNotExistError:
    """asyncpg's own "connection lost": PostgreSQL went away, an outage, not a bug
    (gateway/outage.py), so the restart waits for it quietly."""
    return asyncpg.ConnectionDoesNotExistError(f"the LISTEN {channel} connection was closed")


async def sleep_until(stopping: asyncio.Event, event: asyncio.Event | None, timeout: float) -> None:
    waiters = {asyncio.ensure_future(stopping.wait())}
    if event is not None:
        waiters.add(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def follow(
    database_url: str,
    channel: str,
    step: Callable[[], Awaitable[int]],
    stopping: asyncio.Event,
    *,
    batch: int,
    interval: float,
    settle: float = 0.0,
) -> None:
    """Run `step` (which consumes up to `batch` items) whenever `channel` is notified, at
    least every `interval`, and at once again after a full batch, until `stopping`.

    The loop of every log-tailing subscriber: a NOTIFY lost while a step ran is not
    missed, because the flag is cleared before the step reads, not after.
    """
    conn = await dbmod.connect(database_url)
    try:
        wake = Wakeup(conn, channel)
        await wake.listen()
        while not stopping.is_set():
            wake.clear()
            if await step() >= batch:
                continue
            await wake.wait(stopping, interval, settle)
    finally:
        await conn.close()
