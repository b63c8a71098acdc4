"""The operational metric families /metrics computes at scrape time.

The request counters and histograms live in the process (gateway/http/metrics.py); what is
true of the whole deployment — queue depth, dead letters, webhook backlog, breakers, pools,
the event log — is read from PostgreSQL and Redis when Prometheus asks, one query or one
pipelined read per family (gateway/ops/overview.py), so it is never stale and costs nothing
between scrapes. The counters of things that happen in every process — job attempts and
retries, guardrail verdicts — are summed in Redis (gateway/ops/counters.py), so they too are
the deployment's. Every process reports the same shared figures: aggregate them with max(),
not sum(). What only a process knows (its SSE clients, its AMI sessions and whether it leads
an Asterisk's tracker) is labelled as that process's own.

A family whose source is unreachable is left out and `trunkline_scrape_ok{family}` says 0,
so a PostgreSQL outage does not take the in-process metrics down with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.events import stats
from gateway.http.metrics import Labels, render_family
from gateway.logs import get_logger
from gateway.ops import overview
from gateway.ops.counters import FAMILIES as COUNTERS
from gateway.ops.counters import SharedCounters
from gateway.resources import RESOURCES
from guardrails.chain import Decision, GuardrailChain

log = get_logger(__name__)
_TIMEOUT = 2.0  # per family; a scrape answers within a few seconds whatever is down
Lines = list[str]


def _l(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


async def _queues(app: web.Application) -> Lines:
    rows = await overview.queues(app[RESOURCES].db)
    depth: list[tuple[Labels, float]] = []
    for q in rows:
        depth += [
            (_l(queue=q.queue, state="due"), q.due),
            (_l(queue=q.queue, state="scheduled"), q.ready - q.due),
            (_l(queue=q.queue, state="running"), q.running),
        ]
    return [
        *render_family(
            "trunkline_queue_depth",
            "Jobs in flight by queue and state (due: waiting for a worker now; scheduled: a "
            "retry's backoff or a deferral)",
            "gauge",
            depth,
        ),
        *render_family(
            "trunkline_queue_oldest_due_seconds",
            "How long the oldest due job of each queue has waited for a worker",
            "gauge",
            {_l(queue=q.queue): q.oldest_due_s for q in rows},
        ),
        *render_family(
            "trunkline_queue_retrying_jobs",
            "Jobs in flight that failed at least once and wait for or run another attempt",
            "gauge",
            {_l(queue=q.queue): q.retrying for q in rows},
        ),
        *render_family(
            "trunkline_dead_letters",
            "Jobs that spent their retry budget, waiting for an operator (trunkline dlq)",
            "gauge",
            {_l(queue=q.queue): q.dead for q in rows},
        ),
    ]


async def _events(app: web.Application) -> Lines:
    from gateway.events.http import HUB

    res = app[RESOURCES]
    log, stats_seq = await asyncio.gather(
        overview.event_log(res.db), res.redis.get(stats.CURSOR_KEY)
    )
    lag = {_l(subscriber=name): log.head - seq for name, seq in log.cursors.items()}
    # the /v1/stats counters' subscriber (its cursor is in Redis; none yet: all of the log)
    lag[_l(subscriber="stats")] = max(0, log.head - max(int(stats_seq or 0), log.pruned_through))
    hub = app[HUB].hub if HUB in app else None
    if hub is not None:
        lag[_l(subscriber="sse")] = max(0, log.head - hub.last_seq)
    return [
        *render_family(
            "trunkline_event_log_head", "The last event id (seq) in the log", "gauge",
            {(): log.head},
        ),
        *render_family(
            "trunkline_event_log_unsequenced",
            "Committed events not given an id yet (the sequencer's backlog)",
            "gauge",
            {(): log.unsequenced},
        ),
        *render_family(
            "trunkline_event_fanout_lag_events",
            "Events a subscriber has still to process: the durable ones (webhook fan-out, "
            "workflows), the /v1/stats counters (stats) and this process's SSE hub (sse)",
            "gauge",
            lag,
        ),
    ]  # fmt: skip


async def _webhooks(app: web.Application) -> Lines:
    rows = await overview.webhook_deliveries(app[RESOURCES].db)
    lag: dict[Labels, float] = {}
    for r in rows:
        key = _l(endpoint_status=r.endpoint_status)
        lag[key] = max(lag.get(key, 0.0), r.oldest_pending_s)
    return [
        *render_family(
            "trunkline_webhook_deliveries",
            "Webhook deliveries kept, by delivery status and endpoint status (enabled/disabled)",
            "gauge",
            {_l(status=r.status, endpoint_status=r.endpoint_status): r.count for r in rows},
        ),
        *render_family(
            "trunkline_webhook_delivery_lag_seconds",
            "Age of the oldest pending webhook delivery, by endpoint status",
            "gauge",
            lag,
        ),
    ]


async def _counters(app: web.Application) -> Lines:
    """Job attempts and retries, guardrail verdicts: summed across processes in Redis."""
    counters = app[RESOURCES].counters
    totals = await counters.read() if counters is not None else {}
    lines: Lines = []
    for family, help_ in COUNTERS.items():
        lines += render_family(family, help_, "counter", totals.get(family, {}))
    return lines


async def _breakers(app: web.Application) -> Lines:
    res = app[RESOURCES]
    states = await overview.breakers(res.redis, overview.provider_names(res.settings))
    samples: list[tuple[Labels, float]] = []
    for b in states:
        for state in ("closed", "open", "half_open"):
            samples.append((_l(provider=b.provider, state=state), float(b.state == state)))
    return render_family(
        "trunkline_breaker_state",
        "Each provider's circuit breaker: 1 for its current state",
        "gauge",
        samples,
    )


async def _pools(app: web.Application) -> Lines:
    from gateway.pipeline.calls import VOICE

    if VOICE not in app:
        return []
    stats = await app[VOICE].pools.stats()
    by = {name: _l(trunk=s.trunk, pool=name) for name, s in stats.items()}
    return [
        *render_family(
            "trunkline_pool_in_use", "Trunk channels held, per pool", "gauge",
            {by[n]: s.in_use for n, s in stats.items()},
        ),
        *render_family(
            "trunkline_pool_size", "Trunk channels in each pool", "gauge",
            {by[n]: s.size for n, s in stats.items()},
        ),
        *render_family(
            "trunkline_pool_waiting", "Calls waiting for a channel, per pool", "gauge",
            {by[n]: s.waiting for n, s in stats.items()},
        ),
    ]  # fmt: skip


async def _process(app: web.Application) -> Lines:
    """This process's own: SSE clients, AMI sessions and tracker leadership."""
    from gateway.events.http import HUB
    from gateway.pipeline.calls import VOICE
    from sip.asterisk import AsteriskVoice

    hub = app[HUB].hub if HUB in app else None
    lines = render_family(
        "trunkline_sse_clients",
        "Event streams open on this process",
        "gauge",
        {(): hub.client_count if hub is not None else 0},
    )
    if VOICE in app:
        runtime = app[VOICE]
        voices = [v for v in runtime.registry.voice_providers() if isinstance(v, AsteriskVoice)]
        leads = {lease.key: lease.held for lease in runtime.leases}
        lines += render_family(
            "trunkline_ami_connected",
            "1 while this process is logged in to the Asterisk's AMI",
            "gauge",
            {_l(asterisk=v.config.name): float(v.client.is_connected) for v in voices},
        )
        lines += render_family(
            "trunkline_ami_tracker_leader",
            "1 while this process turns the Asterisk's events into call state",
            "gauge",
            {
                _l(asterisk=v.config.name): float(
                    leads.get(f"tl:ami:{{{v.config.name}}}:tracker", False)
                )
                for v in voices
            },
        )
    return lines


