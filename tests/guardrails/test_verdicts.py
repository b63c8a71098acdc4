"""Verdict values: stable codes, UTC-only defer times, plain JSON inputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from guardrails.verdicts import Allow, Defer, Deny, DenyCode


def test_deny_codes_are_stable() -> None:
    assert [c.value for c in DenyCode] == [
        "dnc_listed",
        "outside_calling_hours",
        "rate_limited",
        "content_blocked",
        "opted_out",
        "frequency_cap",
        "email_suppressed",
        "unsubscribe_link_required",
        "postal_address_required",
    ]
    assert DenyCode("opted_out") is DenyCode.OPTED_OUT


def test_defer_requires_aware_utc() -> None:
    until = datetime(2025, 3, 12, 12, tzinfo=UTC)
    assert Defer(until=until, reason="r", rule="x").until == until
    with pytest.raises(ValueError, match="UTC"):
        Defer(until=datetime(2025, 3, 12, 12), reason="r", rule="x")
    with pytest.raises(ValueError, match="UTC"):
        Defer(until=datetime(2025, 3, 12, 12, tzinfo=timezone(timedelta(hours=-5))),
              reason="r", rule="x")  # fmt: skip


def test_verdicts_are_frozen_and_serialisable() -> None:
    deny = Deny(code=DenyCode.DNC_LISTED, reason="on the list", rule="dnc", inputs={"n": 1})
    with pytest.raises(AttributeError):
        deny.reason = "changed"  # type: ignore[misc]
    assert json.loads(json.dumps({"code": deny.code, **deny.inputs})) == {
        "code": "dnc_listed",
        "n": 1,
    }
    assert Allow().inputs == {}
