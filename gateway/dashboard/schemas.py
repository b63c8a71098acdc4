from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class DashboardSession(BaseModel):
    tenant_id: uuid.UUID
    tenant: str
    key_id: str
    scopes: list[str]
    expires_at: datetime = Field(description="renew before then with GET /v1/dashboard/session")
    ttl_seconds: int


class TrunkPool(BaseModel):
    name: str
    trunk: str
    size: int
    in_use: int = Field(description="channels held by every tenant's calls")
    waiting: int = Field(description="calls of every tenant queued for a channel")


class Breaker(BaseModel):
    provider: str
    state: str = Field(description="closed, open or half_open")
    error_rate: float | None
    calls: int = Field(description="calls in the breaker's live window")
    opened_at: datetime | None
    retry_after_s: float


class Queue(BaseModel):
    queue: str
    ready: int = Field(
        description="jobs waiting: due now or scheduled later (a backoff, a deferral)"
    )
    due: int = Field(description="ready and due now: what workers should be taking")
    running: int
    dead: int = Field(description="dead letters (trunkline dlq, GET /v1/dead-letters)")
    oldest_due_s: float = Field(description="how long the oldest due job has waited")


class Queues(BaseModel):
    queues: list[Queue] = Field(description="your jobs in the durable work queues")


class TrunkView(BaseModel):
    pools: list[TrunkPool]
    breakers: list[Breaker]
    queues: list[Queue] = Field(description="the durable work queues, every tenant's jobs")
