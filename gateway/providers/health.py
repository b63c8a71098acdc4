"""One circuit breaker per provider, built from settings; transitions are recorded durably."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from gateway.logs import get_logger
from gateway.providers.breaker import BreakerConfig, CircuitBreaker, Transition
from gateway.settings import BreakerSettings

log = get_logger(__name__)


class ProviderHealth:
    def __init__(self, redis: aioredis.Redis, db: asyncpg.Pool, settings: BreakerSettings) -> None:
        self._redis = redis
        self._db = db
        self._config = BreakerConfig(
            window_seconds=settings.window_seconds,
            min_calls=settings.min_calls,
            error_rate_threshold=settings.error_rate_threshold,
            open_seconds=settings.open_seconds,
            half_open_max_calls=settings.half_open_max_calls,
        )
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, provider: str) -> CircuitBreaker:
        if provider not in self._breakers:
            self._breakers[provider] = CircuitBreaker(
                self._redis, provider, self._config, self._record
            )
        return self._breakers[provider]

    async def _record(self, t: Transition) -> None:
        log.warning(
            "provider breaker transition",
            provider=t.breaker,
            from_state=t.from_state,
            to_state=t.to_state,
            reason=t.reason,
            error_rate=t.error_rate,
        )
        await self._db.execute(
            """
            INSERT INTO provider_health_events (provider, from_state, to_state, reason, error_rate, calls, at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            t.breaker,
            t.from_state,
            t.to_state,
            t.reason,
            t.error_rate,
            t.calls,
            t.at,
        )
