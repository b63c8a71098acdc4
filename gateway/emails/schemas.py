"""The email channel's request and response bodies (beyond POST /v1/messages)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from gateway.core.email import normalize_address
from gateway.http.pagination import ListQuery, Page

Address = Annotated[
    str,
    AfterValidator(normalize_address),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254}),
]
Reason = Literal["bounce", "complaint", "unsubscribe", "manual"]


class Suppression(BaseModel):
    address: str
    reason: Reason
    message_id: UUID | None
    detail: str | None
    origin: str
    created_at: datetime


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: Address
    reason: Literal["manual", "unsubscribe"] = Field(
        default="manual",
        description="manual: no email at all to this address; unsubscribe: no marketing email",
    )
    detail: str | None = Field(default=None, max_length=500)


class SuppressionQuery(ListQuery):
    reason: Reason | None = Field(default=None, description="only entries with this reason")
    address: Address | None = Field(default=None, description="only this address")


class SuppressionDeleteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason | None = Field(default=None, description="remove only this reason's entry")


class SuppressionList(Page[Suppression]):
    pass


class Removed(BaseModel):
    removed: int


class EmailEvent(BaseModel):
    """One normalised event from an email provider (or your own mail system)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["delivered", "bounce", "complaint", "delay"]
    message_id: str = Field(
        min_length=1,
        max_length=998,
        description="the email's Message-ID as we sent it (<id@domain>, brackets optional), "
        "or its Trunkline id (the X-Trunkline-Message-Id header)",
    )
    recipient: str | None = Field(default=None, max_length=320)
    bounce_type: Literal["permanent", "transient"] = Field(
        default="permanent",
        description="a transient bounce (mailbox full, try later) is a delay, not a bounce",
    )
    status: str | None = Field(default=None, max_length=32, description="e.g. 5.1.1")
    diagnostic: str | None = Field(default=None, max_length=1000)
    provider: str | None = Field(default=None, max_length=64, description="who reported it")


class EmailEvents(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "type": "bounce",
                            "message_id": "<0b7c…@acme.example>",
                            "recipient": "ana@example.com",
                            "status": "5.1.1",
                            "diagnostic": "550 5.1.1 User unknown",
                        }
                    ]
                }
            ]
        },
    )
    events: list[EmailEvent] = Field(min_length=1, max_length=500)


class Applied(BaseModel):
    applied: int = Field(description="reports that named one of our emails")
    ignored: int = Field(description="reports that did not (another sender's mail, unknown id)")
