"""The IVR API's request and response bodies (the flow document itself is ivr.flow.Flow)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.phone import E164
from gateway.http.pagination import Page


class FlowCreated(BaseModel):
    id: uuid.UUID
    name: str
    version: int
    signing_secret: str = Field(
        description="signs this flow's webhook requests (Trunkline-Signature); the same for "
        "every version of the name"
    )


class FlowSummary(BaseModel):
    id: uuid.UUID
    name: str
    version: int = Field(description="the latest version")
    versions: int = Field(description="versions uploaded (1 … version, all kept)")
    created_at: datetime


class FlowList(Page[FlowSummary]):
    pass


class FlowOut(BaseModel):
    id: uuid.UUID
    name: str
    version: int
    document: dict[str, Any]
    signing_secret: str
    created_at: datetime


class FlowQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="a past version; default latest"
    )


class SimulateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [{"flow": "main-menu", "from": "+14155550123", "inputs": ["1"]}]
        },
    )

    flow: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="the flow to run; without it, the flow bound to `to` (an inbound call to "
        "your DID, routed as a real one is)",
    )
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="default: the latest")
    from_: E164 = Field(alias="from", description="the caller")
    to: E164 | None = Field(default=None, description="the number called (a DID)")
    inputs: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="the caller's entries in order: DTMF for a gather ('' = silence), anything "
        "for a record ('' = nothing recorded)",
    )


class SessionOut(BaseModel):
    id: uuid.UUID
    status: Literal["active", "ended"]
    flow: str
    version: int
    transport: str
    from_: str = Field(alias="from")
    to: str | None
    node: str | None = Field(description="the node it is at (or ended at)")
    waiting: str | None = None
    end_reason: str | None = None
    started_at: datetime
    ended_at: datetime | None = None
    steps: int
    variables: dict[str, Any]
    recordings: list[dict[str, Any]]
    transcript: list[dict[str, Any]]

    model_config = ConfigDict(populate_by_name=True)


class SessionSummary(BaseModel):
    """An ended session as listed (GET /v1/ivr/sessions/{id} has its transcript)."""

    id: uuid.UUID
    flow: str
    version: int
    transport: str
    from_: str = Field(alias="from")
    to: str | None
    end_reason: str
    last_node: str | None
    started_at: datetime
    ended_at: datetime
    steps: int

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class SessionList(Page[SessionSummary]):
    pass


class SimulateOut(SessionOut):
    inputs_left: int = Field(description="scripted inputs the flow never asked for")


class DidIvrIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"ivr_flow": "main-menu"}]}
    )

    ivr_flow: str | None = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="the flow inbound calls to this number run (its latest version); null: none",
    )


class DidIvr(BaseModel):
    number: str
    ivr_flow: str | None
