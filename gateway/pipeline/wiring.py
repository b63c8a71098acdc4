"""App keys for the pipeline pieces, so route modules and workers share one instance per process."""

from __future__ import annotations

from aiohttp import web

from gateway.pipeline.accept import MessagePipeline
from gateway.providers.registry import ProviderRegistry
from guardrails.chain import GuardrailChain

PIPELINE = web.AppKey("message_pipeline", MessagePipeline)
PROVIDERS = web.AppKey("providers", ProviderRegistry)
CHAIN = web.AppKey("guardrail_chain", GuardrailChain)
