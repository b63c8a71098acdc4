"""The export's background task, run by every worker process (one leads; see exporter.py)."""

from __future__ import annotations

from gateway.billing.exporter import UsageExporter
from gateway.resources import Resources
from gateway.supervisor import TaskFactory


def billing_tasks(res: Resources) -> dict[str, TaskFactory]:
    """The usage exporter when billing.stripe.api_key is set; nothing otherwise."""
    cfg = res.settings.billing.stripe
    if cfg.api_key is None:
        return {}
    exporter = UsageExporter(res.settings.database_url(), cfg)
    return {"stripe-usage-export": exporter.run}
