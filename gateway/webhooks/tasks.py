"""Webhook background tasks, run by every worker process (see gateway.app.worker_tasks)."""

from __future__ import annotations

import asyncio

from gateway import queue
from gateway.resources import Resources
from gateway.supervisor import TaskFactory, periodic
from gateway.webhooks import repo
from gateway.webhooks.deliver import QUEUE, Deliverer, Fanout, http_session


def webhook_tasks(res: Resources) -> dict[str, TaskFactory]:
    cfg = res.settings.webhooks
    url = res.settings.database_url()
    fanout = Fanout(
        res.db,
        url,
        batch=res.settings.events.subscriber_batch,
        interval=res.settings.events.subscriber_interval,
        settle=res.settings.events.subscriber_settle,
    )

    async def deliveries(stopping: asyncio.Event) -> None:
        async with http_session(cfg) as session:
            deliverer = Deliverer(res.db, cfg, session)
            worker = queue.Worker(
                res.db,
                url,
                QUEUE,
                deliverer.handle,
                concurrency=cfg.concurrency,
                lease=max(30.0, cfg.timeout * 3),
                on_dead=deliverer.on_dead,
                counters=res.counters,
                outages=res.outages,  # our outage waits and is logged once, as other queues
            )
            await worker.run(stopping)

    return {
        "webhook-fanout": fanout.run,
        "webhook-delivery": deliveries,
        "webhook-janitor": lambda stopping: periodic(
            stopping, 3600, lambda: repo.prune_deliveries(res.db, cfg.delivery_retention)
        ),
    }
