from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from gateway.events.model import TYPES_PATTERN, TypeFilter

MAX_ID = 2**63 - 1  # event ids are PostgreSQL bigints
_TYPES_DOC = (
    "comma-separated event types or prefixes, e.g. `message.*,call.completed` (default: all)"
)


def _check_types(value: str | None) -> str | None:
    if value is not None:
        TypeFilter.parse(value)
    return value


class EventStreamQuery(BaseModel):
    model_config = {"extra": "forbid"}

    last_event_id: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ID,
        description="resume after this event id (the `Last-Event-ID` header wins when both are sent); "
        "0 = from the oldest retained event; omitted = live events from now on",
    )
    types: str | None = Field(
        default=None,
        max_length=1000,
        description=_TYPES_DOC,
        json_schema_extra={"pattern": TYPES_PATTERN},
    )

    _types = field_validator("types")(_check_types)


class EventPageQuery(BaseModel):
    model_config = {"extra": "forbid"}

    after: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ID,
        description="return events after this id (the previous page's `last_event_id`); omitted = from the oldest retained",
    )
    limit: int = Field(default=100, ge=1, le=1000)
    types: str | None = Field(
        default=None,
        max_length=1000,
        description=_TYPES_DOC,
        json_schema_extra={"pattern": TYPES_PATTERN},
    )

    _types = field_validator("types")(_check_types)


class Event(BaseModel):
    id: int = Field(description="the event id: increasing in commit order; resume after it")
    type: str
    subject: str
    trace_id: str | None
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    data: list[Event]
    has_more: bool = Field(description="more events are available right now: ask again at once")
    last_event_id: int = Field(
        description="pass as `after` for the next page (unchanged when the page is empty)"
    )
    reset: bool = Field(
        default=False,
        description="`after` was older than the retention window: events were pruned before "
        "you read them; resynchronise your state, then continue from `last_event_id`",
    )


class PoolStats(BaseModel):
    in_use: int
    size: int | None = None


class Stats(BaseModel):
    messages: dict[str, int] = Field(description="message status events seen, by status")
    calls: dict[str, int] = Field(description="call status events seen, by status")
    pools: dict[str, PoolStats] = Field(description="latest reported occupancy per channel pool")
    as_of_event_id: int = Field(description="the event id the counters include everything up to")
