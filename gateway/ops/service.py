"""Readiness: can this process do its job right now?"""

from __future__ import annotations

import asyncio

from gateway import db
from gateway.ops.schemas import Check, Readiness
from gateway.resources import Resources

CHECK_TIMEOUT = 2.0


async def _postgres(res: Resources) -> tuple[Check, Check]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with res.db.acquire() as conn:
                await conn.fetchval("SELECT 1")
                current = await db.migrations_current(conn)
    except Exception as exc:  # readiness reports every failure, it does not raise
        failed = Check(ok=False, detail=f"{type(exc).__name__}: {exc}"[:200])
        return failed, Check(ok=False, detail="database unreachable")
    migrations = (
        Check(ok=True)
        if current
        else Check(ok=False, detail="pending or edited migrations; run trunkline migrate")
    )
    return Check(ok=True), migrations


async def _redis(res: Resources) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await res.redis.ping()
    except Exception as exc:
        return Check(ok=False, detail=f"{type(exc).__name__}: {exc}"[:200])
    return Check(ok=True)


async def readiness(res: Resources) -> Readiness:
    (pg, migrations), redis = await asyncio.gather(_postgres(res), _redis(res))
    checks = {"postgres": pg, "redis": redis, "migrations": migrations}
    ready = all(c.ok for c in checks.values())
    return Readiness(status="ready" if ready else "not_ready", checks=checks)
