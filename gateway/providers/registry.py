"""The provider registry: which adapter carries a channel, resolved at run time from config."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from gateway.core.errors import Problem
from gateway.providers.agents.base import AgentProvider
from gateway.providers.contracts import MessagingProvider, StatusReport, VoiceProvider
from gateway.settings import ChannelRoute, Settings

ReceiptSink = Callable[[StatusReport], Awaitable[object]]


class ProviderUnavailable(Problem):
    status, code, title = 503, "provider_unavailable", "No provider can carry this"


class ProviderRegistry:
    def __init__(
        self, messaging: dict[str, MessagingProvider], routes: dict[str, ChannelRoute]
    ) -> None:
        self._messaging = messaging
        self._routes = routes
        self._voice: dict[
            str, VoiceProvider
        ] = {}  # added by the voice runtime (gateway.pipeline.calls.runtime)
        self._agents: dict[str, AgentProvider] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: aioredis.Redis, sink: ReceiptSink
    ) -> ProviderRegistry:
        cfg = settings.providers
        adapters: dict[str, MessagingProvider] = {}
        if cfg.sandbox.enabled:
            from gateway.providers.sandbox.messaging import SandboxMessaging

            adapters["sandbox"] = SandboxMessaging(
                redis, sink, receipt_delay=cfg.sandbox.receipt_delay
            )
        if cfg.twilio.enabled:
            from gateway.providers.twilio.adapter import TwilioMessaging

            adapters["twilio"] = TwilioMessaging.from_settings(settings)
        if cfg.smtp.enabled:
            from gateway.providers.smtp.adapter import SmtpEmail

            adapters["smtp"] = SmtpEmail.from_settings(settings)
        return cls(
            adapters,
            {"sms": cfg.sms, "whatsapp": cfg.whatsapp, "voice": cfg.voice, "email": cfg.email},
        )

    def add(self, provider: MessagingProvider) -> None:
        self._messaging[provider.name] = provider

    def messaging(self, name: str) -> MessagingProvider:
        try:
            return self._messaging[name]
        except KeyError:
            raise ProviderUnavailable(f"provider {name!r} is not configured") from None

    def has(self, name: str) -> bool:
        return name in self._messaging

    def messaging_providers(self) -> list[MessagingProvider]:
        return list(self._messaging.values())

    def add_voice(self, provider: VoiceProvider) -> None:
        self._voice[provider.name] = provider

    def voice(self, name: str) -> VoiceProvider:
        try:
            return self._voice[name]
        except KeyError:
            raise ProviderUnavailable(f"voice provider {name!r} is not configured") from None

    def has_voice(self, name: str) -> bool:
        return name in self._voice

    def voice_providers(self) -> list[VoiceProvider]:
        return list(self._voice.values())

    def add_agent(self, provider: AgentProvider) -> None:
        self._agents[provider.name] = provider

    def agent(self, name: str) -> AgentProvider:
        try:
            return self._agents[name]
        except KeyError:
            raise ProviderUnavailable(f"agent provider {name!r} is not configured") from None

    def agent_providers(self) -> list[AgentProvider]:
        return list(self._agents.values())

    def route(self, channel: str) -> ChannelRoute:
        return self._routes[channel]

    async def start(self) -> None:
        for adapter in self._messaging.values():
            await adapter.start()

    async def close(self) -> None:
        for adapter in self._messaging.values():
            await adapter.close()
