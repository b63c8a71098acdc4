"""Stopping a background task in bounded time, even when it swallowed a cancellation.

Why: Python 3.11's `asyncio.wait_for` returns the result instead of raising when the
cancellation lands as the awaited thing completes, and redis-py wraps every command's
send in one (with a socket timeout set, as gateway/redis.py does). A `while True` loop
that makes such a call then goes on after its owner's one `cancel()`, and an owner that
awaits the task hangs shutdown forever. So an owner stops its loop with a flag the loop
checks and with `cancel_and_wait`, which cancels again while the task goes on and gives
up (leaving it to the event loop's own teardown) after `attempts` tries.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.logs import get_logger

log = get_logger(__name__)


async def cancel_and_wait(
    task: asyncio.Future[Any] | None, *, attempts: int = 20, each: float = 0.5
) -> bool:
    """Cancel `task` and wait for it to end, cancelling again every `each` seconds while it
    goes on; True when it ended. Its outcome is retrieved (no "never retrieved" warning)."""
    if task is None:
        return True
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=each)
    if not task.done():
        log.warning("task did not stop when cancelled", task=_name(task))
        return False
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
    return True


def _name(task: asyncio.Future[Any]) -> str:
    get_name = getattr(task, "get_name", None)
    return get_name() if get_name is not None else repr(task)
