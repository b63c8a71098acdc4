"""The aiohttp application factory: wiring only.

The app's cleanup context owns everything with a lifecycle — the PostgreSQL
pool, the Redis client and (for worker roles) the supervised background tasks
— so one `AppRunner.setup()`/`cleanup()` pair starts and stops a process of
any role.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from aiohttp import web

from gateway import queue
from gateway.batching import Coalescer
from gateway.billing.tasks import billing_tasks
from gateway.calls.http import routes as call_routes
from gateway.campaigns.http import routes as campaign_routes
from gateway.campaigns.tasks import campaign_tasks
from gateway.dashboard.http import routes as dashboard_routes
from gateway.deadletters.http import routes as dead_letter_routes
from gateway.dnc import inbound as dnc_inbound
from gateway.dnc.http import routes as dnc_routes
from gateway.emails.http import routes as email_routes
from gateway.events.http import routes as event_routes
from gateway.events.tasks import event_tasks
from gateway.http import idempotency
from gateway.http.metrics import Registry
from gateway.http.middleware import METRICS, context_middleware
from gateway.http.routing import RouteTable, openapi_document
from gateway.http.server import client_gone_middleware
from gateway.ivr.http import routes as ivr_routes
from gateway.ivr.wiring import ivr_ctx
from gateway.limits.http import routes as limit_routes
from gateway.logs import get_logger
from gateway.messages.batch_repo import DISPATCH_ATTACH
from gateway.messages.http import routes as message_routes
from gateway.messages.inbound import register_inbound_hook
from gateway.messages.service import apply_reports
from gateway.ops.http import OPENAPI
from gateway.ops.http import routes as ops_routes
from gateway.ops.metrics import count_verdicts
from gateway.pipeline.accept import DISPATCH_QUEUE, MessagePipeline
from gateway.pipeline.calls import VOICE, VoiceRuntime, call_tasks
from gateway.pipeline.dispatch import MessageDispatcher
from gateway.pipeline.receipts import ReceiptReconciler
from gateway.pipeline.wiring import CHAIN, PIPELINE, PROVIDERS
from gateway.providers.contracts import StatusReport
from gateway.providers.health import ProviderHealth
from gateway.providers.registry import ProviderRegistry
from gateway.providers.twilio.http import routes as twilio_routes
from gateway.providers.twilio.voice_http import routes as twilio_voice_routes
from gateway.resources import RESOURCES, Resources, open_resources
from gateway.settings import GUARDRAIL_CHECKS, ConfigError, Settings
from gateway.supervisor import Supervisor, TaskFactory, periodic
from gateway.tenants.http import routes as tenant_routes
from gateway.webhooks.http import routes as webhook_routes
from gateway.webhooks.tasks import webhook_tasks
from gateway.workflows.http import routes as workflow_routes
from gateway.workflows.tasks import workflow_tasks
from guardrails.chain import GuardrailChain
from guardrails.checks import build_checks
from guardrails.policy import GuardrailPolicy

log = get_logger(__name__)
Role = Literal["api", "worker", "all"]
SUPERVISOR = web.AppKey("supervisor", Supervisor)
ROUTE_TABLES: list[RouteTable] = [
    ops_routes,
    tenant_routes,
    message_routes,
    dead_letter_routes,
    event_routes,
    webhook_routes,
    twilio_routes,
    call_routes,
    twilio_voice_routes,
    dnc_routes,
    limit_routes,
    campaign_routes,
    dashboard_routes,
    ivr_routes,
    workflow_routes,
    email_routes,
]


def build_chain(res: Resources) -> GuardrailChain:
    """The guardrail chain every outbound action passes, and the inbound keyword hook it relies on.

    Suppression (DNC + opt-outs) → content → calling hours → rate limits; see guardrails/checks.py.
    """
    policy = GuardrailPolicy.from_settings(res.settings)
    if len(policy.checks) < len(GUARDRAIL_CHECKS):
        log.warning(
            "guardrail checks disabled by configuration",
            disabled=[c for c in GUARDRAIL_CHECKS if c not in policy.checks],
        )
    dnc_inbound.configure(policy, max_attempts=res.settings.messaging.max_attempts)
    register_inbound_hook(dnc_inbound.keyword_hook)
    checks = build_checks(
        policy, res.db, res.redis, redis_slots=max(1, res.settings.redis.max_connections // 2)
    )
    return GuardrailChain(checks, policy=policy)


def require_full_chain(settings: Settings, *, allow_reduced: bool) -> None:
    """A gateway that sends runs every guardrail check; `guardrails.checks` may leave one out
    (DNC, calling hours, ...) only under `trunkline dev`, which says so with `allow_reduced`.

    Tests build focused chains in-process from the checks themselves (no app, no config), so
    no configuration can turn a check off in production."""
    checks = settings.guardrails.checks
    missing = [c for c in GUARDRAIL_CHECKS if c not in checks]
    if missing and not allow_reduced:
        raise ConfigError(
            "guardrails.checks",
            checks,
            f"leaves out {', '.join(missing)}; a reduced guardrail chain runs only under "
            "`trunkline dev`",
        )


def worker_tasks(app: web.Application) -> dict[str, TaskFactory]:
    """Every background task a worker process runs, by name."""
    res = app[RESOURCES]
    settings = res.settings
    health = ProviderHealth(res.redis, res.db, settings.providers.breaker)
    dispatcher = MessageDispatcher(
        res.db, app[CHAIN], app[PROVIDERS], health, links=app[PIPELINE].links
    )
    dispatch = queue.Worker(
        db=res.db,
        database_url=settings.database_url(),
        queue=DISPATCH_QUEUE,
        handler=dispatcher,
        on_bury=dispatcher.on_bury,
        attach=DISPATCH_ATTACH,
        concurrency=settings.messaging.dispatch_concurrency,
        lease=settings.messaging.lease_seconds,
        outages=res.outages,
        counters=res.counters,
    )

    async def run_dispatch(stopping: asyncio.Event) -> None:
        try:
            await dispatch.run(stopping)
        finally:
            await dispatcher.aclose()  # its shared batches end with the worker

    receipts = ReceiptReconciler(res.db, app[PROVIDERS], app[VOICE].service, settings.receipts)
    return (
        {
            "dispatch": run_dispatch,
            "receipt-reconciler": lambda stopping: periodic(
                stopping, settings.receipts.interval, receipts.run_once
            ),
            "idempotency-janitor": lambda stopping: periodic(
                stopping, 300, lambda: idempotency.purge_expired(res.db)
            ),
        }
        | event_tasks(res)
        | webhook_tasks(res)
        | call_tasks(app, res, health, app[CHAIN])
        | campaign_tasks(app)
        | workflow_tasks(app)
        | billing_tasks(res)
    )


def _version() -> str:
    try:
        return importlib.metadata.version("trunkline")
    except (
        importlib.metadata.PackageNotFoundError
    ):  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@functools.cache
def _openapi(_shape: tuple[int, ...]) -> dict[str, Any]:
    """The OpenAPI document, built once per process (keyed by the route tables' sizes): it
    depends on the route declarations alone, and building it from the pydantic models costs
    ~0.25 s of CPU — once per app, i.e. once per test that starts one. Read-only."""
    return openapi_document(ROUTE_TABLES, title="Trunkline API", version=_version())


def create_app(
    settings: Settings,
    *,
    role: Role = "all",
    extra_tasks: Callable[[web.Application], dict[str, TaskFactory]] | None = None,
    allow_reduced_chain: bool = False,
) -> web.Application:
    require_full_chain(settings, allow_reduced=allow_reduced_chain)
    app = web.Application(
        middlewares=[context_middleware, client_gone_middleware],
        client_max_size=settings.http.max_body_bytes,
    )
    registry = Registry()
    app[METRICS] = registry
    for table in ROUTE_TABLES:
        table.install(app)
    app[OPENAPI] = _openapi(tuple(len(table.endpoints) for table in ROUTE_TABLES))

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_resources(settings) as res:
            app[RESOURCES] = res
            registry.gauge(
                "trunkline_db_pool_connections",
                "PostgreSQL pool connections by state",
                lambda: {
                    (("state", "open"),): float(res.db.get_size()),
                    (("state", "idle"),): float(res.db.get_idle_size()),
                },
            )
            yield

    async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
        res = app[RESOURCES]
        # In-process receipts (the sandbox's) arrive many at a time under load: applied in
        # shared transactions, each as apply_report would alone.
        receipts: Coalescer[StatusReport, bool | None] = Coalescer(
            functools.partial(apply_reports, res.db), name="receipts"
        )
        registry = ProviderRegistry.from_settings(settings, res.redis, receipts.submit)
        await registry.start()
        chain = build_chain(res)
        count_verdicts(chain, res.counters)  # trunkline_guardrail_verdicts_total
        app[PROVIDERS] = registry
        app[CHAIN] = chain
        pipeline = MessagePipeline(
            res.db, chain, registry, settings, metrics=app[METRICS], dids=res.dids
        )
        await pipeline.start()
        app[PIPELINE] = pipeline
        try:
            yield
        finally:
            await pipeline.close()
            await chain.aclose()
            await registry.close()
            await receipts.aclose()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        sup = Supervisor(
            backoff_max=settings.worker.restart_backoff_max, outages=app[RESOURCES].outages
        )
        tasks = worker_tasks(app) | (extra_tasks(app) if extra_tasks else {})
        for name, factory in tasks.items():
            sup.add(name, factory)
        app[SUPERVISOR] = sup
        sup.start()
        yield
        await sup.stop(settings.http.shutdown_timeout)

    async def voice_ctx(app: web.Application) -> AsyncIterator[None]:
        # Pools, voice/agent adapters; AMI connections and call tracking in worker roles only.
        res = app[RESOURCES]
        runtime = await VoiceRuntime.open(
            settings, res, app[PROVIDERS], app[CHAIN], track=role in ("worker", "all")
        )
        app[VOICE] = runtime
        try:
            yield
        finally:
            await runtime.close()

    app.cleanup_ctx.append(resources_ctx)
    app.cleanup_ctx.append(pipeline_ctx)
    app.cleanup_ctx.append(voice_ctx)
    app.cleanup_ctx.append(ivr_ctx)
    if role in ("worker", "all"):
        app.cleanup_ctx.append(workers_ctx)
    return app
