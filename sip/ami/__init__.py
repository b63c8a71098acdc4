"""The AMI connection layer: one long-lived, self-healing AMI session per Asterisk.

``AMIClient`` is the entry point; ``errors`` says what can go wrong; ``protocol`` is the byte-level
framing. Events are panoramisk ``Message`` objects (case-insensitive headers, attribute access).
"""

from panoramisk.message import Message

from .client import AMIClient, OriginateQueued
from .errors import (
    AMIActionError,
    AMIAuthError,
    AMIClosed,
    AMIConnectError,
    AMIConnectionLost,
    AMIError,
    AMIKeepaliveTimeout,
    AMIListIncomplete,
    AMINotConnected,
    AMIProtocolError,
    AMIShutdown,
    AMITimeout,
)

__all__ = [
    "AMIActionError",
    "AMIAuthError",
    "AMIClient",
    "AMIClosed",
    "AMIConnectError",
    "AMIConnectionLost",
    "AMIError",
    "AMIKeepaliveTimeout",
    "AMIListIncomplete",
    "AMINotConnected",
    "AMIProtocolError",
    "AMIShutdown",
    "AMITimeout",
    "Message",
    "OriginateQueued",
]
