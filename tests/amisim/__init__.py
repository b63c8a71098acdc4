"""A protocol-level AMI server for tests, rebuilt from the real transcripts in
../shared/asterisk-ami/: ``framing`` (wire format), ``scenarios`` (event sequences per call
outcome), ``server`` (the TCP server and its test hooks).

``captures/`` holds the transcripts the tests replay byte for byte (the ``*.raw.jsonl`` files
that tests/sip/test_ami_wire.py reads) and the transcripts' README, copied verbatim from
../shared/asterisk-ami/ so a clone runs every test; the README indexes the full set, of which
only those files are kept here."""

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