FAMILIES: dict[str, Callable[[web.Application], Awaitable[Lines]]] = {
    "queues": _queues,
    "events": _events,
    "webhooks": _webhooks,
    "counters": _counters,
    "breakers": _breakers,
    "pools": _pools,
    "process": _process,
}


async def collect(app: web.Application) -> str:
    async def one(name: str) -> tuple[str, Lines | None]:
        try:
            return name, await asyncio.wait_for(FAMILIES[name](app), _TIMEOUT)
        except Exception as exc:  # an outage or a timeout: said by trunkline_scrape_ok, not a 500
            res = app.get(RESOURCES)
            if res is None or res.outages.check(exc) is None:  # an outage is logged once, there
                log.warning("metric family not collected", family=name, error=repr(exc))
            return name, None

    results = await asyncio.gather(*(one(n) for n in FAMILIES))
    lines: Lines = []
    for _, got in results:
        lines += got or []
    lines += render_family(
        "trunkline_scrape_ok",
        "1 when the family's source (PostgreSQL, Redis) answered this scrape",
        "gauge",
        {_l(family=name): float(got is not None) for name, got in results},
    )
    return "\n".join(lines) + "\n"


def count_verdicts(chain: GuardrailChain, counters: SharedCounters | None) -> None:
    """Count every guardrail decision of `chain` by verdict, check, rule and stage, summed
    across processes (ops/counters.py): verdicts are events too, but counting them from the
    log at each scrape would read the whole log."""
    if counters is None:
        return

    def observe(decision: Decision, stage: str) -> None:
        kind = decision.event.type.rpartition(".")[2]  # guardrail.allow|deny|defer
        rule = getattr(decision.verdict, "rule", None) or "none"
        counters.inc(
            "trunkline_guardrail_verdicts_total",
            verdict=kind,
            check=decision.rule or "none",
            rule=rule,
            stage=stage,
        )

    chain.observers.append(observe)
