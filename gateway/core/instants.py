"""A query's instant: an ISO 8601 time (UTC when it has no offset), within what PostgreSQL and
Python share.

One near year 1 or 9999 overflows when moved to UTC (Python raises OverflowError while
encoding it): the fuzzer found that a 500 on `GET /v1/usage`. It is a 422 at the edge now.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

FIRST_YEAR, LAST_YEAR = 1970, 9998


def _in_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the documented reading of a time with no offset
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"must be between {FIRST_YEAR} and {LAST_YEAR} (UTC)") from None
    if not FIRST_YEAR <= utc.year <= LAST_YEAR:
        raise ValueError(f"must be between {FIRST_YEAR} and {LAST_YEAR} (UTC)")
    return utc


Instant = Annotated[datetime, AfterValidator(_in_range)]
