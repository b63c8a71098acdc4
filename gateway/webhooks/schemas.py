from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from gateway.events.model import ONE_TYPE, validate_patterns
from gateway.http.pagination import ListQuery, Page


class EndpointIn(BaseModel):
    model_config = {"extra": "forbid"}

    url: str = Field(
        min_length=8,
        max_length=2048,
        description="http(s) URL that receives POSTs (a public address)",
        json_schema_extra={"format": "uri", "pattern": "^https?://"},
    )
    event_types: list[str] = Field(
        default_factory=lambda: ["*"],
        max_length=50,
        description="event types or prefixes to deliver, e.g. ['message.*', 'call.completed']",
        json_schema_extra={"items": {"type": "string", "pattern": f"^{ONE_TYPE}$"}},
    )
    description: str = Field(default="", max_length=500)

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return validate_patterns(value)


class Endpoint(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    created_at: datetime


class EndpointCreated(Endpoint):
    secret: str = Field(
        description="signing secret (Trunkline-Signature header); shown only in this response"
    )


class EndpointList(Page[Endpoint]):
    pass


class Delivery(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: int
    event_type: str
    status: Literal["pending", "succeeded", "failed"] = Field(
        description="failed = dead-lettered after the retry window or a non-retryable answer"
    )
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_response: str | None = Field(description="the first bytes of the last response body")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryList(Page[Delivery]):
    pass


class DeliveryQuery(ListQuery):
    status: Literal["pending", "succeeded", "failed"] | None = None


def delivery_from_row(row: Any) -> Delivery:
    return Delivery(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_id=row["event_seq"],
        event_type=row["event_type"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_status_code=row["last_status_code"],
        last_response=row["last_response"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
    )


def endpoint_from_row(row: Any) -> Endpoint:
    return Endpoint(
        id=row["id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        description=row["description"],
        status=row["status"],
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
    )
