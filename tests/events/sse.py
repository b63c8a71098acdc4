"""A small, strict SSE client for tests (what EventSource does, minus the auto-reconnect)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Frame:
    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id)


class SSEStream:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []
        self.retry: int | None = None

    async def next(self, timeout: float = 10.0) -> Frame | None:
        """The next event frame (comments and retry lines are recorded); None at end of stream."""
        async with asyncio.timeout(timeout):
            return await self._next()

    async def _next(self) -> Frame | None:
        frame = Frame()
        data: list[str] = []
        seen = False
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n").rstrip("\r")
            if line == "":
                if seen and (data or frame.id is not None):
                    frame.data = "\n".join(data)
                    return frame
                seen = False
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            seen = True
            if name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)
                seen = False

    async def close(self) -> None:
        self.resp.close()


def sse_headers(token: str, last_event_id: int | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers
