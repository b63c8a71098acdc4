from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DeadLetterQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=50, ge=1, le=500)
    before: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="page: ids lower than this"
    )


class DeadLetter(BaseModel):
    id: int
    queue: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    last_error: str | None
    trace_id: str | None
    created_at: datetime
    dead_at: datetime | None


class DeadLetterList(BaseModel):
    items: list[DeadLetter]


class Replayed(BaseModel):
    id: int
    queue: str
    state: Literal["ready"] = "ready"
