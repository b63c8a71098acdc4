"""The shared connections a process holds: PostgreSQL pool and Redis client.

Opened once per process and owned by the aiohttp app's cleanup context, so
every role (api, worker, all) has the same lifecycle. `outages` remembers which of
the two is unreachable right now (see gateway/outage.py), for every part of the
process to answer 503 and log the outage once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from gateway import db
from gateway.listener import ChangeListener
from gateway.logs import get_logger
from gateway.ops.counters import SharedCounters
from gateway.outage import OutageMonitor, quiet_library_outage_logs
from gateway.pipeline.didcache import DidCache
from gateway.redis import create_redis
from gateway.settings import Settings
from gateway.tenants.keycache import KeyCache

log = get_logger(__name__)


@dataclass
class Resources:
    settings: Settings
    db: asyncpg.Pool
    redis: aioredis.Redis
    outages: OutageMonitor = field(default_factory=OutageMonitor)
    # The API keys this process authenticated (no round trip for a known key; keycache.py)
    keys: KeyCache | None = None
    # Job attempts and guardrail verdicts, summed across processes in Redis (ops/counters.py)
    counters: SharedCounters | None = None
    # The DIDs its tenants send from (no round trip to route a send; didcache.py)
    dids: DidCache | None = None


RESOURCES = web.AppKey("resources", Resources)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    url = settings.database_url()
    if settings.database.migrate_on_start:
        applied = await db.migrate(url)
        if applied:
            log.info("migrations applied", versions=[m.version for m in applied])
    pool = await db.create_pool(
        url,
        min_size=settings.database.min_size,
        max_size=settings.database.max_size,
        command_timeout=settings.database.command_timeout,
    )
    redis = create_redis(settings.redis_url(), max_connections=settings.redis.max_connections)
    outages = OutageMonitor({"database": lambda: pool.fetchval("SELECT 1"), "redis": redis.ping})
    quiet_library_outage_logs()
    # One LISTEN connection tells both caches what changed (gateway/listener.py).
    listener = ChangeListener(url)
    keys, dids = KeyCache(listener), DidCache(listener)
    await listener.start()
    counters = SharedCounters(redis, outages=outages)
    counters.start()
    try:
        yield Resources(
            settings=settings,
            db=pool,
            redis=redis,
            outages=outages,
            keys=keys,
            dids=dids,
            counters=counters,
        )
    finally:
        await counters.close()
        await listener.close()
        await outages.aclose()
        await redis.aclose()
        await pool.close()
