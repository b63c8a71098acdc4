"""The workflow engine's background tasks, run by every worker process (see gateway.app)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import queue
from gateway.pipeline.calls import VOICE
from gateway.pipeline.wiring import CHAIN, PIPELINE
from gateway.resources import RESOURCES
from gateway.supervisor import TaskFactory
from gateway.webhooks.deliver import http_session
from gateway.workflows.engine import WorkflowEngine
from gateway.workflows.follow import Subscriber, Timer
from gateway.workflows.runs import QUEUE

ENGINE = web.AppKey("workflow_engine", WorkflowEngine)


def workflow_tasks(app: web.Application) -> dict[str, TaskFactory]:
    """The engine (the `workflows` queue), the event subscriber and the timer.

    The clock is the guardrail chain's, looked up at each use (as the campaign dialer's): a
    clock a test injects into the chain — or into `app[ENGINE].clock` — decides both when a
    wait is due and whether it is."""
    res = app[RESOURCES]
    cfg = res.settings.workflows
    url = res.settings.database_url()
    engine = WorkflowEngine(
        db=res.db,
        messages=app[PIPELINE],
        calls=app[VOICE].pipeline,
        clock=lambda: app[CHAIN].clock(),
        webhooks=res.settings.webhooks,
    )
    app[ENGINE] = engine
    subscriber = Subscriber(
        res.db,
        url,
        batch=res.settings.events.subscriber_batch,
        interval=res.settings.events.subscriber_interval,
        settle=res.settings.events.subscriber_settle,
    )
    timer = Timer(res.db, lambda: engine.clock(), interval=cfg.interval)

    async def run_engine(stopping: asyncio.Event) -> None:
        async with http_session(res.settings.webhooks) as session:
            engine.session = session
            worker = queue.Worker(
                res.db,
                url,
                QUEUE,
                engine.handle,
                on_bury=engine.on_bury,
                # A step holds its run's row lock (a pooled connection) while the pipeline
                # uses others: never more steps at once than a third of the pool.
                concurrency=min(cfg.concurrency, max(1, res.settings.database.max_size // 3)),
                lease=cfg.lease,
                outages=res.outages,
                counters=res.counters,
            )
            await worker.run(stopping)

    return {
        "workflow-engine": run_engine,
        "workflow-events": subscriber.run,
        "workflow-timer": timer.run,
    }
