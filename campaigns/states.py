"""The prospect state machine: a table of forward moves, as gateway/calls/states.py.

    pending ─→ dialing ─→ answered | busy | no_answer | machine | failed | delivered (outcome)
       │          ↑                           │
       │          └──── retry_scheduled ←─────┤
       │                                      └─→ done | abandoned | max_attempts | canceled
       └─→ suppressed | canceled

One attempt only moves forward: an outcome never goes back to `dialing`. The one way back is
a NEW attempt (`retry_scheduled → dialing`, attempts + 1), so "monotonic" holds per attempt
and a late or repeated outcome of an earlier attempt is a no-op (the SQL compares `attempts`).
The outcome states are passed through inside one transaction (the row lands on the state
after it, with the outcome as `reason`); each step is still its own `campaign.prospect.*`
event. `suppressed` is also reached from `dialing` when the chain refuses the dial (a DNC
entry added after the import).
"""

from __future__ import annotations

from typing import Literal

ProspectStatus = Literal[
    "pending",
    "dialing",
    "answered",
    "busy",
    "no_answer",
    "machine",
    "failed",
    "delivered",
    "retry_scheduled",
    "done",
    "abandoned",
    "max_attempts",
    "suppressed",
    "canceled",
]
Outcome = Literal["answered", "busy", "no_answer", "machine", "failed", "delivered"]

# `delivered` is the outcome of an sms campaign's text (its other outcome is `failed`).
OUTCOMES: frozenset[str] = frozenset(
    {"answered", "busy", "no_answer", "machine", "failed", "delivered"}
)
FINAL: frozenset[str] = frozenset({"done", "abandoned", "max_attempts", "suppressed", "canceled"})
# Prospects the dialer may still move: a campaign with none of these left is completed.
OPEN: frozenset[str] = frozenset({"pending", "dialing", "retry_scheduled"})
DUE: frozenset[str] = frozenset({"pending", "retry_scheduled"})

_FORWARD: dict[str, frozenset[str]] = {
    "pending": frozenset({"dialing", "suppressed", "canceled"}),
    "dialing": OUTCOMES | frozenset({"suppressed", "canceled", "failed"}),
    **{
        o: frozenset({"retry_scheduled", "done", "abandoned", "max_attempts", "canceled"})
        for o in OUTCOMES
    },
    "retry_scheduled": frozenset({"dialing", "canceled"}),
}


def can_move(current: str, new: str) -> bool:
    return new in _FORWARD.get(current, frozenset())


def path(current: str, *steps: str) -> list[str]:
    """The steps from `current`, checked: raises ValueError on a move the table forbids."""
    out, at = [], current
    for step in steps:
        if not can_move(at, step):
            raise ValueError(f"prospect cannot move from {at} to {step}")
        out.append(step)
        at = step
    return out
