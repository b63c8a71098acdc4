"""The agent-provider contract: a session per call, reached over SIP.

An agent session is not a call to a consumer: it is the tenant's own AI agent, so creating one
needs no cleared action. The call it is bridged to was cleared when it was placed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class AgentError(Exception):
    """The agent provider refused or failed; `transient` says whether a retry can help."""

    def __init__(self, detail: str, *, code: str, transient: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.transient = transient


@dataclass(frozen=True)
class AgentSession:
    provider: str
    session_id: str
    sip_uri: str  # where the call is bridged to
    join_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class AgentProvider(ABC):
    name: str

    @abstractmethod
    async def create_session(
        self, agent: dict[str, Any], *, call_id: str, trace_id: str, idempotency_key: str
    ) -> AgentSession:
        """Start an agent session for one call; retried with the same key after a timeout."""

    async def end_session(self, session_id: str) -> None:  # noqa: B027 - optional
        """Tell the provider the call is over (best effort)."""

    async def start(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Open clients that need a running event loop."""

    async def close(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Close what start() opened."""
