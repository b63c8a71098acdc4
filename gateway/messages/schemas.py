"""The messaging API's request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from gateway.billing.schemas import StripeExport
from gateway.core.instants import Instant
from gateway.core.phone import E164
from gateway.core.usstates import USState
from gateway.http.pagination import ListQuery, Page
from gateway.messages.states import Status


class SendMessage(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "channel": "sms",
                    "to": "+14155550100",
                    "body": "Your code is 1234",
                    "purpose": "transactional",
                }
            ]
        },
    )

    channel: Literal["sms", "whatsapp"] = "sms"
    to: E164
    from_: E164 | None = Field(
        default=None, alias="from", description="sender; chosen by the router when omitted"
    )
    body: str | None = Field(default=None, min_length=1, max_length=1600)
    template: str | None = Field(
        default=None, description="name of a stored template, instead of body"
    )
    variables: dict[str, str | int | float] = Field(default_factory=dict)
    purpose: Literal["marketing", "transactional"] = "marketing"
    when_closed: Literal["deny", "defer"] = Field(
        default="defer",
        description="outside calling hours: refuse now, or send at the next opening",
    )
    state: USState | None = Field(
        default=None,
        description="the recipient's US state (two letters, e.g. from their address): its "
        "calling-hour rules and frequency caps apply too, besides the area code's state's",
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=20)

    @model_validator(mode="after")
    def _body_or_template(self) -> SendMessage:
        if (self.body is None) == (self.template is None):
            raise ValueError("give exactly one of body or template")
        return self


class Attempt(BaseModel):
    n: int
    provider: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    latency_ms: float | None
    provider_message_id: str | None


class TimelineEntry(BaseModel):
    id: int
    seq: int | None
    type: str
    at: datetime
    data: dict[str, Any]


class Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: uuid.UUID
    trace_id: str
    direction: Literal["outbound", "inbound"]
    channel: str
    to: str
    from_: str | None = Field(alias="from")
    body: str
    template: str | None
    purpose: str
    state: str | None = None
    status: str
    provider: str | None
    provider_message_id: str | None
    encoding: str
    segments: int
    error_code: str | None
    error_detail: str | None
    send_at: datetime | None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime


class MessageDetail(Message):
    attempts: list[Attempt]
    timeline: list[TimelineEntry]


class Trace(BaseModel):
    trace_id: str
    messages: list[Message]
    timeline: list[TimelineEntry]


class TemplateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "otp", "body": "Hi {{ name }}, your code is {{ code }}"}]
        },
    )
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    body: str = Field(min_length=1, max_length=1600)


class Template(BaseModel):
    name: str
    body: str
    variables: list[str]
    created_at: datetime
    updated_at: datetime


class MessageList(Page[Message]):
    pass


class MessageQuery(ListQuery):
    status: Status | None = Field(default=None, description="only messages in this status")
    to: E164 | None = Field(default=None, description="only messages to this number")
    created_after: AwareDatetime | None = Field(
        default=None, description="only messages created after this instant (exclusive)"
    )
    created_before: AwareDatetime | None = Field(
        default=None, description="only messages created before this instant (exclusive)"
    )


class TemplateList(Page[Template]):
    pass


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Instant = Field(alias="from")
    to: Instant


class UsageLine(BaseModel):
    channel: str
    unit: str
    quantity: int
    records: int
    exported: int = Field(
        description="of `quantity`, what Stripe has acknowledged as meter events (0 when the "
        "export is off)"
    )


class Usage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: datetime = Field(alias="from")
    to: datetime
    lines: list[UsageLine]
    stripe: StripeExport | None = Field(
        default=None, description="the export to Stripe Billing; null when it is not configured"
    )
