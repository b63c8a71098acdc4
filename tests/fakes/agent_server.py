"""A local Ultravox-style agent API for tests: create a call (agent session), get it, end it.

    async with FakeAgents() as agents:
        ...  # point agents.ultravox.api_base_url at agents.base_url
        agents.sessions       # created sessions by id
        agents.requests       # every request: method, path, headers, JSON body

``POST /api/calls`` and ``POST /api/agents/{agent_id}/calls`` answer 201 with ``callId``,
``created``, ``joinUrl`` (a ``sip:`` URI at ``sip_domain``) and ``sipUri``; the same
``Idempotency-Key`` returns the first session. ``DELETE /api/calls/{id}`` ends one (204).
Wrong ``X-API-Key``: 401. ``fail_next`` makes the next creates answer that HTTP status.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web


@dataclass
class AgentRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeAgents:
    api_key: str = "uv-test-key"
    sip_domain: str = "sip.agents.test"
    requests: list[AgentRequest] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)
    base_url: str = ""
    _by_key: dict[str, str] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/calls", self._create)
        app.router.add_post("/api/agents/{agent_id}/calls", self._create)
        app.router.add_get("/api/calls/{call_id}", self._get)
        app.router.add_delete("/api/calls/{call_id}", self._delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _record(self, request: web.Request) -> AgentRequest:
        body = await request.json() if request.can_read_body else None
        rec = AgentRequest(request.method, request.path, dict(request.headers), body)
        self.requests.append(rec)
        return rec

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("X-API-Key") == self.api_key

    async def _create(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if not self._authorized(request):
            return web.json_response({"detail": "Invalid API key."}, status=401)
        if self.fail_next:
            return web.json_response({"detail": "unavailable"}, status=self.fail_next.pop(0))
        key = request.headers.get("Idempotency-Key")
        if key and key in self._by_key:
            return web.json_response(self.sessions[self._by_key[key]], status=201)
        call_id = str(uuid.uuid4())
        session = {
            "callId": call_id,
            "created": datetime.now(UTC).isoformat(),
            "joinUrl": f"sip:{call_id}@{self.sip_domain}",
            "sipUri": f"sip:{call_id}@{self.sip_domain}",
            "agentId": request.match_info.get("agent_id"),
            "systemPrompt": (rec.body or {}).get("systemPrompt"),
            "medium": (rec.body or {}).get("medium"),
            "metadata": (rec.body or {}).get("metadata"),
            "ended": None,
        }
        self.sessions[call_id] = session
        if key:
            self._by_key[key] = call_id
        return web.json_response(session, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        await self._record(request)
        session = self.sessions.get(request.match_info["call_id"])
        if session is None:
            return web.json_response({"detail": "Not found."}, status=404)
        return web.json_response(session)

    async def _delete(self, request: web.Request) -> web.Response:
        await self._record(request)
        session = self.sessions.get(request.match_info["call_id"])
        if session is None:
            return web.json_response({"detail": "Not found."}, status=404)
        session["ended"] = datetime.now(UTC).isoformat()
        return web.Response(status=204)
