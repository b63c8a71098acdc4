"""`trunkline status`: the figures an operator looks at first, gathered and printed.

Shared truth (pools, queues, dead letters, breakers, AMI leaders, the event log) comes from
PostgreSQL and Redis through gateway/ops/overview.py; what only a process knows (its AMI
session) from the local daemon's /readyz and /metrics, when one answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, TextIO

import aiohttp
import asyncpg

from gateway import db, devstate
from gateway.billing import repo as billing_repo
from gateway.ops import overview
from gateway.ops.reach import Unreachable, fix, redis_url
from gateway.redis import create_redis
from gateway.settings import Settings, _mask_password


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


async def _daemon(settings: Settings) -> tuple[str, dict[str, str]]:
    """The local daemon's readiness, and its per-process figures from /metrics."""
    base = devstate.read_services(settings.dev.data_dir).get("http_url") or (
        f"http://{'127.0.0.1' if settings.http.host in ('0.0.0.0', '::') else settings.http.host}"
        f":{settings.http.port}"
    )
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"{base}/readyz") as resp:
                ready = "ready" if resp.status == 200 else f"not ready ({resp.status})"
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return f"no daemon answers at {base}", {}
    metrics = {}
    for line in text.splitlines():
        if line.startswith(("trunkline_ami_connected", "trunkline_sse_clients")):
            name, _, value = line.rpartition(" ")
            metrics[name] = value
    return f"{ready} at {base}", metrics


async def gather_status(settings: Settings, pool: asyncpg.Pool) -> dict[str, Any]:
    from sip.pools import PoolConfig, TrunkPools, TrunkPoolsConfig

    out: dict[str, Any] = {}
    async with pool.acquire() as conn:
        out["postgresql"] = (
            "migrations current"
            if await db.migrations_current(conn)
            else ("migrations pending: run `trunkline migrate`")
        )
    out["queues"] = [asdict(q) for q in await overview.queues(pool)]
    log = await overview.event_log(pool)
    out["event_log"] = asdict(log)
    out["stripe"] = (
        dict(await billing_repo.backlog(pool))
        if settings.billing.stripe.api_key is not None
        else None
    )
    redis = create_redis(redis_url(settings))
    try:
        try:
            await asyncio.wait_for(redis.ping(), 5)
        except Exception as exc:
            raise Unreachable(
                f"cannot reach Redis at {_mask_password(redis_url(settings))} ({exc}): "
                + fix(settings, "redis", "TRUNKLINE_REDIS__URL")
            ) from None
        out["redis"] = "ok"
        cfg = settings.pools
        trunk = TrunkPools(
            redis,
            TrunkPoolsConfig(
                trunk=cfg.trunk,
                pools={name: PoolConfig(size, cfg.lease) for name, size in cfg.sizes.items()},
                rebuild_timeout=cfg.rebuild_timeout,
            ),
        )
        try:
            stats = await asyncio.wait_for(trunk.stats(), 5)
            out["pools"] = [
                {"pool": s.pool, "in_use": s.in_use, "size": s.size, "waiting": s.waiting}
                for s in stats.values()
            ]
        except TimeoutError:
            out["pools"] = "unknown: the pool state is being rebuilt"
        finally:
            await trunk.aclose()
        names = overview.provider_names(settings)
        out["breakers"] = [
            {"provider": b.provider, "state": b.state, "opened_at": b.opened_at}
            for b in await overview.breakers(redis, names)
        ]
        leaders = await overview.ami_leaders(redis, list(settings.asterisk))
    finally:
        await redis.aclose()
    out["daemon"], metrics = await _daemon(settings)
    out["sse_clients"] = metrics.get("trunkline_sse_clients")
    out["asterisk"] = [
        {
            "asterisk": lead.asterisk,
            "leader": lead.holder,
            "connected": metrics.get(f'trunkline_ami_connected{{asterisk="{lead.asterisk}"}}'),
        }
        for lead in leaders
    ]
    return out


def print_status(s: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w(f"daemon      {s['daemon']}\n")
    w(f"postgresql  ok, {s['postgresql']}\nredis       {s['redis']}\n")
    w("pools       ")
    if isinstance(s["pools"], str):
        w(s["pools"] + "\n")
    else:
        w(
            "  ".join(f"{p['pool']} {p['in_use']}/{p['size']}"
                      + (f" ({p['waiting']} waiting)" if p["waiting"] else "")
                      for p in s["pools"])
            + "\n"
        )  # fmt: skip
    w("queues      ")
    live = [q for q in s["queues"] if q["ready"] or q["running"]]
    w(
        "  ".join(
            f"{q['queue']} {q['due']} due/{q['ready'] - q['due']} later/{q['running']} running"
            + (f" oldest {_age(q['oldest_due_s'])}" if q["due"] else "")
            for q in live
        )
        or "empty"
    )
    w("\n")
    dead = {q["queue"]: q["dead"] for q in s["queues"] if q["dead"]}
    w(f"dead        {sum(dead.values())}")
    w(
        f" ({', '.join(f'{k} {v}' for k, v in dead.items())}; trunkline dlq list)\n"
        if dead
        else "\n"
    )
    w("breakers    ")
    w("  ".join(f"{b['provider']} {b['state']}" for b in s["breakers"]) or "none configured")
    w("\n")
    for a in s["asterisk"]:
        conn = {"1.0": "connected", "0.0": "disconnected", None: "unknown"}.get(
            a["connected"], a["connected"]
        )
        w(f"asterisk    {a['asterisk']}: {conn} here, tracker leader {a['leader'] or 'none'}\n")
    if not s["asterisk"]:
        w("asterisk    none configured\n")
    if s["sse_clients"] is not None:
        w(f"streams     {float(s['sse_clients']):.0f} SSE clients on the local daemon\n")
    log = s["event_log"]
    w(f"event log   head {log['head']}, {log['unsequenced']} waiting for a seq")
    w(f", pruned through {log['pruned_through']}")
    lag = {k: log["head"] - v for k, v in log["cursors"].items()}
    w("".join(f", {k} {v} behind" for k, v in lag.items()) + "\n")
    stripe = s.get("stripe")
    if stripe is None:
        w("stripe      export off (billing.stripe.api_key unset)\n")
    else:
        last = stripe["last_sent_at"]
        w(f"stripe      {stripe['unsent']} batches waiting, last sent ")
        w(f"{last:%Y-%m-%d %H:%M:%S}" if last else "never")
        if stripe["failed_sends"]:
            w(f", {stripe['failed_sends']} failed sends, last error: {stripe['last_error']}")
        w("\n")
