"""A local agent provider: every session gets a SIP URI that the sandbox (and the Asterisk
test server) answer, so on_answer.agent works with no account."""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.providers.agents.base import AgentProvider, AgentSession


class SandboxAgents(AgentProvider):
    def __init__(self, *, name: str = "sandbox", domain: str = "agents.sandbox.invalid") -> None:
        self.name = name
        self.domain = domain

    async def create_session(
        self, agent: dict[str, Any], *, call_id: str, trace_id: str, idempotency_key: str
    ) -> AgentSession:
        session = "sa" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
        return AgentSession(
            provider=self.name,
            session_id=session,
            sip_uri=f"sip:agent-{session}@{self.domain}",
            raw={"agent": agent},
        )
