from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from gateway.http.pagination import Page


class WhoAmI(BaseModel):
    tenant_id: uuid.UUID
    tenant: str
    key_id: str
    scopes: list[str]


class ApiKey(BaseModel):
    """A key as its tenant may see it: never the secret, nor its hash."""

    key_id: str = Field(description="the lookup handle: tk_<key_id>_<secret>")
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyList(Page[ApiKey]):
    pass
