"""The message status machine: status only moves forward.

Receipts arrive late, twice or out of order; a transition that is not listed
here is recorded as a no-op, never applied. Final states have no way out.

`dead_lettered`: the dispatch job spent its retry budget and waits for an operator.
It is not final — a receipt for an attempt that did reach the provider still moves
it forward — and a dead-letter replay is the one way back to `queued`: an explicit
operator action, recorded as `message.requeued` when the replayed job runs, never a
receipt (so it is not a transition listed here).

Email adds two outcomes: `bounced` (the receiving side refused it for good: a hard bounce)
and `complained` (the recipient marked it as spam). A complaint comes after delivery, so
`delivered → complained` is the one move out of a final state; nothing leaves `complained`.
"""

from __future__ import annotations

from typing import Literal

Status = Literal[
    "scheduled",
    "queued",
    "dead_lettered",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "rejected",
    "received",
    "bounced",
    "complained",
]

FINAL: frozenset[str] = frozenset(
    {"delivered", "undelivered", "failed", "rejected", "received", "bounced", "complained"}
)

_OUTCOMES = frozenset({"delivered", "undelivered", "failed", "bounced", "complained"})
_FORWARD: dict[str, frozenset[str]] = {
    "scheduled": frozenset({"queued", "dead_lettered", "sent", "rejected"} | _OUTCOMES),
    "queued": frozenset({"dead_lettered", "sent", "rejected"} | _OUTCOMES),
    "dead_lettered": frozenset({"sent", "rejected"} | _OUTCOMES),
    "sent": _OUTCOMES,
    "delivered": frozenset({"complained"}),
}


def can_move(current: str, new: str) -> bool:
    return new in _FORWARD.get(current, frozenset())


def sources_for(new: str) -> list[str]:
    """Every status from which `new` is a forward move (for an atomic compare-and-set UPDATE)."""
    return [old for old, targets in _FORWARD.items() if new in targets]


def forward_pairs() -> tuple[list[str], list[str]]:
    """Every forward move as two parallel lists (from, to), for a set-based compare-and-set."""
    pairs = sorted((old, new) for old, targets in _FORWARD.items() for new in targets)
    return [old for old, _ in pairs], [new for _, new in pairs]
