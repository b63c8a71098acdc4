"""The cleared action: the only value a provider adapter accepts.

It is minted by the guardrail chain alone (`_mint` is called from
`guardrails/chain.py` and nowhere else — a test checks the call graph) and
sealed with an HMAC under a per-process random key, so a value built any
other way (constructor, `dataclasses.replace`, `object.__new__`, a copy with
a changed recipient) fails `verify()`. It is also short-lived: a clearance is
for sending now, not for storing and replaying later.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from gateway.core.actions import OutboundAction

_KEY = secrets.token_bytes(32)
MAX_AGE_SECONDS = 120.0


class ForgedClearance(Exception):
    """A provider adapter was handed something the guardrail chain did not issue."""


def _digest(action: OutboundAction, stage: str, issued_at: float) -> bytes:
    # (hmac.digest: the one-shot C path, same value as hmac.new(...).digest())
    return hmac.digest(_KEY, repr((action, stage, issued_at)).encode(), "sha256")


@dataclass(frozen=True)
class ClearedAction:
    action: OutboundAction
    stage: str
    issued_at: float
    seal: bytes

    def verify(self) -> OutboundAction:
        """The action, if this clearance is genuine and fresh; ForgedClearance otherwise."""
        if not isinstance(self, ClearedAction) or not isinstance(self.seal, bytes):
            raise ForgedClearance("not a cleared action")
        expected = _digest(self.action, self.stage, self.issued_at)
        if not hmac.compare_digest(expected, self.seal):
            raise ForgedClearance("the clearance seal does not match its action")
        if time.monotonic() - self.issued_at > MAX_AGE_SECONDS:
            raise ForgedClearance("the clearance has expired; run the guardrail chain again")
        return self.action


def _mint(action: OutboundAction, stage: str) -> ClearedAction:
    issued_at = time.monotonic()
    return ClearedAction(action, stage, issued_at, _digest(action, stage, issued_at))
