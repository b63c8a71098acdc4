"""The process's IVR runner (one per app), opened after the guardrail chain it evaluates with."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.pipeline.wiring import CHAIN
from gateway.resources import RESOURCES
from ivr.runner import FlowRunner
from ivr.sessions import DEFAULT_TTL, SessionStore
from ivr.webhook import WebhookCaller

RUNNER = web.AppKey("ivr_runner", FlowRunner)


async def ivr_ctx(app: web.Application) -> AsyncIterator[None]:
    res = app[RESOURCES]
    webhooks = WebhookCaller(allow_private=res.settings.webhooks.allow_private_targets)
    app[RUNNER] = FlowRunner(res.db, SessionStore(res.redis, DEFAULT_TTL), app[CHAIN], webhooks)
    try:
        yield
    finally:
        await webhooks.aclose()
