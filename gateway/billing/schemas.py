from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class StripeExport(BaseModel):
    """What of the tenant's usage has reached Stripe (GET /v1/usage)."""

    stripe_customer_id: str | None = Field(
        description="the Stripe customer billed; none: this tenant's usage is not exported"
    )
    meters: dict[str, str] = Field(description="usage unit -> Stripe meter event name")
    exported_through: datetime | None = Field(
        description="every exportable usage row recorded at or before this instant has been "
        "acknowledged by Stripe (null: none yet)"
    )
    last_export_at: datetime | None = Field(
        description="when Stripe last acknowledged a batch carrying this tenant's usage"
    )
