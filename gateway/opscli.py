"""The operator's commands: `trunkline status`, `tail`, `dlq list|replay`, `keys list`,
`tenants list`.

They read PostgreSQL and Redis directly — the truth every daemon process shares — rather
than asking one daemon's API, so they work with the API role down and see every tenant. What
only a process knows (its AMI sessions, its SSE clients) comes from the local daemon's
/metrics when one answers. Next to a `make run` they find its private servers through
``.trunkline/services.json`` (gateway/devstate.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any, TextIO

import aiohttp
import asyncpg

from gateway import db, devstate, queue
from gateway.events.model import COLUMNS, TypeFilter, public_event, validate_patterns
from gateway.ops import overview
from gateway.redis import create_redis
from gateway.settings import Settings, _mask_password

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
_DEV_TAKEN: dict[str, str] = {}  # the URLs use_dev_services took from services.json


class Unreachable(RuntimeError):
    """A server the command needs does not answer; the message names it and the fix."""


def _fix(settings: Settings, what: str, env: str) -> str:
    """How to point the CLI at `what`, worded for where its URL came from."""
    if what in _DEV_TAKEN:
        return (
            f"the private {'PostgreSQL' if what == 'database' else 'Redis'} that `make run` "
            f"(trunkline dev) started is not running: start `make run` in "
            f"{settings.dev.data_dir.resolve().parent}, or set {env}"
        )
    return f"check that it is running and that {env} (or the config file) points at it"


def database_url(settings: Settings) -> str:
    if settings.database.url is None:
        raise Unreachable(
            "no PostgreSQL configured: run `make run` (trunkline dev) in this directory — it "
            "starts a private PostgreSQL and writes its URL to "
            f"{settings.dev.data_dir / devstate.SERVICES}, which this command reads — or set "
            "TRUNKLINE_DATABASE__URL=postgresql://…"
        )
    return settings.database_url()


def redis_url(settings: Settings) -> str:
    if settings.redis.url is None:
        raise Unreachable(
            "no Redis configured: run `make run` (trunkline dev) in this directory, or set "
            "TRUNKLINE_REDIS__URL=redis://…"
        )
    return settings.redis_url()


async def open_pool(settings: Settings) -> asyncpg.Pool:
    url = database_url(settings)
    try:
        return await asyncio.wait_for(db.create_pool(url, min_size=1, max_size=2), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(
            f"cannot reach PostgreSQL at {_mask_password(url)} ({exc or type(exc).__name__}): "
            + _fix(settings, "database", "TRUNKLINE_DATABASE__URL")
        ) from None


def run(settings: Settings, work: Callable[[asyncpg.Pool], Coroutine[Any, Any, int]]) -> int:
    async def main() -> int:
        pool = await open_pool(settings)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# --- status ---------------------------------------------------------------------------------


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
    redis = create_redis(redis_url(settings))
    try:
        try:
            await asyncio.wait_for(redis.ping(), 5)
        except Exception as exc:
            raise Unreachable(
                f"cannot reach Redis at {_mask_password(redis_url(settings))} ({exc}): "
                + _fix(settings, "redis", "TRUNKLINE_REDIS__URL")
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
    log = s["event_log"]
    w(f"event log   head {log['head']}, {log['unsequenced']} waiting for a seq")
    w(f", pruned through {log['pruned_through']}")
    lag = {k: log["head"] - v for k, v in log["cursors"].items()}
    w("".join(f", {k} {v} behind" for k, v in lag.items()) + "\n")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool: asyncpg.Pool) -> int:
        status = await gather_status(settings, pool)
        if args.json:
            print(json.dumps(status, indent=2, default=str))
        else:
            print_status(status, sys.stdout)
        return EXIT_OK if status["daemon"].startswith("ready") or not args.check else EXIT_RUNTIME

    return run(settings, work)


# --- tail -----------------------------------------------------------------------------------


async def tail_events(
    pool: asyncpg.Pool,
    *,
    types: TypeFilter,
    tenant_id: uuid.UUID | None,
    after: int | None,
    emit: Callable[[dict[str, Any]], None],
    poll: float = 0.2,
    stop: asyncio.Event | None = None,
) -> None:
    """Follow the log in seq order — the order SSE clients see — from `after` (None: the
    head, so only new events)."""
    if after is None:
        after = (await overview.event_log(pool)).head
    tenants: dict[uuid.UUID, str] = {}
    while stop is None or not stop.is_set():
        rows = await pool.fetch(
            f"""
            SELECT {COLUMNS} FROM events
            WHERE seq > $1 AND ($2::uuid IS NULL OR tenant_id = $2)
              AND ($3::text[] IS NULL OR type LIKE ANY($3::text[]))
            ORDER BY seq LIMIT 500
            """,
            after,
            tenant_id,
            types.like_patterns(),
        )
        for row in rows:
            after = row["seq"]
            if row["tenant_id"] not in tenants:
                tenants[row["tenant_id"]] = await pool.fetchval(
                    "SELECT name FROM tenants WHERE id = $1", row["tenant_id"]
                )
            emit({"tenant": tenants[row["tenant_id"]], **public_event(row)})
        if len(rows) < 500:
            await asyncio.sleep(poll)


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    patterns = [p for p in (args.types or "").replace(",", " ").split() if p]
    try:
        types = TypeFilter.parse(validate_patterns(patterns) if patterns else None)
    except ValueError as exc:
        print(f"error: --types: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event, separators=(",", ":"), default=str), flush=True)

    async def work(pool: asyncpg.Pool) -> int:
        tenant_id = None
        if args.tenant:
            tenant_id = await pool.fetchval("SELECT id FROM tenants WHERE name = $1", args.tenant)
            if tenant_id is None:
                print(f"error: no tenant named {args.tenant!r}", file=sys.stderr)
                return EXIT_USAGE
        await tail_events(pool, types=types, tenant_id=tenant_id, after=args.after, emit=emit)
        return EXIT_OK

    return run(settings, work)


# --- dlq, keys, tenants ---------------------------------------------------------------------


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool: asyncpg.Pool) -> int:
        rows = await queue.list_dead(pool, None, limit=args.limit, queue_name=args.queue)
        names = {r["id"]: r["name"] for r in await pool.fetch("SELECT id, name FROM tenants")}
        if args.json:
            for r in rows:
                print(json.dumps(dict(r) | {"tenant": names.get(r["tenant_id"])}, default=str))
            return EXIT_OK
        if not rows:
            print("no dead letters")
        for r in rows:
            error = (r["last_error"] or "").replace("\n", " ")[:80]
            print(
                f"{r['id']:>8}  {r['queue']:<12} {names.get(r['tenant_id'], '-'):<16} "
                f"attempts {r['attempts']}/{r['max_attempts']}  dead {r['dead_at']:%Y-%m-%d %H:%M:%S}"
                f"  {json.dumps(r['payload'], default=str)}  {error}"
            )
        return EXIT_OK

    return run(settings, work)


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn, conn.transaction():
            row = await queue.replay_dead(conn, None, args.job_id)
        if row is None:
            print(f"error: no dead letter with id {args.job_id}", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"replayed {row['id']}: back in queue {row['queue']} with a fresh retry budget")
        return EXIT_OK

    return run(settings, work)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tenants import repo

    async def work(pool: asyncpg.Pool) -> int:
        tenant_id = None
        if args.tenant:
            row = await repo.tenant_by_name(pool, args.tenant)
            if row is None:
                print(f"error: no tenant named {args.tenant!r}", file=sys.stderr)
                return EXIT_USAGE
            tenant_id = row["id"]
        rows = await repo.list_keys(pool, tenant_id, limit=10_000, after=(None, None))
        for r in rows:
            state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
            print(
                f"{r['key_id']}  {r['tenant']:<16} {r['name'] or '-':<12} {state:<24} "
                f"created {r['created_at']:%Y-%m-%d %H:%M}  {' '.join(r['scopes'])}"
            )
        if not rows:
            print("no API keys")
        return EXIT_OK

    return run(settings, work)


def cmd_tenants_list(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tenants import repo

    async def work(pool: asyncpg.Pool) -> int:
        rows = await repo.list_tenants(pool)
        for r in rows:
            print(
                f"{r['name']:<24} {r['id']}  {r['active_keys']} active keys  "
                f"created {r['created_at']:%Y-%m-%d %H:%M}"
            )
        if not rows:
            print("no tenants")
        return EXIT_OK

    return run(settings, work)


def use_dev_services(settings: Settings) -> None:
    """Take the URLs a `make run` beside us wrote, remembering which (for error messages)."""
    _DEV_TAKEN.clear()
    _DEV_TAKEN.update(devstate.use_dev_services(settings))


def add_commands(sub: Any, tenants: Any) -> None:
    """Register the commands above on the `trunkline` parser (and `tenants list`)."""
    p = sub.add_parser(
        "status",
        help="Readiness, pools, queues, dead letters, breakers, Asterisk, event log.",
        description="What an operator looks at first, read from PostgreSQL and Redis (and the "
        "local daemon's /readyz and /metrics for what only a process knows).",
    )
    p.add_argument("--json", action="store_true", help="the figures as JSON")
    p.add_argument(
        "--check", action="store_true", help="exit 1 unless the local daemon answers ready"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "tail",
        help="Follow the event log (one JSON line per event).",
        description="Print events as they are sequenced, in the order SSE clients get them, "
        "one JSON object per line with the tenant's name; Ctrl-C stops.",
    )
    p.add_argument("--types", help="comma-separated patterns: message.delivered, call.*, *")
    p.add_argument("--tenant", help="only this tenant's events")
    p.add_argument(
        "--after",
        type=int,
        metavar="SEQ",
        help="start after this event id (default: the head, so only new events)",
    )
    p.set_defaults(func=cmd_tail)

    dlq = sub.add_parser(
        "dlq", help="Dead letters: jobs that spent their retry budget.", description="Dead letters."
    )
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p = dsub.add_parser("list", help="List dead letters, newest first (every tenant).")
    p.add_argument("--queue", help="only this queue (dispatch, calls, webhook, ...)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_dlq_list)
    p = dsub.add_parser(
        "replay",
        help="Put a dead letter back in its queue with a fresh retry budget.",
        description="Put a dead letter back in its queue with a fresh retry budget.",
    )
    p.add_argument("job_id", type=int, help="the dead letter's id (from dlq list)")
    p.set_defaults(func=cmd_dlq_replay)

    p = tenants.add_parser("list", help="List tenants.", description="List tenants.")
    p.set_defaults(func=cmd_tenants_list)
