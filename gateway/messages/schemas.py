"""The messaging API's request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.billing.schemas import StripeExport
from gateway.core.email import normalize_address, normalize_mailbox
from gateway.core.instants import Instant
from gateway.core.phone import PHONE_PATTERN, normalize_e164
from gateway.core.usstates import USState
from gateway.http.pagination import ListQuery, Page
from gateway.messages.states import Status

_EMAIL_SCHEMA = {"type": "string", "format": "email", "maxLength": 254}
Recipient = Annotated[
    str,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": PHONE_PATTERN, "maxLength": 49},
                _EMAIL_SCHEMA,
            ],
            "description": "sms/whatsapp: a phone number, E.164 (+14155550100) or national (US "
            "default), stored and answered in E.164; email: an address (validated, its domain "
            "lower-cased)",
            "examples": ["+14155550100", "ana@example.com"],
        }
    ),
]
Sender = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 320,
            "description": "sms/whatsapp: one of your numbers; email: an address, optionally "
            "with a display name (`Acme <billing@acme.com>`)",
        }
    ),
]
EMAIL_PART_MAX = 500_000  # characters of a text or HTML part


def normalize_recipient(channel: str | None, raw: str) -> str:
    """A recipient as its channel writes it: an address for email, E.164 otherwise."""
    return normalize_address(raw) if channel == "email" else normalize_e164(raw)


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
                },
                {
                    "channel": "email",
                    "to": "ana@example.com",
                    "subject": "Your receipt",
                    "text": "Thanks for your order.",
                    "html": "<p>Thanks for your order.</p>",
                    "purpose": "transactional",
                },
            ]
        },
    )

    channel: Literal["sms", "whatsapp", "email"] = "sms"
    to: Recipient
    from_: Sender | None = Field(
        default=None, alias="from", description="sender; chosen by the router when omitted"
    )
    body: str | None = Field(
        default=None, min_length=1, max_length=1600, description="sms/whatsapp text"
    )
    subject: str | None = Field(
        default=None, min_length=1, max_length=998, description="email: the Subject line"
    )
    text: str | None = Field(
        default=None, min_length=1, max_length=EMAIL_PART_MAX, description="email: the text part"
    )
    html: str | None = Field(
        default=None, min_length=1, max_length=EMAIL_PART_MAX, description="email: the HTML part"
    )
    template: str | None = Field(
        default=None,
        description="name of a stored template, instead of body (or subject/text/html)",
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

    @field_validator("to")
    @classmethod
    def _recipient(cls, value: str, info: ValidationInfo) -> str:
        return normalize_recipient(info.data.get("channel"), value)

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("channel") == "email":
            return normalize_mailbox(value)
        return normalize_e164(value)

    @model_validator(mode="after")
    def _body_or_template(self) -> SendMessage:
        if self.channel == "email":
            if self.body is not None:
                raise ValueError("an email has subject, text and html, not body")
            parts = (self.subject, self.text, self.html)
            if self.template is not None:
                if any(p is not None for p in parts):
                    raise ValueError("give a template or subject/text/html, not both")
            elif self.subject is None or (self.text is None and self.html is None):
                raise ValueError("an email needs a subject and a text or html part (or a template)")
            return self
        if any(p is not None for p in (self.subject, self.text, self.html)):
            raise ValueError("subject, text and html are for channel email")
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
    subject: str | None = None
    html: str | None = None
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
    """An SMS/WhatsApp template (`body`) or an email template (`subject` with `text` and/or
    `html`; `body` is taken as the text part too)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "otp", "body": "Hi {{ name }}, your code is {{ code }}"},
                {
                    "name": "receipt",
                    "subject": "Receipt {{ order }}",
                    "text": "Hi {{ name }}, order {{ order }} is paid.",
                    "html": "<p>Hi {{ name }}, order <b>{{ order }}</b> is paid.</p>",
                },
            ]
        },
    )
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    body: str | None = Field(default=None, min_length=1, max_length=1600)
    subject: str | None = Field(default=None, min_length=1, max_length=998)
    text: str | None = Field(default=None, min_length=1, max_length=EMAIL_PART_MAX)
    html: str | None = Field(default=None, min_length=1, max_length=EMAIL_PART_MAX)

    @model_validator(mode="after")
    def _parts(self) -> TemplateIn:
        if self.body is not None and self.text is not None:
            raise ValueError("give body or text, not both (they are the same part)")
        if self.subject is None:
            if self.text is not None or self.html is not None:
                raise ValueError("an email template needs a subject")
            if self.body is None:
                raise ValueError("give a body (or an email's subject with text and/or html)")
        elif self.body is None and self.text is None and self.html is None:
            raise ValueError("an email template needs a text or html part")
        return self


class Template(BaseModel):
    name: str
    body: str
    subject: str | None = None
    html: str | None = None
    variables: list[str]
    created_at: datetime
    updated_at: datetime


class MessageList(Page[Message]):
    pass


class MessageQuery(ListQuery):
    status: Status | None = Field(default=None, description="only messages in this status")
    to: Recipient | None = Field(
        default=None, description="only messages to this number (or email address)"
    )
    created_after: AwareDatetime | None = Field(
        default=None, description="only messages created after this instant (exclusive)"
    )
    created_before: AwareDatetime | None = Field(
        default=None, description="only messages created before this instant (exclusive)"
    )

    @field_validator("to")
    @classmethod
    def _recipient(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalize_recipient("email" if "@" in value else None, value)


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
