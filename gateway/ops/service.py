"""Readiness: can this process do its job right now?

The answer is public (load balancers poll it without a key), so a failed check says only which
component is not ready and in what way, in fixed words; the exception behind it is logged, once
each time a component's state changes, not once per poll.
"""

from __future__ import annotations

import asyncio
import weakref

from gateway import db
from gateway.logs import get_logger
from gateway.ops.schemas import Check, Readiness
from gateway.resources import Resources

log = get_logger(__name__)
CHECK_TIMEOUT = 2.0
MIGRATIONS_PENDING = "pending or edited migrations; run trunkline migrate"
# per process's resources (keyed by its pool): component -> the last failure logged for it
# (None: it was ok), so that a poll logs only a change
_last_failure: weakref.WeakKeyDictionary[object, dict[str, str | None]] = (
    weakref.WeakKeyDictionary()
)


def _failed(res: Resources, component: str, exc: BaseException) -> Check:
    last = _last_failure.setdefault(res.db, {})
    reason = f"{type(exc).__name__}: {exc}"[:500]
    if last.get(component) != reason:
        last[component] = reason
        log.warning("readiness check failed", component=component, error=reason)
    return Check(ok=False, detail="timed out" if isinstance(exc, TimeoutError) else "unreachable")


def _ok(res: Resources, component: str) -> Check:
    last = _last_failure.setdefault(res.db, {})
    if last.get(component) is not None:
        log.info("readiness check recovered", component=component)
    last[component] = None
    return Check(ok=True)


async def _postgres(res: Resources) -> tuple[Check, Check]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with res.db.acquire() as conn:
                await conn.fetchval("SELECT 1")
                current = await db.migrations_current(conn)
    except Exception as exc:  # readiness reports every failure, it does not raise
        return _failed(res, "postgres", exc), Check(ok=False, detail="database unreachable")
    migrations = Check(ok=True) if current else Check(ok=False, detail=MIGRATIONS_PENDING)
    return _ok(res, "postgres"), migrations


async def _redis(res: Resources) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await res.redis.ping()
    except Exception as exc:
        return _failed(res, "redis", exc)
    return _ok(res, "redis")


async def readiness(res: Resources) -> Readiness:
    (pg, migrations), redis = await asyncio.gather(_postgres(res), _redis(res))
    checks = {"postgres": pg, "redis": redis, "migrations": migrations}
    ready = all(c.ok for c in checks.values())
    return Readiness(status="ready" if ready else "not_ready", checks=checks)
