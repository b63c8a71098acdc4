"""Verdicts returned by the pure guardrail checks.

Every check answers with one of three values so the chain can store and emit
it unchanged (principle 2): `Allow`, `Deny` (never send) or `Defer` (send at
or after `until`). `inputs` records what decided the verdict as plain JSON
values, so an auditor can replay the decision from the stored event alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class DenyCode(StrEnum):
    """Stable machine-readable deny codes (API `code`, event payloads, metrics)."""

    DNC_LISTED = "dnc_listed"
    OUTSIDE_CALLING_HOURS = "outside_calling_hours"
    RATE_LIMITED = "rate_limited"
    CONTENT_BLOCKED = "content_blocked"
    OPTED_OUT = "opted_out"
    FREQUENCY_CAP = "frequency_cap"
    EMAIL_SUPPRESSED = "email_suppressed"
    UNSUBSCRIBE_LINK_REQUIRED = "unsubscribe_link_required"
    POSTAL_ADDRESS_REQUIRED = "postal_address_required"


@dataclass(frozen=True, slots=True)
class Allow:
    """The action may proceed; `inputs` still records why (for the audit trail)."""

    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Deny:
    """The action must not be sent. `rule` names the rule that denied it."""

    code: DenyCode
    reason: str
    rule: str
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Defer:
    """The action may be sent at or after `until` (an aware UTC instant)."""

    until: datetime
    reason: str
    rule: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        offset = self.until.utcoffset()
        if offset is None or offset != timedelta(0):
            raise ValueError("Defer.until must be an aware UTC datetime")


Verdict = Allow | Deny | Defer
