"""GET /v1/dids: the tenant's numbers with their health (campaigns/didhealth.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, Field

from campaigns.didhealth import health_of
from gateway.http.pagination import ListQuery, Page, decode_cursor, page_of


class DidHealth(BaseModel):
    calls: int = Field(description="calls from this number in the window")
    answered: int
    short_calls: int = Field(description="answered with less than 6 s of talk")
    answer_rate: float | None
    short_call_rate: float | None = Field(description="short calls over answered calls")
    window_seconds: float
    status: str = Field(description="ok, or rested: not chosen by local presence meanwhile")
    rested_until: str | None
    rest_reason: str | None = Field(description="low_answer_rate, or flagged:<flags>")
    reputation: dict[str, Any] | None = Field(
        description="the lookup provider's flags, score and when it was asked (null: not yet)"
    )


class Did(BaseModel):
    number: str
    provider: str
    capabilities: list[str]
    ivr_flow: str | None
    created_at: datetime
    health: DidHealth


class DidList(Page[Did]):
    pass


class DidQuery(ListQuery):
    pass


async def list_dids(db: asyncpg.Pool, tenant_id: uuid.UUID, q: DidQuery, window: float) -> DidList:
    (after,) = decode_cursor("dids", q.cursor, (str,))
    rows = await db.fetch(
        """
        SELECT number, provider, capabilities, ivr_flow, created_at FROM dids
         WHERE tenant_id = $1 AND ($2::text IS NULL OR number > $2)
         ORDER BY number LIMIT $3
        """,
        tenant_id,
        after,
        q.limit + 1,
    )
    page, cursor = page_of("dids", rows, q.limit, lambda r: (r["number"],))
    health: dict[str, dict[str, Any]] = await health_of(
        db, tenant_id, [r["number"] for r in page], window
    )
    return DidList(
        data=[Did(**dict(r), health=DidHealth(**health[r["number"]])) for r in page],
        next_cursor=cursor,
    )
