"""The guardrail chain against a big DNC list, beside PostgreSQL's own floors, in one run.

1. Import: a generated file of N numbers (unsorted) goes through `trunkline dnc import`'s
   code (each line checked and normalised on its way into COPY; a first registry list of this
   size is copied straight into the new registry partition, indexed in one pass and swapped
   in, in one transaction), beside the floor: raw COPY of the same file into an unindexed
   one-column table plus CREATE UNIQUE INDEX on it.
2. Checks: the full chain (suppression → content → calling hours → rate limits: one indexed
   query + one Lua call, for a number NOT on the list so every check runs) and the deny path
   (a listed number), beside the floor: a bare unique-index lookup on the same table, from the
   same client. Latency at concurrency 1; throughput at `--concurrency`.

    python -m bench.guardrails [--numbers 10000000] [--duration 5] [--concurrency 16]
                               [--keep DIR]

`--keep DIR` (to iterate on the checks): the private PostgreSQL and Redis keep their data in
DIR (a short path: Redis' socket lives there) and stay there after the run; a later run with
the same DIR and --numbers skips generating and importing the list (its figures are then not
printed) and measures the checks on the list imported before. Remove DIR when done. A run
migrates the kept database to its own build, so an older checkout (an A/B baseline) then
refuses it ("database has migration ... that this build does not ship"): give each its own DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.harness import Result, report, run_load
from bench.services import bench_services
from gateway import db
from gateway.core.actions import OutboundAction
from gateway.core.ids import new_id
from gateway.dnc.importer import import_file
from gateway.redis import create_redis
from gateway.settings import load_settings
from guardrails.calling_hours import resolve_recipient
from guardrails.chain import GuardrailChain
from guardrails.checks import build_checks
from guardrails.policy import GuardrailPolicy

OPEN = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # a Tuesday, noon in New York
PER_NPA = 8_000_000  # exchanges 200-999 x 10,000 lines
IMPORTED_MARK = "bench_guardrails_imported"  # (numbers): a kept database's list is complete


def listed_number(i: int) -> str:
    npa, rest = divmod(i, PER_NPA)
    exchange, line = divmod(rest, 10_000)
    return f"+1{201 + npa}{200 + exchange}{line:04d}"


def generate(path: Path, n: int) -> None:
    """N distinct valid NANP numbers in a scrambled order (a permutation of 0..N-1)."""
    step = 7_654_321
    while _gcd(step, n) != 1:
        step += 2
    with path.open("w") as fh:
        for start in range(0, n, 100_000):
            fh.write(
                "".join(
                    listed_number((i * step) % n) + "\n"
                    for i in range(start, min(n, start + 100_000))
                )
            )


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


async def timed(conn: asyncpg.Connection, sql: str, *args) -> float:
    t0 = time.perf_counter()
    await conn.execute(sql, *args)
    return time.perf_counter() - t0


async def import_list(pool: asyncpg.Pool, path: Path, args: argparse.Namespace) -> dict:
    """The import phase: the floor (raw COPY + CREATE UNIQUE INDEX), then the real importer.
    Returns its results and figures for the report."""
    if not os.environ.get("TRUNKLINE_DATABASE__URL"):
        # The private server has PostgreSQL's stock 1 GB max_wal_size; a bulk load of this
        # size would spend its time in forced checkpoints. Tuned as a DBA would (both the
        # floor and the import run with it). A configured server is left as it is.
        await pool.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
        await pool.execute("SELECT pg_reload_conf()")
    async with pool.acquire() as conn:
        await conn.execute('CREATE TABLE dnc_raw (number text COLLATE "C")')  # as dnc_entries
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        await conn.copy_to_table("dnc_raw", source=str(path), columns=["number"])
        copy_s = time.perf_counter() - t0
        await conn.execute("SET maintenance_work_mem = '256MB'")
        index_s = await timed(conn, "CREATE UNIQUE INDEX dnc_raw_number ON dnc_raw (number)")
        await conn.execute("DROP TABLE dnc_raw")
        await conn.execute("CHECKPOINT")
    raw_s = copy_s + index_s
    print(f"raw COPY {copy_s:.1f} s + CREATE INDEX {index_s:.1f} s", flush=True)
    imported = await import_file(pool, path, source="national_registry")
    assert imported.inserted == args.numbers, imported
    how = "into the new partition" if imported.direct else "to staging"
    print(
        f"dnc import {imported.seconds:.1f} s (read+normalise+COPY {how} "
        f"{imported.copy_seconds:.1f} s, then insert+index+swap "
        f"{imported.seconds - imported.copy_seconds:.1f} s)",
        flush=True,
    )
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE dnc_entries")
        await conn.execute(f"CREATE TABLE {IMPORTED_MARK} (numbers bigint NOT NULL)")
        await conn.execute(f"INSERT INTO {IMPORTED_MARK} VALUES ($1)", args.numbers)
    return {
        "results": [
            Result("raw COPY + CREATE UNIQUE INDEX", args.numbers, raw_s),
            Result("trunkline dnc import (COPY+validate+INSERT)", args.numbers, imported.seconds),
        ],
        "figures": {
            "import_numbers_per_s": round(imported.rate),
            "raw_copy_plus_index_numbers_per_s": round(args.numbers / raw_s),
            "import_vs_raw": round(imported.rate / (args.numbers / raw_s), 3),
            "import_direct": imported.direct,
            "import_copy_s": round(imported.copy_seconds, 2),
            "import_apply_s": round(imported.seconds - imported.copy_seconds, 2),
            "raw_copy_s": round(copy_s, 2),
            "raw_index_s": round(index_s, 2),
        },
    }


async def imported_before(pool: asyncpg.Pool, numbers: int) -> bool:
    """Whether a kept database (--keep) already holds the list of this size."""
    found = await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", IMPORTED_MARK)
    return bool(found) and await pool.fetchval(f"SELECT numbers FROM {IMPORTED_MARK}") == numbers


async def run(url: str, redis_url: str, path: Path, args: argparse.Namespace) -> None:
    pool = await db.create_pool(
        url, min_size=2, max_size=args.concurrency + 2, command_timeout=3600
    )
    try:
        if await imported_before(pool, args.numbers):
            print(f"reusing the {args.numbers:,}-number list imported before (--keep)")
            phase: dict = {"results": [], "figures": {"import_reused": True}}
        else:
            await asyncio.to_thread(generate_timed, path, args.numbers)
            phase = await import_list(pool, path, args)
        wal = await pool.fetchval("SHOW max_wal_size")
        size = await pool.fetchval(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) "
            "FROM pg_inherits WHERE inhparent = 'dnc_entries'::regclass"
        )

        # ---- checks --------------------------------------------------------------------------
        settings = load_settings(
            database={"url": url},
            redis={"url": redis_url},
            guardrails={
                "rate_limits": {
                    "tenant": {"rate": 1e9, "burst": 1_000_000_000},
                    "api_key": {"rate": 1e9, "burst": 1_000_000_000},
                    "destination": {"rate": 1e9, "burst": 1_000_000_000},
                    "sender": {"rate": 1e9, "burst": 1_000_000_000},
                    "provider_cps": {"sandbox": 1e9},
                }
            },
        )
        redis = create_redis(redis_url, max_connections=args.concurrency * 2 + 8)
        policy = GuardrailPolicy.from_settings(settings)
        chain = GuardrailChain(build_checks(policy, pool, redis), clock=lambda: OPEN, policy=policy)
        tenant_id = await pool.fetchval(  # (a kept database has it from an earlier run)
            "INSERT INTO tenants (id, name) VALUES ($1, 'bench') "
            "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
            new_id(),
        )
        rng = random.Random(7)
        # Destinations not on the list, seen before by this process: number parsing is cached
        # (calling_hours._number_facts), as it is for the dispatch-time re-check of every
        # message. The "first sight" row pays the parse (~0.4 ms) on every check.
        misses = [f"+1212{rng.randrange(2_000_000, 9_999_999)}" for _ in range(5_000)]
        for number in misses:
            resolve_recipient(number, rules=policy.rules)
        fresh = iter(f"+1213{n:07d}" for n in rng.sample(range(2_000_000, 9_999_999), 1_000_000))
        hits = [listed_number(rng.randrange(args.numbers)) for _ in range(50_000)]
        counter = {"i": 0}

        def pick(numbers: list[str]) -> str:
            counter["i"] += 1
            return numbers[counter["i"] % len(numbers)]

        def action(to: str) -> OutboundAction:
            return OutboundAction(
                tenant_id=tenant_id,
                subject=str(new_id()),
                channel="sms",
                to=to,
                from_="+12125550100",
                purpose="marketing",
                trace_id="bench",
                body="Fall sale: 20% off everything this week. Reply STOP to opt out.",
                key_id="benchkey00000000",
            )

        lookup_sql = "SELECT number FROM dnc_entries WHERE number = $1 LIMIT 1"

        async def floor_miss() -> None:
            await pool.fetchval(lookup_sql, pick(misses))

        async def floor_hit() -> None:
            assert await pool.fetchval(lookup_sql, pick(hits)) is not None

        async def chain_allow() -> None:
            decision = await chain.evaluate(action(pick(misses)), stage="accept")
            assert decision.allowed, decision.verdict

        async def chain_cold() -> None:
            decision = await chain.evaluate(action(next(fresh)), stage="accept")
            assert decision.allowed, decision.verdict

        async def chain_deny() -> None:
            decision = await chain.evaluate(action(pick(hits)), stage="accept")
            assert not decision.allowed

        # The ratio the aim is about, measured paired: one bare lookup and one chain check in
        # turn, so both see the same machine (other load on a shared host moves both alike).
        paired_floor, paired_chain = (
            Result("paired: bare lookup", 0, 0),
            Result("paired: chain", 0, 0),
        )
        for _ in range(1000):  # warm-up
            await floor_miss()
            await chain_allow()
        started = time.perf_counter()
        while time.perf_counter() < started + args.duration:
            t0 = time.perf_counter()
            await floor_miss()
            t1 = time.perf_counter()
            await chain_allow()
            t2 = time.perf_counter()
            paired_floor.latencies_ms.append((t1 - t0) * 1000)
            paired_chain.latencies_ms.append((t2 - t1) * 1000)
        for r in (paired_floor, paired_chain):
            r.ops, r.seconds = len(r.latencies_ms), time.perf_counter() - started

        results: list[Result] = [*phase["results"], paired_floor, paired_chain]
        for name, op in (
            ("floor: bare index lookup (not listed)", floor_miss),
            ("floor: bare index lookup (listed)", floor_hit),
            ("chain: allow, all 4 checks (not listed)", chain_allow),
            ("chain: allow, first sight of the number", chain_cold),
            ("chain: deny dnc_listed (listed)", chain_deny),
        ):
            results.append(await run_load(f"{name} c=1", op, concurrency=1, duration=args.duration))
        for name, op in (
            ("floor: bare index lookup (not listed)", floor_miss),
            ("chain: allow, all 4 checks (not listed)", chain_allow),
        ):
            results.append(
                await run_load(
                    f"{name} c={args.concurrency}",
                    op,
                    concurrency=args.concurrency,
                    duration=args.duration,
                )
            )
        await chain.aclose()
        await redis.aclose()
    finally:
        await pool.close()

    by_name = {r.name: r for r in results}
    floor = by_name["floor: bare index lookup (not listed) c=1"]
    full = by_name["chain: allow, all 4 checks (not listed) c=1"]
    floor_n = by_name[f"floor: bare index lookup (not listed) c={args.concurrency}"]
    full_n = by_name[f"chain: allow, all 4 checks (not listed) c={args.concurrency}"]
    report(
        f"Guardrails: chain vs bare lookup on a {args.numbers:,}-number DNC list; import vs raw COPY",
        results,
        dnc_rows=args.numbers,
        dnc_table_size=size,
        **phase["figures"],
        chain_p50_vs_floor_p50=round((full.pct(50) or 0) / (floor.pct(50) or 1), 2),
        paired_chain_p50_vs_floor_p50=round(
            (paired_chain.pct(50) or 0) / (paired_floor.pct(50) or 1), 2
        ),
        chain_checks_per_s=round(full_n.rate),
        floor_lookups_per_s=round(floor_n.rate),
        cpu_count=os.cpu_count(),
        max_wal_size=wal,
    )


def generate_timed(path: Path, n: int) -> None:
    t0 = time.perf_counter()
    generate(path, n)
    print(
        f"generated {n:,} numbers ({path.stat().st_size / 1e6:.0f} MB) "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=10_000_000, help="DNC list size")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the private servers' data in DIR and reuse an earlier run's import there",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tl-bench-dnc-"))
    path = workdir / "numbers.txt"
    # One database per list size, so a kept directory can hold several.
    database = "trunkline_bench_guardrails" + (f"_{args.numbers}" if args.keep else "")
    try:
        with bench_services(database, keep=args.keep) as services:
            asyncio.run(run(services.database_url, services.redis_url, path, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
