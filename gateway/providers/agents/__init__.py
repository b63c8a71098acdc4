"""AI voice-agent providers: create an agent session, get the SIP URI a call is bridged to.

``base`` holds the contract, ``ultravox`` an Ultravox-style HTTP adapter, ``sandbox`` a local
one that needs no account (its SIP URI answers on the sandbox and the Asterisk test server).
"""

from gateway.providers.agents.base import AgentError, AgentProvider, AgentSession

__all__ = ["AgentError", "AgentProvider", "AgentSession"]
