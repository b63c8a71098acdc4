"""The calls API's request and response bodies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from gateway.calls.states import CallStatus
from gateway.core.instants import Instant
from gateway.core.phone import E164
from gateway.core.usstates import USState
from gateway.http.pagination import ListQuery, Page
from gateway.messages.schemas import TimelineEntry

SIP_URI = r"^sips?:[^\s<>\"]{1,250}$"


class AgentSpec(BaseModel):
    """An AI agent session to bridge the answered call to (Ultravox-style)."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(
        default=None, max_length=128, description="a stored agent at the provider"
    )
    system_prompt: str | None = Field(default=None, max_length=20000)
    voice: str | None = Field(default=None, max_length=128)
    greeting: str | None = Field(
        default=None, max_length=2000, description="what the agent says first"
    )
    provider: str | None = Field(
        default=None, max_length=64, description="agent provider; default: agents.provider"
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=20)


class OnAnswer(BaseModel):
    """What happens once the called party answers: bridge to a SIP URI or to a new agent."""

    model_config = ConfigDict(extra="forbid")

    bridge_to: str | None = Field(
        default=None, pattern=SIP_URI, description="a SIP URI, e.g. sip:agent@ultravox"
    )
    agent: AgentSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OnAnswer:
        if (self.bridge_to is None) == (self.agent is None):
            raise ValueError("give exactly one of bridge_to or agent")
        return self


class PlaceCall(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [{"to": "+14155550100", "pool": "api", "purpose": "transactional"}]
        },
    )

    to: E164
    from_: E164 | None = Field(
        default=None, alias="from", description="caller id; chosen by the router when omitted"
    )
    pool: str = Field(
        default="api",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="trunk channel pool the call takes a channel from",
    )
    on_answer: OnAnswer | None = None
    amd: bool = Field(
        default=False, description="run answering-machine detection; on_answer waits for it"
    )
    on_machine: Literal["continue", "hangup"] = Field(
        default="continue", description="with amd: what to do when a machine answers"
    )
    ring_timeout: int = Field(default=30, ge=5, le=120, description="seconds to let it ring")
    max_duration: int | None = Field(
        default=None,
        ge=1,
        description="seconds the answered call may last before the gateway hangs it up; "
        "never more than calls.max_duration (the default)",
    )
    purpose: Literal["marketing", "transactional"] = "marketing"
    when_closed: Literal["deny", "defer"] = Field(
        default="defer",
        description="outside calling hours: refuse now, or call at the next opening",
    )
    state: USState | None = Field(
        default=None,
        description="the recipient's US state (two letters, e.g. from their address): its "
        "calling-hour rules and frequency caps apply too, besides the area code's state's",
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=20)


class BridgeCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: uuid.UUID = Field(description="the other answered call to join this one with")


class Durations(BaseModel):
    ring_seconds: float | None = Field(description="from dialing to answer (or to the end)")
    talk_seconds: float | None = Field(description="from answer to hangup (so far, if live)")
    total_seconds: float | None = Field(description="from dialing to hangup (so far, if live)")


class Call(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: uuid.UUID
    trace_id: str
    direction: Literal["outbound", "inbound"]
    to: str
    from_: str | None = Field(alias="from")
    purpose: str
    state: str | None = None
    status: str
    pool: str
    provider: str | None
    provider_call_id: str | None = Field(
        description="Asterisk ChannelId (= Uniqueid, Linkedid) or Twilio CallSid"
    )
    channel: str | None = Field(description="Asterisk channel name of the called party's leg")
    ring_timeout: int
    max_duration: int | None = Field(
        description="seconds after the answer when the gateway hangs the call up"
    )
    on_answer: dict[str, Any] | None
    amd: bool
    on_machine: str
    amd_result: str | None = Field(
        description="human | machine | notsure (the detector's verdict) | unknown (no verdict "
        "within calls.amd_timeout)"
    )
    amd_detail: str | None
    agent: dict[str, Any] | None = Field(description="the AI-agent leg: session, SIP URI, state")
    bridged_with: uuid.UUID | None
    hangup_cause: int | None = Field(description="Q.850 cause")
    hangup_cause_text: str | None
    sip_code: int | None = Field(
        description="the SIP code of the call's end, when one is known (see sip_code_source)"
    )
    sip_code_source: str | None = Field(
        default=None,
        description="sip: a SIP response the far end or carrier sent | mapped: the provider's "
        "mapping of the Q.850 cause (no such SIP response arrived) | null: no code",
    )
    error_code: str | None
    error_detail: str | None
    send_at: datetime | None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    dialing_at: datetime | None
    ringing_at: datetime | None
    answered_at: datetime | None
    bridged_at: datetime | None
    ended_at: datetime | None
    alive_at: datetime | None = Field(
        default=None,
        description="the last moment the gateway knew the call was up; an end nobody observed "
        "(an AMI outage) is dated here",
    )
    durations: Durations


class CallAttempt(BaseModel):
    n: int
    provider: str
    attempt_key: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    latency_ms: float | None
    provider_call_id: str | None


class CallDetail(Call):
    attempts: list[CallAttempt]
    timeline: list[TimelineEntry]


class CallList(Page[Call]):
    pass


class CallQuery(ListQuery):
    status: CallStatus | None = Field(default=None, description="only calls in this status")
    to: E164 | None = Field(default=None, description="only calls to this number")
    created_after: AwareDatetime | None = Field(
        default=None, description="only calls created after this instant (exclusive)"
    )
    created_before: AwareDatetime | None = Field(
        default=None, description="only calls created before this instant (exclusive)"
    )


class PoolState(BaseModel):
    """A pool as one tenant sees it: its size, and that tenant's own calls in it. The pools
    are shared by every tenant on the trunk, so other tenants' channels are never shown."""

    name: str
    trunk: str
    size: int = Field(description="channels in the pool (shared by every tenant on the trunk)")
    in_use: int = Field(description="channels your calls hold now")
    waiting: int = Field(description="your calls queued for a channel of this pool")


class Pools(BaseModel):
    pools: list[PoolState]


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class VoiceUsageQuery(BaseModel):
    """The period, as for GET /v1/usage: [from, to); a time without an offset is UTC."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Instant = Field(alias="from")
    to: Instant

    @model_validator(mode="after")
    def _ordered(self) -> VoiceUsageQuery:
        self.from_, self.to = _as_utc(self.from_), _as_utc(self.to)
        if self.to <= self.from_:
            raise ValueError("to must be after from")
        return self


class VoiceUsageLine(BaseModel):
    provider: str = Field(description="asterisk:<name>, twilio or sandbox")
    calls: int = Field(description="answered calls that ended in the period")
    billable_seconds: int = Field(description="their talk time, each call rounded up to a second")


class VoiceUsage(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    from_: datetime = Field(alias="from")
    to: datetime
    calls: int
    billable_seconds: int
    providers: list[VoiceUsageLine]
