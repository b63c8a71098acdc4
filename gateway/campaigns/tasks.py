"""The campaign dialer as a worker task (see campaigns/dialer.py), wired to the pipelines."""

from __future__ import annotations

from aiohttp import web

from campaigns.dialer import Dialer
from gateway.pipeline.calls import VOICE
from gateway.pipeline.wiring import CHAIN, PIPELINE
from gateway.resources import RESOURCES
from gateway.supervisor import TaskFactory

DIALER = web.AppKey("campaign_dialer", Dialer)


def campaign_tasks(app: web.Application) -> dict[str, TaskFactory]:
    """One dialer per worker process; any number of processes may run one.

    The window is read on the guardrail chain's clock (looked up at each use, so a clock a
    test injects into the chain governs both)."""
    res = app[RESOURCES]
    dialer = Dialer(
        db=res.db,
        database_url=res.settings.database_url(),
        calls=app[VOICE].pipeline,
        messages=app[PIPELINE],
        clock=lambda: app[CHAIN].clock(),
        interval=res.settings.campaigns.interval,
        orphan_after=res.settings.campaigns.orphan_after,
    )
    app[DIALER] = dialer
    return {"campaign-dialer": dialer.run}
