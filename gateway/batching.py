"""Concurrent callers' small requests, run as one set-based request (group commit in general).

Why: a worker with many jobs in flight otherwise pays one PostgreSQL round trip (often a
transaction of several) per job per step; under load the round trips, not the work, set the
pace. A `Coalescer` queues what callers submit during one loop turn and while a batch is in
flight, then runs the next batch with one call of its `run` function. Alone, a caller waits
for no one: its batch of one starts on the next loop turn.

`run` returns one result per item, in order; an item's result may be an exception, raised to
that caller alone. When `run` raises for a whole batch: our outage (PostgreSQL or Redis
unreachable) is every caller's answer (one by one would fail the same way); anything else is
retried one item per call, so a poison item answers its own error and never takes its
neighbours down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from gateway.outage import unavailable

T = TypeVar("T")
R = TypeVar("R")
RunMany = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]


class Coalescer(Generic[T, R]):
    """Owns the tasks that run its batches; `aclose()` waits for them (bounded)."""

    def __init__(
        self, run: RunMany[T, R], *, name: str, max_batch: int = 256, max_in_flight: int = 2
    ) -> None:
        self.run = run
        self.name = name
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._starting = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, answer))
        self._kick(loop)
        # A caller cancelled (its worker stopping) cancels only its own answer: the batch,
        # a task of its own, finishes for the others (and skips an answer already done).
        return await answer

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._starting or len(self._running) >= self.max_in_flight or not self._queue:
            return
        self._starting = True
        task = loop.create_task(self._batch(), name=f"coalescer:{self.name}")
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._queue:
            self._kick(asyncio.get_running_loop())

    async def _batch(self) -> None:
        await asyncio.sleep(0)  # the callers of this loop turn join the batch
        self._starting = False
        batch = self._queue[: self.max_batch]
        del self._queue[: self.max_batch]
        if self._queue:
            self._kick(asyncio.get_running_loop())
        if batch:
            await self._run(batch)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.run([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or unavailable(exc) is not None:
                for _, answer in batch:
                    _settle(answer, exc)
                return
            for one in batch:  # find the poison item: each answers for itself
                await self._run([one])
            return
        except BaseException as exc:  # cancelled: the callers hear it too
            for _, answer in batch:
                _settle(answer, exc)
            raise
        for (_, answer), result in zip(batch, results, strict=True):
            _settle(answer, result)

    async def aclose(self, timeout: float = 10.0) -> None:
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


def _settle(answer: asyncio.Future[R], result: R | BaseException) -> None:
    if answer.done():
        return
    if isinstance(result, BaseException):
        answer.set_exception(result)
        answer.exception()  # retrieved: a caller that gave up leaves no warning
    else:
        answer.set_result(result)
