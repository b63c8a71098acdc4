from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway.http.pagination import ListQuery, Page


class DeadLetterQuery(ListQuery):
    queue: str | None = Field(default=None, max_length=64, description="only this queue's jobs")


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


class DeadLetterList(Page[DeadLetter]):
    pass


class Replayed(BaseModel):
    id: int
    queue: str
    state: Literal["ready"] = "ready"
