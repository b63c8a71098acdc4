"""An Ultravox-style AI agent provider over HTTP.

One agent session per answered call: ``POST {base}/api/calls`` (or
``/api/agents/{agent_id}/calls`` for a stored agent) with the prompt, voice and the SIP
medium; the answer names the session (``callId``) and where to reach it over SIP
(``sipUri``, or a ``joinUrl`` that is itself a ``sip:`` URI). The key goes in ``X-API-Key``;
each request carries an ``Idempotency-Key`` (the call's attempt key) so a retry after a
timeout does not start a second agent. ``DELETE /api/calls/{callId}`` ends a session.

Errors: connection failures, timeouts, 429 and 5xx are transient; other 4xx permanent.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.providers.agents.base import AgentError, AgentProvider, AgentSession


class UltravoxAgents(AgentProvider):
    def __init__(
        self,
        *,
        api_base_url: str,
        api_key: str,
        timeout: float = 10.0,
        name: str = "ultravox",
        sip_medium: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.api_base_url = api_base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.sip_medium = sip_medium if sip_medium is not None else {"sip": {"incoming": {}}}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"X-API-Key": self.api_key},
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UltravoxAgents is not started")
        return self._session

    async def create_session(
        self, agent: dict[str, Any], *, call_id: str, trace_id: str, idempotency_key: str
    ) -> AgentSession:
        body: dict[str, Any] = {
            "medium": self.sip_medium,
            "metadata": {"trunkline_call_id": call_id, "trace_id": trace_id}
            | {str(k): str(v) for k, v in (agent.get("metadata") or {}).items()},
        }
        if agent.get("system_prompt"):
            body["systemPrompt"] = agent["system_prompt"]
        if agent.get("voice"):
            body["voice"] = agent["voice"]
        if agent.get("greeting"):
            body["firstSpeakerSettings"] = {"agent": {"text": agent["greeting"]}}
        agent_id = agent.get("agent_id")
        path = f"/api/agents/{agent_id}/calls" if agent_id else "/api/calls"
        data = await self._request(
            "POST", path, json=body, headers={"Idempotency-Key": idempotency_key}
        )
        session_id = str(data.get("callId") or "")
        sip_uri = data.get("sipUri") or data.get("joinUrl") or ""
        if not session_id or not str(sip_uri).startswith(("sip:", "sips:")):
            raise AgentError(
                f"{self.name} answered without a session id and SIP URI: {data}",
                code="agent_bad_response",
                transient=False,
            )
        return AgentSession(
            provider=self.name,
            session_id=session_id,
            sip_uri=str(sip_uri),
            join_url=data.get("joinUrl"),
            raw={k: v for k, v in data.items() if k in ("callId", "created", "joinUrl", "sipUri")},
        )

    async def end_session(self, session_id: str) -> None:
        try:
            await self._request("DELETE", f"/api/calls/{session_id}")
        except AgentError as exc:
            if exc.code != "agent_http_404":
                raise

    async def _request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        url = self.api_base_url + path
        try:
            async with self.http.request(method, url, **kw) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    transient = resp.status == 429 or resp.status >= 500
                    raise AgentError(
                        f"{self.name} {method} {path}: HTTP {resp.status}: {text[:200]}",
                        code=f"agent_http_{resp.status}",
                        transient=transient,
                    )
                if not text:
                    return {}
                data = await resp.json(content_type=None)
                return data if isinstance(data, dict) else {}
        except TimeoutError as exc:
            raise AgentError(
                f"{self.name} {method} {path}: timed out", code="timeout", transient=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise AgentError(
                f"{self.name} {method} {path}: {exc!r}", code="agent_unreachable", transient=True
            ) from exc
