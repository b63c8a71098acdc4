"""The message status machine: status only moves forward.

Receipts arrive late, twice or out of order; a transition that is not listed
here is recorded as a no-op, never applied. Final states have no way out.
"""

from __future__ import annotations

from typing import Literal

Status = Literal[
    "scheduled", "queued", "sent", "delivered", "undelivered", "failed", "rejected", "received"
]

FINAL: frozenset[str] = frozenset({"delivered", "undelivered", "failed", "rejected", "received"})

_FORWARD: dict[str, frozenset[str]] = {
    "scheduled": frozenset({"queued", "sent", "delivered", "undelivered", "failed", "rejected"}),
    "queued": frozenset({"sent", "delivered", "undelivered", "failed", "rejected"}),
    "sent": frozenset({"delivered", "undelivered", "failed"}),
}


def can_move(current: str, new: str) -> bool:
    return new in _FORWARD.get(current, frozenset())


def sources_for(new: str) -> list[str]:
    """Every status from which `new` is a forward move (for an atomic compare-and-set UPDATE)."""
    return [old for old, targets in _FORWARD.items() if new in targets]
