"""The workflows API's bodies: a workflow's steps as uploaded, runs and their timelines.

A step has exactly one kind key — `send`, `wait`, `branch` or `webhook` — and an optional
`id` that branches name. What pydantic cannot check alone (a send's fields, which hold
`{{variables}}` until a run renders them; branch targets; a wait's event needing an earlier
send) is checked by `gateway/workflows/definition.py`, whose 422 names the step.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from gateway.http.pagination import ListQuery, Page

StepId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
# "end" (the run completes), "next", a step's id, or a step's index; forward only.
Target = str | int
Scalar = str | int | float | bool

# What a wait can end on. message.inbound (= message.received): a reply from the number the
# last send went to. message.<status> / call.<status>: the last sent message or placed call
# reached that status — or any final one, whose name is then the outcome.
WAIT_EVENTS: tuple[str, ...] = (
    "message.inbound",
    "message.received",
    "message.sent",
    "message.delivered",
    "call.answered",
    "call.completed",
)
WaitEvent = Literal[
    "message.inbound",
    "message.received",
    "message.sent",
    "message.delivered",
    "call.answered",
    "call.completed",
]
# Events a workflow's trigger may start runs on (a call's end, an inbound message).
TRIGGER_EVENTS: tuple[str, ...] = (
    "call.completed",
    "call.busy",
    "call.no_answer",
    "call.failed",
    "message.received",
)
TriggerEvent = Literal[
    "call.completed", "call.busy", "call.no_answer", "call.failed", "message.received"
]


def _duration(text: str) -> str:
    from campaigns.model import parse_duration

    if parse_duration(text) < 0:
        raise ValueError("a duration is not negative")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SendStep(_Strict):
    """A message (`channel` sms, whatsapp, …: the fields of POST /v1/messages) or a call
    (`channel` "call": the fields of POST /v1/calls), through the one pipeline."""

    id: StepId | None = None
    send: dict[str, Any] = Field(
        description="POST /v1/messages fields, or POST /v1/calls fields with channel 'call'; "
        "strings may hold {{variables}}"
    )


class WaitSpec(_Strict):
    duration: str | None = Field(
        default=None,
        description="how long to wait (500ms, 30s, 10m, 2h, 1d); with `until`, the timeout",
    )
    timeout: str | None = Field(default=None, description="the same as duration, with `until`")
    until: WaitEvent | None = Field(
        default=None, description="end the wait early when this happens"
    )

    @field_validator("duration", "timeout")
    @classmethod
    def _valid(cls, v: str | None) -> str | None:
        return None if v is None else _duration(v)


class WaitStep(_Strict):
    id: StepId | None = None
    wait: WaitSpec


class VariableCondition(_Strict):
    variable: str = Field(min_length=1, max_length=64)
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    exists: bool | None = None


class BranchSpec(_Strict):
    if_: str | VariableCondition = Field(
        alias="if",
        description="an outcome of the latest send or wait (replied, timed_out, refused, "
        "accepted, delivered, completed, busy, no_answer, …) or a variable condition",
    )
    then: Target = Field(description='"end", "next", a step id or index (forward only)')
    else_: Target = Field(default="next", alias="else")


class BranchStep(_Strict):
    id: StepId | None = None
    branch: BranchSpec


class WebhookSpec(_Strict):
    url: str = Field(pattern=r"^https?://", max_length=2048)
    body: dict[str, Any] | None = Field(
        default=None, description="extra JSON sent under `data` (strings may hold {{variables}})"
    )


class WebhookStep(_Strict):
    id: StepId | None = None
    webhook: WebhookSpec


KINDS = ("send", "wait", "branch", "webhook")


def kind_of(step: Any) -> str | None:
    keys = step.keys() if isinstance(step, dict) else type(step).model_fields.keys()
    found = [k for k in KINDS if k in keys]
    return found[0] if len(found) == 1 else None


Step = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[WebhookStep, Tag("webhook")],
    Discriminator(
        kind_of,
        custom_error_type="workflow_step_kind",
        custom_error_message="a step has exactly one of: send, wait, branch, webhook",
    ),
]


class TriggerSpec(_Strict):
    event: TriggerEvent = Field(description="start a run on every such event of your tenant")
    agent_calls_only: bool = Field(
        default=False, description="call events: only calls that were bridged to an AI agent"
    )


class WorkflowIn(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "after-call",
                    "steps": [
                        {
                            "send": {
                                "channel": "sms",
                                "to": "{{to}}",
                                "body": "Thanks for your call, {{name}}.",
                                "purpose": "transactional",
                            }
                        },
                        {"wait": {"until": "message.inbound", "timeout": "1d"}},
                        {"branch": {"if": "replied", "then": "end"}},
                        {
                            "send": {
                                "channel": "sms",
                                "to": "{{to}}",
                                "body": "Still there, {{name}}?",
                                "purpose": "transactional",
                            }
                        },
                    ],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=128)
    steps: list[Step] = Field(min_length=1, max_length=100)
    trigger: TriggerSpec | None = None


class Workflow(BaseModel):
    id: uuid.UUID
    name: str
    steps: list[dict[str, Any]]
    trigger: dict[str, Any] | None
    version: int = Field(
        description="the current version (also the ETag): what new runs and triggers use"
    )
    created_at: datetime
    updated_at: datetime = Field(description="when the current version was made")
    archived_at: datetime | None = Field(
        description="set by DELETE: no new runs or trigger matches; runs in flight finish"
    )


class WorkflowVersion(BaseModel):
    """One immutable definition a workflow has had; a run records the version it runs."""

    version: int
    name: str
    steps: list[dict[str, Any]]
    trigger: dict[str, Any] | None
    created_at: datetime


class WorkflowCreated(Workflow):
    webhook_secret: str = Field(
        description="signs the POSTs of webhook steps (Trunkline-Signature); shown once"
    )


class WorkflowQuery(ListQuery):
    include_archived: bool = Field(
        default=False, description="also list archived (deleted) workflows"
    )


class VersionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="a past version; default the current"
    )


class RunIn(_Strict):
    variables: dict[str, Scalar] = Field(default_factory=dict, max_length=100)


class StepEntry(BaseModel):
    step: int
    id: str | None
    kind: str
    status: str
    outcome: str | None
    detail: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None


class Waiting(BaseModel):
    until: str | None
    wake_at: datetime | None


class Run(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int = Field(description="the workflow version this run takes its steps from")
    status: Literal["running", "waiting", "completed", "canceled", "failed"]
    step: int
    variables: dict[str, Any]
    trace_id: str
    waiting: Waiting | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


class RunDetail(Run):
    timeline: list[StepEntry]


class WorkflowList(Page[Workflow]):
    pass


class WorkflowVersionList(Page[WorkflowVersion]):
    pass


class RunList(Page[Run]):
    pass


class RunQuery(ListQuery):
    status: Literal["running", "waiting", "completed", "canceled", "failed"] | None = None
