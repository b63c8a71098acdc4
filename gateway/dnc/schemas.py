"""The DNC API's request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.phone import E164
from gateway.http.pagination import ListQuery, Page

Source = Literal["internal", "national_registry", "state_registry", "litigator", "consumer_opt_out"]


class DncEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: E164
    source: Source = Field(
        default="internal",
        description="internal, litigator and consumer_opt_out block every purpose; "
        "national_registry and state_registry block marketing only",
    )
    expires_at: datetime | None = Field(default=None, description="when the entry stops applying")
    note: str | None = Field(default=None, max_length=500)


class DncEntry(BaseModel):
    number: str
    source: Source
    scope: Literal["tenant", "global"] = Field(
        description="tenant: your list; global: the operator's list, applies to every tenant"
    )
    expires_at: datetime | None
    note: str | None
    origin: str
    created_at: datetime


class Blocked(BaseModel):
    marketing: bool
    transactional: bool


class DncStatus(BaseModel):
    number: str
    blocked: Blocked = Field(
        description="whether an action with each purpose would be suppressed now"
    )
    entries: list[DncEntry]


class DncDeleteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Source | None = Field(default=None, description="remove only this source's entry")


class DncEntryList(Page[DncEntry]):
    pass


class DncListQuery(ListQuery):
    source: Source | None = Field(default=None, description="only entries from this source")
