"""The call status machine: status only moves forward (DESIGN principle 5).

    scheduled ─┐
               ├→ queued → dialing → ringing → answered → completed
               │      │        │         │
               │      └────────┴─────────┴──→ busy | no_answer | failed | canceled
               └→ rejected (a guardrail said no, at accept or at dispatch)

Any live status may jump forward (an AMI ``Newstate Up`` can overtake ``Ringing`` on the
wire, a Twilio ``in-progress`` callback can arrive before ``ringing``). A report of an earlier
status is a recorded no-op, never applied; the final states have no way out. Once answered, the
only end is ``completed``: what the called party said before answering (busy, no answer,
declined) is an outcome only of an unanswered call. A provider's *final* report ends a call
whatever live status we held (``settled``): an unanswered-kind end of an answered call (a
Hangup we classified without having seen the answer, a provider's "canceled") is recorded as
``completed`` with its cause, never ignored while the call keeps its channel.
"""

from __future__ import annotations

from typing import Literal

CallStatus = Literal[
    "scheduled",
    "queued",
    "dialing",
    "ringing",
    "answered",
    "completed",
    "busy",
    "no_answer",
    "failed",
    "canceled",
    "rejected",
]

LIVE: frozenset[str] = frozenset({"dialing", "ringing", "answered"})
FINAL: frozenset[str] = frozenset(
    {"completed", "busy", "no_answer", "failed", "canceled", "rejected"}
)
UNANSWERED_ENDS: frozenset[str] = frozenset({"busy", "no_answer", "failed", "canceled"})

_FORWARD: dict[str, frozenset[str]] = {
    "scheduled": frozenset(
        {"queued", "dialing", "ringing", "answered", "completed", "rejected", "canceled"}
    )
    | UNANSWERED_ENDS,
    "queued": frozenset({"dialing", "ringing", "answered", "completed", "rejected"})
    | UNANSWERED_ENDS,
    "dialing": frozenset({"ringing", "answered", "completed"}) | UNANSWERED_ENDS,
    "ringing": frozenset({"answered", "completed"}) | UNANSWERED_ENDS,
    # An answered call can only complete: a late "busy" or "failed" for it is a no-op.
    "answered": frozenset({"completed"}),
}

# When a status is reached, the timestamp column it stamps (first time only).
STAMPS: dict[str, str] = {
    "dialing": "dialing_at",
    "ringing": "ringing_at",
    "answered": "answered_at",
    **{s: "ended_at" for s in FINAL},
}


def can_move(current: str, new: str) -> bool:
    return new in _FORWARD.get(current, frozenset())


def settled(current: str, reported: str) -> str:
    """The status a provider's report moves the call to: a final report of an unanswered kind
    (busy, no_answer, failed, canceled) for an answered call ends it as ``completed`` — the
    call was answered, and it is over. Everything else is the report itself (which
    ``can_move`` may still refuse: a final status never moves again)."""
    if current == "answered" and reported in UNANSWERED_ENDS:
        return "completed"
    return reported


def sources_for(new: str) -> list[str]:
    """Every status from which ``new`` is a forward move (for a compare-and-set UPDATE)."""
    return [old for old, targets in _FORWARD.items() if new in targets]
