"""The campaigns API's request and response bodies (the config is validated here, once)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from campaigns.model import parse_days, parse_duration
from gateway.calls.schemas import OnAnswer
from gateway.core.phone import E164
from gateway.http.pagination import ListQuery, Page

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class CallerId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    local_presence: bool = Field(
        default=False,
        description="pick one of your voice DIDs near each prospect: same area code, else "
        "same state, else same time zone, else the fallback; resting DIDs are not chosen",
    )
    fallback: E164 | None = Field(
        default=None,
        description="the caller id when no DID is near (every dial without local presence)",
    )


class Say(BaseModel):
    model_config = ConfigDict(extra="forbid")
    say: str = Field(min_length=1, max_length=2000)


class Pacing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["progressive", "predictive"] = "progressive"
    max_concurrent: int = Field(default=10, ge=1, le=1000, description="live dials at most")
    cps: float = Field(default=1.0, gt=0, le=100, description="new dials per second at most")
    max_abandon_rate: float = Field(
        default=0.03,
        ge=0,
        le=0.03,
        description="16 CFR 310.4(b)(4): abandoned ÷ answered by a person over a rolling 30 "
        "days, never above 3 %; the predictive pacer lowers its dial ratio (down to 1:1) "
        "before the rate would cross it",
    )
    max_agent_sessions: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="predictive: the agents (AI agent sessions) calls are connected to; "
        "default max_concurrent",
    )
    max_ratio: float = Field(
        default=3.0, ge=1, le=5, description="predictive: dials per free agent at most"
    )


class RetryAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: str = Field(description="e.g. 500ms, 30s, 10m, 2h, 1d")

    @field_validator("after")
    @classmethod
    def _duration(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("after must be positive")
        return v


class Retry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    busy: RetryAfter | None = None
    no_answer: RetryAfter | None = None
    machine: RetryAfter | None = None
    max_attempts: int = Field(default=3, ge=1, le=20)


class Window(BaseModel):
    """When the campaign may dial, in each prospect's own time zone (calling hours still apply)."""

    model_config = ConfigDict(extra="forbid")

    days: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5],
        description="'mon-fri', 'mon,wed' or a list of day names; stored as ISO weekdays",
    )
    start: str = Field(default="09:00", description="HH:MM local time")
    end: str = Field(default="20:00", description="HH:MM local time (exclusive); 24:00: midnight")
    timezone: str = Field(
        default="America/New_York", description="for numbers whose time zone is unknown"
    )

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, v: Any) -> Any:
        if isinstance(v, str) or (isinstance(v, list) and all(isinstance(d, str) for d in v)):
            return parse_days(v)
        return v

    @field_validator("start")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("give a time as HH:MM")
        return v

    @field_validator("end")
    @classmethod
    def _hhmm_end(cls, v: str) -> str:
        if not _HHMM.match(v) and v != "24:00":
            raise ValueError("give a time as HH:MM (24:00 for the end of the day)")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone") from None
        return v

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if any(d < 1 or d > 7 for d in self.days):
            raise ValueError("days are ISO weekdays 1..7")
        if self.end <= self.start:
            raise ValueError("end must be after start (same day)")
        return self


class CampaignIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "spring-renewals", "channel": "voice", "purpose": "marketing"}]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    channel: Literal["voice", "sms"] = "voice"
    purpose: Literal["marketing", "transactional"] = "marketing"
    caller_id: CallerId = Field(default_factory=CallerId)
    on_answer: OnAnswer | None = None
    amd: bool = False
    on_machine: Literal["hangup", "retry", "voicemail_drop"] = "hangup"
    voicemail: Say | None = None
    abandon_message: Say | None = None
    pacing: Pacing = Field(default_factory=Pacing)
    retry: Retry = Field(default_factory=Retry)
    window: Window = Field(default_factory=Window)
    ring_timeout: int = Field(
        default=30, ge=15, le=120, description="seconds; at least 15 for campaigns (TSR)"
    )
    max_duration: int | None = Field(default=None, ge=1)
    body: str | None = Field(
        default=None, min_length=1, max_length=1600, description="sms: {{var}} placeholders"
    )
    template: str | None = Field(default=None, description="sms: a stored template's name")

    @model_validator(mode="after")
    def _coherent(self) -> CampaignIn:
        if self.channel == "sms":
            if (self.body is None) == (self.template is None):
                raise ValueError("an sms campaign needs exactly one of body or template")
        elif self.body is not None or self.template is not None:
            raise ValueError("body and template are for sms campaigns")
        if self.on_machine == "retry" and self.retry.machine is None:
            raise ValueError("on_machine retry needs retry.machine.after")
        if self.on_machine == "voicemail_drop" and (not self.amd or self.voicemail is None):
            raise ValueError("on_machine voicemail_drop needs amd true and voicemail.say")
        if self.pacing.mode == "predictive":
            if self.abandon_message is None:
                raise ValueError(
                    "a predictive campaign needs an abandon_message (16 CFR 310.4(b)(4)): it "
                    "is played within 2 s to an answered call no agent takes"
                )
            if self.on_answer is None:
                raise ValueError("a predictive campaign needs on_answer: whom calls connect to")
        return self


class StatusCounts(BaseModel):
    model_config = ConfigDict(extra="allow")
    total: int


class Campaign(BaseModel):
    id: uuid.UUID
    name: str
    channel: str
    purpose: str
    status: Literal["draft", "running", "paused", "completed", "canceled"]
    config: dict[str, Any]
    prospects: dict[str, int] = Field(
        description="prospects by status, and `total` (a query over the prospects table)"
    )
    stats: dict[str, Any] | None = Field(
        default=None,
        description="GET of one campaign: dials (attempts that reached a number), outcomes, "
        "answer_rate and machine_rate over dials, abandoned and abandon_rate (abandoned ÷ "
        "answered by a person; abandon_rate_30d over the rolling 30 days, 16 CFR "
        "310.4(b)(4)), dial_ratio (predictive pacing; 1.0 otherwise), dials_per_s over the "
        "last minute and the ETA of the prospects still open at that rate",
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class CampaignList(Page[Campaign]):
    pass


class CampaignQuery(ListQuery):
    status: Literal["draft", "running", "paused", "completed", "canceled"] | None = None


class ProspectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: str = Field(max_length=64, description="any usual form; stored as E.164")
    variables: dict[str, str | int | float] = Field(default_factory=dict, max_length=50)
    state: str | None = Field(default=None, max_length=32, description="two letters, e.g. CA")
    zip: str | None = Field(default=None, max_length=10)


class ProspectsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prospects": [
                        {"number": "+14155550123", "variables": {"name": "Ada"}, "state": "CA"}
                    ]
                }
            ]
        },
    )
    prospects: list[ProspectIn] = Field(min_length=1, max_length=10000)


class Reject(BaseModel):
    index: int = Field(description="position in the request (0-based), or the CSV line number")
    value: str
    reason: str


class ProspectsAdded(BaseModel):
    received: int
    added: int = Field(description="new prospects, pending")
    duplicates: int = Field(description="repeated in the list or already in the campaign")
    suppressed: int = Field(description="stored as suppressed: DNC-listed or opted out")
    rejected: int
    rejects: list[Reject] = Field(description="the first 100 rejects")


class Prospect(BaseModel):
    id: int
    number: str
    status: str
    reason: str | None
    attempts: int
    variables: dict[str, Any]
    state: str | None
    next_attempt_at: datetime | None
    updated_at: datetime


class ProspectList(Page[Prospect]):
    pass


class ProspectQuery(ListQuery):
    limit: int = Field(default=100, ge=1, le=1000, description="rows per page")
    status: str | None = Field(default=None, max_length=32)
