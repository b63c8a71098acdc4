"""The event log's background tasks, run by every worker process (see gateway.app.worker_tasks)."""

from __future__ import annotations

from gateway.events import log
from gateway.events.sequencer import Sequencer
from gateway.events.stats import StatsAggregator
from gateway.resources import Resources
from gateway.supervisor import TaskFactory, periodic


def event_tasks(res: Resources) -> dict[str, TaskFactory]:
    cfg = res.settings.events
    url = res.settings.database_url()
    sequencer = Sequencer(
        url, res.redis, batch=cfg.sequencer_batch, interval=cfg.sequencer_interval
    )
    stats = StatsAggregator(
        res.db,
        url,
        res.redis,
        batch=cfg.subscriber_batch,
        interval=cfg.subscriber_interval,
        settle=cfg.subscriber_settle,
    )
    return {
        "event-sequencer": sequencer.run,
        "event-stats": stats.run,
        "event-retention": lambda stopping: periodic(
            stopping, cfg.prune_interval, lambda: log.prune(res.db, cfg.retention, cfg.prune_batch)
        ),
    }
