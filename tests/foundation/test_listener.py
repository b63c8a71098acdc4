"""The change listener's shutdown is bounded, even when a wait inside swallows a cancel."""

from __future__ import annotations

import asyncio

from gateway.listener import ChangeListener


class SwallowsOneCancel(ChangeListener):
    """What Python 3.11's wait_for does when the awaited query completes as the cancel
    arrives: the CancelledError is lost once and the heartbeat loop goes on."""

    swallowed = 0

    async def _listen(self) -> None:
        while not self._closing or not self.swallowed:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.swallowed += 1
                asyncio.current_task().uncancel()


async def test_close_returns_when_a_cancel_was_swallowed(database_url):
    listener = SwallowsOneCancel(database_url)
    await listener.start()
    await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        await listener.close()
    assert listener.swallowed == 1
    assert not listener.listening


async def test_close_of_a_real_listener_is_prompt(database_url):
    listener = ChangeListener(database_url, heartbeat=0.001)
    listener.subscribe("trunkline_test", lambda _payload: None, lambda: None)
    await listener.start()
    for _ in range(1000):
        if listener.listening:
            break
        await asyncio.sleep(0.01)
    assert listener.listening
    async with asyncio.timeout(5):
        await listener.close()
