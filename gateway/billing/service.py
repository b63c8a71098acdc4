"""What the API shows of the export (the export itself: exporter.py)."""

from __future__ import annotations

import uuid

import asyncpg

from gateway.billing import repo
from gateway.billing.schemas import StripeExport
from gateway.settings import StripeBillingSettings


async def tenant_export(
    db: asyncpg.Pool, tenant_id: uuid.UUID, cfg: StripeBillingSettings
) -> StripeExport | None:
    """None when this gateway exports nothing (no Stripe key configured)."""
    if cfg.api_key is None:
        return None
    row = await repo.tenant_export(db, tenant_id, list(cfg.meters), cfg.start_at)
    return StripeExport(
        stripe_customer_id=row.get("stripe_customer_id"),
        meters=dict(cfg.meters),
        exported_through=row.get("exported_through"),
        last_export_at=row.get("last_export_at"),
    )
