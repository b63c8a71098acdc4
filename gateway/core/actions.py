"""What a consumer asks the pipeline to do, before any check has run.

An `OutboundAction` is inert: only the guardrail chain can turn it into the
`guardrails.cleared.ClearedAction` that a provider adapter accepts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Channel = Literal["sms", "whatsapp", "voice", "email"]
Purpose = Literal["marketing", "transactional"]
Stage = Literal["accept", "dispatch"]


@dataclass(frozen=True)
class EmailContent:
    """An email's parts, as rendered at accept (`to` and `from_` stay on the action).

    `unsubscribe_url` is our signed one-click link for this message (List-Unsubscribe on
    marketing email, and what `{{ unsubscribe_url }}` in a part was filled in with)."""

    subject: str
    text: str | None
    html: str | None
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class OutboundAction:
    tenant_id: uuid.UUID
    subject: str  # the message or call id
    channel: Channel
    to: str  # E.164
    from_: str | None
    purpose: Purpose
    trace_id: str
    body: str | None = None
    first_marketing_message: bool = False
    address_state: str | None = None
    key_id: str | None = None  # the API key that asked (per-key rate limits)
    extra: dict[str, Any] = field(default_factory=dict)
    email: EmailContent | None = None  # channel email: subject and parts (body = the text part)
