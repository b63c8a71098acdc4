from __future__ import annotations

import uuid

from pydantic import BaseModel


class WhoAmI(BaseModel):
    tenant_id: uuid.UUID
    tenant: str
    key_id: str
    scopes: list[str]
