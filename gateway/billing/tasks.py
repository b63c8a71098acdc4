"""The export's background task, run by every worker process (one leads; see exporter.py)."""

from __future__ import annotations

from gateway.resources import Resources
from gateway.supervisor import TaskFactory


def billing_tasks(res: Resources) -> dict[str, TaskFactory]:
    """The usage exporter when billing.stripe.api_key is set; nothing otherwise."""
    cfg = res.settings.billing.stripe
    if cfg.api_key is None:
        return {}
    # Imported here: the stripe SDK takes a second to import, which every `trunkline`
    # command (they all load the app) would pay with the export off.
    from gateway.billing.exporter import UsageExporter

    exporter = UsageExporter(res.settings.database_url(), cfg)
    return {"stripe-usage-export": exporter.run}
