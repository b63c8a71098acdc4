"""A protocol-level AMI server for tests, rebuilt from the real transcripts in
../shared/asterisk-ami/: ``framing`` (wire format), ``scenarios`` (event sequences per call
outcome), ``server`` (the TCP server and its test hooks)."""

from .framing import Action
from .scenarios import (
    ANSWER,
    BUSY,
    DECLINE,
    FAR_END_DOWN,
    NO_ANSWER,
    NOT_FOUND,
    UNAVAILABLE,
    Answer,
    FarEndDown,
    NoAnswer,
    Outcome,
    Reject,
)
from .server import AMISimServer, Received

__all__ = [
    "ANSWER",
    "BUSY",
    "DECLINE",
    "FAR_END_DOWN",
    "NOT_FOUND",
    "NO_ANSWER",
    "UNAVAILABLE",
    "AMISimServer",
    "Action",
    "Answer",
    "FarEndDown",
    "NoAnswer",
    "Outcome",
    "Received",
    "Reject",
]
