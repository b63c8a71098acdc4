"""Background loops stop in bounded time even when a wait inside swallowed their cancel.

Python 3.11's wait_for returns the result instead of raising when the cancel lands as the
awaited call completes, and redis-py wraps every command's send in one: a loop making such
a call goes on after its owner's one cancel. Each fake below does what wait_for does then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.ops.counters import SharedCounters
from gateway.stopping import cancel_and_wait
from sip.calls import leader as leader_module
from sip.calls.leader import LeaderLease


class Swallower:
    """An awaitable step that swallows the first cancel that reaches it, as wait_for can."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.swallowed = 0
        self.entered = asyncio.Event()

    async def step(self) -> None:
        self.entered.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def closes_within(close: Coroutine[Any, Any, None], seconds: float = 5.0) -> bool:
    """Whether `close` returns within `seconds`. Not `asyncio.timeout` around it: its cancel
    would reach the very task that did not stop, and stop it (an owner that awaits its task
    passes its own cancel on), so a close that hangs for good would pass."""
    closing = asyncio.get_running_loop().create_task(close)
    done, _ = await asyncio.wait({closing}, timeout=seconds)
    if not done:
        await cancel_and_wait(closing)  # not to leave it behind
    return closing in done


async def test_cancel_and_wait_cancels_again_while_the_task_goes_on():
    swallow = Swallower()

    async def loop() -> None:
        while True:  # the shape of a loop with no flag to stop on
            await swallow.step()

    task = asyncio.get_running_loop().create_task(loop())
    await swallow.entered.wait()
    async with asyncio.timeout(5):
        assert await cancel_and_wait(task, each=0.1)
    assert swallow.swallowed == 1 and task.cancelled()


class SwallowingCounters(SharedCounters):
    def __init__(self) -> None:
        super().__init__(redis=None, interval=0.001)  # type: ignore[arg-type]
        self.swallow = Swallower()

    async def flush(self) -> None:
        if asyncio.current_task() is self._task:  # the timer's flush (close() flushes too)
            await self.swallow.step()


async def test_shared_counters_close_returns_when_a_flush_swallowed_the_cancel():
    counters = SwallowingCounters()
    counters.start()
    await counters.swallow.entered.wait()
    assert await closes_within(counters.close())
    assert counters.swallow.swallowed == 1


async def test_leader_lease_close_returns_when_a_renewal_swallowed_the_cancel(
    monkeypatch: pytest.MonkeyPatch,
):
    swallow = Swallower()

    async def take(_redis: object, _keys: object, _args: object) -> int:
        await swallow.step()
        return 1

    async def give_back(_redis: object, _keys: object, _args: object) -> int:
        return 1

    monkeypatch.setattr(leader_module, "_TAKE", take)
    monkeypatch.setattr(leader_module, "_GIVE_BACK", give_back)
    lease = LeaderLease(None, "tl:test:leader", ttl=0.03)  # type: ignore[arg-type]
    lease.start()
    await swallow.entered.wait()
    assert await closes_within(lease.close())
    assert swallow.swallowed == 1 and not lease.held
