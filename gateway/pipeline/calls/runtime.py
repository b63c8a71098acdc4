"""The voice side of one process, wired: pools, adapters, AMI connections, trackers, workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import queue
from gateway.calls.service import (
    CALL_CONTROL_QUEUE,
    CALL_DISPATCH_QUEUE,
    CallService,
)
from gateway.logs import get_logger
from gateway.pipeline.calls.accept import CallPipeline
from gateway.pipeline.calls.control import CallController
from gateway.pipeline.calls.dispatch import CallDispatcher
from gateway.providers.agents.sandbox import SandboxAgents
from gateway.providers.health import ProviderHealth
from gateway.providers.registry import ProviderRegistry
from gateway.providers.sandbox.voice import SandboxVoice
from gateway.resources import Resources
from gateway.settings import Settings
from gateway.supervisor import TaskFactory, periodic
from guardrails.chain import GuardrailChain
from sip.ami import AMIClient
from sip.asterisk import AsteriskConfig, AsteriskVoice
from sip.calls import CallTracker, LeaderLease
from sip.pools import (
    PoolConfig,
    TrunkPools,
    TrunkPoolsConfig,
)

log = get_logger(__name__)


@dataclass
class VoiceRuntime:
    """The voice side of one process: pools, voice/agent adapters, AMI connections, trackers."""

    settings: Settings
    resources: Resources
    registry: ProviderRegistry
    pools: TrunkPools
    service: CallService
    pipeline: CallPipeline
    trackers: dict[str, CallTracker] = field(default_factory=dict)
    leases: list[LeaderLease] = field(default_factory=list)
    _started: list[Any] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        res: Resources,
        registry: ProviderRegistry,
        chain: GuardrailChain,
        *,
        track: bool,
    ) -> VoiceRuntime:
        cfg = settings.pools
        pools = TrunkPools(
            res.redis,
            TrunkPoolsConfig(
                trunk=cfg.trunk,
                pools={name: PoolConfig(size, cfg.lease) for name, size in cfg.sizes.items()},
                retry_after_min=cfg.retry_after_min,
                retry_after_max=cfg.retry_after_max,
                reconcile_min_age=cfg.reconcile_min_age,
                rebuild_timeout=cfg.rebuild_timeout,
            ),
        )
        service = CallService(res.db, pools, registry, settings)
        pipeline = CallPipeline(res.db, chain, registry, settings, pools, dids=res.dids)
        rt = cls(settings, res, registry, pools, service, pipeline)
        try:
            await pipeline.committer.start()
            await rt._start(track)
        except BaseException:
            await rt.close()
            raise
        return rt

    async def _start(self, track: bool) -> None:
        settings, registry, res = self.settings, self.registry, self.resources
        providers = settings.providers
        if providers.sandbox.enabled:
            registry.add_voice(
                SandboxVoice(
                    res.redis,
                    self.service.apply_report,
                    step_delay=providers.sandbox.receipt_delay,
                    call_duration=settings.calls.sandbox_call_duration,
                    ring_for=settings.calls.sandbox_ring_seconds,
                    agent_connect_delay=providers.sandbox.agent_connect_delay,
                    agent_slow_every=providers.sandbox.agent_slow_every,
                )
            )
        if providers.twilio.enabled and not settings.http.public_base_url:
            log.warning(
                "Twilio voice is off: it reports call progress only to http.public_base_url"
            )
        elif providers.twilio.enabled:
            from gateway.providers.twilio.adapter import TwilioMessaging
            from gateway.providers.twilio.voice import TwilioVoice

            registry.add_voice(
                TwilioVoice(
                    TwilioMessaging.from_settings(settings).config,
                    public_base_url=settings.http.public_base_url,
                    default_from=providers.voice.default_from,
                    hold_seconds=settings.calls.twilio_hold_seconds,
                )
            )
        for name, ast in settings.asterisk.items():
            client = AMIClient(
                ast.host,
                ast.port,
                ast.username,
                ast.secret.get_secret_value(),
                ping_interval=ast.ping_interval,
                action_timeout=ast.action_timeout,
                connect_timeout=ast.connect_timeout,
                reconnect_backoff_initial=ast.reconnect_backoff_initial,
                reconnect_backoff_max=ast.reconnect_backoff_max,
            )
            config = AsteriskConfig(
                name=name,
                endpoint=ast.endpoint,
                dial=ast.dial,
                context=ast.context,
                amd_context=ast.amd_context,
                agent_dial=ast.agent_dial,
                agent_context=ast.agent_context,
                caller_id_name=ast.caller_id_name,
                tts_app=ast.tts_app,
                beep_silence=ast.beep_silence,
            )
            registry.add_voice(AsteriskVoice(config, client))
        agents = settings.agents
        if agents.sandbox:
            registry.add_agent(SandboxAgents())
        if agents.ultravox.enabled:
            from gateway.providers.agents.ultravox import UltravoxAgents

            if agents.ultravox.api_key is None:
                from gateway.settings import ConfigError

                raise ConfigError("agents.ultravox.api_key", None, "required when enabled")
            registry.add_agent(
                UltravoxAgents(
                    api_base_url=agents.ultravox.api_base_url,
                    api_key=agents.ultravox.api_key.get_secret_value(),
                    timeout=agents.ultravox.timeout,
                )
            )
        for adapter in [*registry.voice_providers(), *registry.agent_providers()]:
            await adapter.start()
            self._started.append(adapter)
        for adapter in registry.voice_providers():
            if not isinstance(adapter, AsteriskVoice):
                continue
            if track:
                ast = settings.asterisk[adapter.config.name]
                tracker = CallTracker(
                    adapter.client,
                    adapter.name,
                    self.service,
                    concurrency=settings.calls.tracker_concurrency,
                    setup_timeout=settings.calls.setup_timeout,
                )
                lease = LeaderLease(
                    res.redis,
                    f"tl:ami:{{{adapter.config.name}}}:tracker",
                    ttl=ast.tracker_lease,
                    on_gained=tracker.reconcile,
                )
                tracker.lease = lease
                tracker.attach()
                self.trackers[adapter.name] = tracker
                self.leases.append(lease)
                lease.start()
            # Only workers dial, hang up and bridge: an API process never opens AMI.
            if track:
                adapter.client.start_background()

    async def close(self) -> None:
        await self.pipeline.committer.close(self.settings.http.shutdown_timeout)
        await self.pipeline.gate.close()
        for lease in self.leases:
            await lease.close()
        for tracker in self.trackers.values():
            await tracker.close()
        for adapter in reversed(self._started):
            try:
                if isinstance(adapter, AsteriskVoice):
                    await adapter.client.close()
                await adapter.close()
            except Exception:
                log.exception("voice adapter did not close cleanly", adapter=adapter.name)
        await self.pools.aclose()


VOICE = web.AppKey("voice", VoiceRuntime)


def call_tasks(
    app: web.Application, res: Resources, health: ProviderHealth, chain: GuardrailChain
) -> dict[str, TaskFactory]:
    """The worker tasks of the voice side."""
    rt = app[VOICE]
    settings = res.settings
    dispatcher = CallDispatcher(res.db, chain, rt.registry, health, rt.service, settings)
    controller = CallController(res.db, rt.registry, rt.service, settings)
    # This process runs call control: the reports it applies run their LOCAL_OPS here.
    rt.service.local_hook = controller.run_locally
    dispatch = queue.Worker(
        db=res.db,
        database_url=settings.database_url(),
        queue=CALL_DISPATCH_QUEUE,
        handler=dispatcher,
        on_dead=dispatcher.on_dead,
        concurrency=settings.calls.dispatch_concurrency,
        lease=settings.calls.lease_seconds,
        outages=res.outages,  # our outage waits; it never spends calls.max_attempts
        counters=res.counters,
    )
    control = queue.Worker(
        db=res.db,
        database_url=settings.database_url(),
        queue=CALL_CONTROL_QUEUE,
        handler=controller,
        on_dead=controller.on_dead,
        concurrency=settings.calls.control_concurrency,
        lease=settings.calls.lease_seconds,
        outages=res.outages,
        counters=res.counters,
    )
    return {
        "call-dispatch": dispatch.run,
        "call-control": control.run,
        "abandon-checks": controller.run_local,
        "pool-renewer": lambda stopping: periodic(
            stopping, settings.pools.renew_interval, rt.service.renew_permits
        ),
    }
