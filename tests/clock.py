"""Guardrail clocks for tests: the time of day a test sees is chosen by the test, never the
hour at which the suite happens to run (DESIGN.md, principle 12).

A test marked `@pytest.mark.hours` runs twice, at `INSTANTS["day"]` and `INSTANTS["night"]`
in the sandbox numbers' zone (+1 415: America/Los_Angeles); every other test runs at the day
instant, and fails if the time of day decided anything for it (tests/conftest.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

SANDBOX_ZONE = ZoneInfo("America/Los_Angeles")  # +1 415 555 01xx
# A plain Wednesday (no holiday in any calendar of config/guardrails.toml), summer time.
INSTANTS: dict[str, datetime] = {
    "day": datetime(2026, 6, 10, 12, 0, tzinfo=SANDBOX_ZONE),  # open for every rule
    "night": datetime(2026, 6, 10, 3, 0, tzinfo=SANDBOX_ZONE),  # closed; opens at 08:00
}


class MovingClock:
    """A clock that starts at `start` and then runs with real (monotonic) time, so timeouts,
    windows and waits in a test still pass as they would; remembers what it handed out."""

    def __init__(self, start: datetime) -> None:
        self.start = start.astimezone(UTC)
        self._t0 = time.monotonic()
        self._issued: set[datetime] = set()

    def __call__(self) -> datetime:
        now = self.start + timedelta(seconds=time.monotonic() - self._t0)
        self._issued.add(now)
        return now

    def issued(self, instant: datetime) -> bool:
        """Did this clock produce `instant` (rather than a clock a test set itself)?"""
        return instant in self._issued


def local_instant_before(hh: int, mm: int, ss: int, *, zone: ZoneInfo = SANDBOX_ZONE) -> datetime:
    """The latest instant before now at the wall-clock time hh:mm:ss in `zone`: a clock started
    there is behind the real (and the database's) clock by less than a day."""
    now = datetime.now(zone)
    at = now.replace(hour=hh, minute=mm, second=ss, microsecond=0)
    return at if at < now else at - timedelta(days=1)


def real_time_of_day() -> str:
    """`day` while the federal window (08:00-21:00) is open in the sandbox zone, else `night`."""
    return "day" if 8 <= datetime.now(SANDBOX_ZONE).hour < 21 else "night"


def next_local(start: datetime, hh: int, mm: int = 0, *, zone: ZoneInfo = SANDBOX_ZONE) -> str:
    """The first hh:mm wall-clock time in `zone` after `start`, as the API writes it (UTC, Z)."""
    local = start.astimezone(zone)
    at = local.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if at <= local:
        at = (local + timedelta(days=1)).replace(hour=hh, minute=mm, second=0, microsecond=0)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
