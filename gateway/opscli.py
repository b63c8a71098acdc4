"""The operator's commands: `trunkline status`, `tail`, `dlq list|replay`, `keys list`,
`tenants list`.

They read PostgreSQL and Redis directly — the truth every daemon process shares — rather
than asking one daemon's API, so they work with the API role down and see every tenant. What
only a process knows (its AMI sessions, its SSE clients) comes from the local daemon's
/metrics when one answers. Next to a `make run` they find its private servers through
``.trunkline/services.json`` (gateway/devstate.py).

Each command imports the modules it reads with when it runs: the parser is built for every
`trunkline` invocation (gateway/cli.py), and most invocations run one command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.ops.reach import run
from gateway.settings import Settings

if TYPE_CHECKING:
    import asyncpg

    from gateway.events.model import TypeFilter

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.ops.status import gather_status, print_status

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
    from gateway.events.model import COLUMNS, public_event
    from gateway.ops import overview

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
    from gateway.events.model import TypeFilter, validate_patterns
    from gateway.ops import overview

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
        after = args.after if args.after is not None else (await overview.event_log(pool)).head
        # on stderr, so stdout stays one JSON event a line: where it starts, once it listens
        print(f"following the event log after id {after}", file=sys.stderr, flush=True)
        await tail_events(pool, types=types, tenant_id=tenant_id, after=after, emit=emit)
        return EXIT_OK

    return run(settings, work)


# --- dlq, keys, tenants ---------------------------------------------------------------------


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import queue

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
    from gateway import queue

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
                f"created {r['created_at']:%Y-%m-%d %H:%M}  "
                f"stripe {r['stripe_customer_id'] or '-'}"
            )
        if not rows:
            print("no tenants")
        return EXIT_OK

    return run(settings, work)


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
