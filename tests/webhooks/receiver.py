"""A real HTTP receiver for webhook tests: answers from a script, records every request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    script: list[int] = field(default_factory=list)  # statuses to answer, in order
    default: int = 200
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else self.default
        self.requests.append(Received(dict(request.headers), body, status))
        self.arrived.set()
        return web.Response(status=status, text=f"receiver said {status}")

    def acknowledged(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def wait_for(self, predicate, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"receiver: condition not met; got {len(self.requests)} requests"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.1))
            except TimeoutError:
                pass
