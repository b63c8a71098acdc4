"""Turning usage rows into Stripe meter events: pure, so a batch is planned once and stored.

Rows of one tenant and unit whose times fall in one `window` become one event (Stripe sums a
meter's events over the billing period, so this changes no total, only the request count);
its timestamp is the group's latest usage, so no usage is dated before it happened and at most
one window late. The identifier is the prefix and the group's smallest usage row id: every
row is in exactly one event, so no two events ever share one, and a resent event keeps its.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Stripe takes up to 100 events per meter_event_stream request.
EVENTS_PER_REQUEST = 100


@dataclass(frozen=True, slots=True)
class UsageRow:
    id: int
    tenant_id: uuid.UUID
    unit: str
    quantity: int
    recorded_at: datetime
    stripe_customer_id: str


@dataclass(frozen=True, slots=True)
class MeterEvent:
    identifier: str
    tenant_id: uuid.UUID
    unit: str
    event_name: str
    stripe_customer_id: str
    value: int
    occurred_at: datetime

    def params(self) -> dict[str, Any]:
        """The event as the meter_event_stream request carries it (payload values are strings)."""
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "timestamp": rfc3339(self.occurred_at),
            "payload": {"stripe_customer_id": self.stripe_customer_id, "value": str(self.value)},
        }


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plan_events(
    rows: list[UsageRow], meters: Mapping[str, str], window: float, prefix: str
) -> list[MeterEvent]:
    """The meter events that bill `rows` (rows of units without a meter are the caller's to
    leave out). Groups worth nothing (a zero-second call) send no event."""
    groups: dict[tuple[uuid.UUID, str, str, int], list[UsageRow]] = {}
    for row in rows:
        slot = int(row.recorded_at.timestamp() // window)
        groups.setdefault((row.tenant_id, row.stripe_customer_id, row.unit, slot), []).append(row)
    events = []
    for (tenant_id, customer, unit, _), members in groups.items():
        value = sum(r.quantity for r in members)
        if value <= 0:
            continue
        events.append(
            MeterEvent(
                identifier=f"{prefix}-{min(r.id for r in members)}",
                tenant_id=tenant_id,
                unit=unit,
                event_name=meters[unit],
                stripe_customer_id=customer,
                value=value,
                occurred_at=max(r.recorded_at for r in members),
            )
        )
    events.sort(key=lambda e: e.identifier)
    return events


def chunks(events: list[MeterEvent], size: int = EVENTS_PER_REQUEST) -> list[list[MeterEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]
