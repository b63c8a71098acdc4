"""The process's IVR runner (one per app), opened after the guardrail chain it evaluates with,
and — in worker processes that track an Asterisk — the AsyncAGI transport on its AMI connection,
routing each inbound call by the number called (`dids.ivr_flow`) and admitting it through the
`ivr` pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.core.phone import normalize_e164
from gateway.ivr.transfers import PipelineTransfers
from gateway.pipeline.calls import VOICE
from gateway.pipeline.wiring import CHAIN, PROVIDERS
from gateway.providers.registry import ProviderRegistry
from gateway.resources import RESOURCES
from ivr import repo
from ivr.agi import AgiConfig
from ivr.asyncagi import AgentConnector, AsyncAgiTransport
from ivr.leases import RedisCallLease
from ivr.runner import FlowRunner
from ivr.sessions import SessionStore
from ivr.webhook import WebhookCaller
from sip.asterisk import AsteriskVoice

RUNNER = web.AppKey("ivr_runner", FlowRunner)
TRANSPORTS = web.AppKey("ivr_transports", list)
AGENTS = web.AppKey("ivr_agents", object)


def agent_connector(registry: ProviderRegistry, default_provider: str) -> AgentConnector:
    """An agent node's session, as `on_answer.agent` of calls makes one: the node's provider
    (or agents.provider), keyed by session and node so a retry cannot start two."""

    async def connect(session: Any, spec: dict[str, Any]) -> str:
        provider = registry.agent(spec.get("provider") or default_provider)
        agent = await provider.create_session(
            {k: v for k, v in spec.items() if k != "provider"},
            call_id=session.id,
            trace_id=session.trace_id,
            idempotency_key=f"ivr:{session.id}:{session.node}",
        )
        return agent.sip_uri

    return connect


def number_route(db: Any):  # type: ignore[no-untyped-def]
    """AGI env → the flow of the DID called (agi_dnid as E.164), or None."""

    async def route(env: dict[str, str]) -> Any:
        try:
            number = normalize_e164(env.get("agi_dnid", ""))
        except ValueError:
            return None
        return await repo.flow_for_number(db, number)

    return route


async def ivr_ctx(app: web.Application) -> AsyncIterator[None]:
    res = app[RESOURCES]
    webhooks = WebhookCaller(allow_private=res.settings.webhooks.allow_private_targets)
    cfg = res.settings.ivr
    transfers = PipelineTransfers(res.db, app[CHAIN], res.settings)
    runner = FlowRunner(
        res.db,
        SessionStore(res.redis, cfg.session_ttl),
        app[CHAIN],
        webhooks,
        transfers=transfers,
    )
    app[RUNNER] = runner
    agents = agent_connector(app[PROVIDERS], res.settings.agents.provider)
    app[AGENTS] = agents
    transports: list[AsyncAgiTransport] = []
    voice = app.get(VOICE)
    if voice is not None:
        pool = voice.pools.get("ivr") if "ivr" in voice.pools.names else None
        for adapter in voice.registry.voice_providers():
            # only where this process tracks the Asterisk (workers): an API process opens no AMI
            if isinstance(adapter, AsteriskVoice) and adapter.name in voice.trackers:
                transport = AsyncAgiTransport(
                    adapter.client,
                    runner,
                    number_route(res.db),
                    pool=pool,
                    lease=RedisCallLease(res.redis, cfg.lease),
                    agents=agents,
                    bridge_hosts=tuple(res.settings.agents.bridge_hosts),
                    cfg=AgiConfig(
                        silence=cfg.silence,
                        recordings_dir=cfg.recordings_dir,
                        number_dial=adapter.config.dial,
                        endpoint=adapter.config.endpoint,
                        agent_dial=adapter.config.agent_dial,
                        tts_app=adapter.config.tts_app,
                    ),
                    command_timeout=cfg.command_timeout,
                    overflow_sound=cfg.overflow_sound,
                    provider=adapter.name,
                )
                transport.attach()
                transports.append(transport)
    app[TRANSPORTS] = transports
    try:
        yield
    finally:
        for transport in transports:
            await transport.close()
        await webhooks.aclose()
