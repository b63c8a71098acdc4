"""Client-side helper for AMI tests: record the events a handler receives and wait for one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


class EventRecorder:
    """An ``on_event("*", recorder)`` handler that keeps every event, in order.

    ``await recorder.wait_for("Hangup", Uniqueid="gw-1")`` returns the first matching event,
    already received or still to come (header names and event names match in any case).
    """

    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Mapping[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def named(self, name: str, **headers: str) -> list[Mapping[str, Any]]:
        return [e for e in self.events if _matches(e, name, headers)]

    async def wait_for(self, name: str, timeout: float = 2.0, **headers: str) -> Mapping[str, Any]:
        return (await self.wait_count(name, 1, timeout, **headers))[0]

    async def wait_count(
        self, name: str, count: int, timeout: float = 2.0, **headers: str
    ) -> list[Mapping[str, Any]]:
        """Wait until ``count`` matching events were received; return all matches so far."""
        async with asyncio.timeout(timeout):
            while len(found := self.named(name, **headers)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


def _matches(event: Mapping[str, Any], name: str, headers: Mapping[str, str]) -> bool:
    if str(event.get("Event", "")).lower() != name.lower():
        return False
    return all(event.get(key) == value for key, value in headers.items())
