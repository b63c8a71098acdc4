"""Owns the background tasks of a process: starts them, restarts crashes, stops them on time.

A task is a coroutine factory. If it raises, the supervisor logs why and
restarts it after an exponential backoff; if it returns, it is done. The backoff
starts over once a run has lasted `healthy_after` seconds: otherwise every short
outage (a Redis blip) would leave the task restarting ever more slowly, until one
blip stalls it for `backoff_max`. A task stopped by our own outage (PostgreSQL or
Redis unreachable, see gateway/outage.py) is not a crash: the outage monitor logs
it once, and the task restarts as soon as the dependency is back (bounded by the
backoff), without a traceback per restart. On stop,
`stopping` is set so loops can finish the job in hand; whatever is still
running at the deadline is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.logs import get_logger
from gateway.outage import OutageMonitor, unavailable

log = get_logger(__name__)
TaskFactory = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class Supervisor:
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    healthy_after: float = 10.0  # a run at least this long resets the backoff
    outages: OutageMonitor | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _factories: dict[str, TaskFactory] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    last_wait: dict[str, float] = field(default_factory=dict)  # seconds before the last restart

    def add(self, name: str, factory: TaskFactory) -> None:
        if self._tasks or self.stopping.is_set():
            raise RuntimeError("add tasks before start()")
        if name in self._factories:
            raise ValueError(f"task {name!r} is already supervised")
        self._factories[name] = factory

    def start(self) -> None:
        for name, factory in self._factories.items():
            self._tasks[name] = asyncio.create_task(
                self._run(name, factory), name=f"supervised:{name}"
            )

    async def _run(self, name: str, factory: TaskFactory) -> None:
        delay = self.backoff_initial
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await factory(self.stopping)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if time.monotonic() - started >= self.healthy_after:
                    delay = self.backoff_initial  # it was healthy: this is a new failure
                wait = min(self.backoff_max, delay) * random.uniform(0.8, 1.2)
                self.last_wait[name] = wait
                outage = self.outages.check(exc) if self.outages else unavailable(exc)
                if outage is not None:
                    log.debug("task stopped by an outage", task=name, dependency=outage)
                    await self._until_back(outage, wait)
                    delay = min(self.backoff_max, delay * 2)
                    continue
                log.exception(
                    "task crashed; restarting",
                    task=name,
                    error=repr(exc),
                    restart_in_s=round(wait, 2),
                )
                await self._pause(wait)
                delay = min(self.backoff_max, delay * 2)

    async def _pause(self, seconds: float) -> None:
        await _wait_until_set(self.stopping, seconds)

    async def _until_back(self, dependency: str, wait: float) -> None:
        """Wait out an outage: until the monitor sees the dependency back (then a short
        jitter, so tasks do not all restart at one instant), or `wait` at most."""
        if self.outages is None:
            await self._pause(wait)
            return
        back = asyncio.create_task(self.outages.wait_up(dependency, wait))  # type: ignore[arg-type]
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({back, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            back.cancel()
            stop.cancel()
        if not self.stopping.is_set():
            await self._pause(min(wait, 0.25) * random.random())

    async def stop(self, deadline: float) -> None:
        """Ask tasks to finish, wait up to `deadline` seconds, then cancel the rest."""
        self.stopping.set()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            log.warning("task did not stop in time; cancelling", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


async def periodic(
    stopping: asyncio.Event, interval: float, job: Callable[[], Awaitable[object]]
) -> None:
    """Run `job` every `interval` seconds until stopping (the loop shape most janitors need)."""
    while not stopping.is_set():
        await job()
        await _wait_until_set(stopping, interval)


async def _wait_until_set(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event`, `seconds` at most. `asyncio.timeout`, not `wait_for`: Python 3.11's
    wait_for swallows a cancel that lands as the event is set (gateway/stopping.py)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
