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


class TrunkView(BaseModel):
    pools: list[TrunkPool]
    breakers: list[Breaker]
