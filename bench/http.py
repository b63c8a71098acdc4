"""Authenticated GET /v1/whoami requests/s and latency, beside a bare aiohttp handler.

Both servers run as separate processes (one core for the server, one for this
load generator) and are measured by the same client in the same run, so the
ratio shows what auth + middleware + logging cost. On a shared machine the rates
swing with the neighbours' load; each server's own CPU time per request (from
/proc) does not, so `cpu_ratio_vs_bare` (bare µs per request ÷ ours) is printed too.

    python -m bench.http [--concurrency 32] [--duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

from bench.harness import Result, cpu_seconds, report, run_load
from bench.services import bench_services, daemon_env, free_port, spawn, wait_http
from gateway import db
from gateway.tenants.service import create_key, create_tenant


async def measure(
    name: str, url: str, headers: dict[str, str], concurrency: int, duration: float, pid: int
) -> Result:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        served = 0

        async def op() -> None:
            nonlocal served
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url} answered {resp.status}")
            served += 1

        cpu0, served0 = cpu_seconds(pid), served
        result = await run_load(name, op, concurrency=concurrency, duration=duration)
        cpu, requests = cpu_seconds(pid) - cpu0, served - served0
        result.extra["server_cpu_us_per_request"] = round(cpu / requests * 1e6, 1)
        return result


async def provision(database_url: str) -> tuple[str, str]:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        await create_tenant(pool, "bench")
        issued = await create_key(pool, "bench")
    finally:
        await pool.close()
    return issued.token, issued.key_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()

    with bench_services() as services:
        token, _ = asyncio.run(provision(services.database_url))
        daemon_port, bare_port = free_port(), free_port()
        daemon = spawn(
            ["-m", "gateway.cli", "run", "--role", "api"], daemon_env(services, daemon_port)
        )
        try:
            wait_http(f"http://127.0.0.1:{daemon_port}/readyz")

            async def whoami_body() -> str:
                async with aiohttp.ClientSession() as s:
                    async with s.get(
                        f"http://127.0.0.1:{daemon_port}/v1/whoami",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as r:
                        return json.dumps(await r.json())

            body = asyncio.run(whoami_body())
            bare = spawn(
                ["-m", "bench.bare_whoami", str(bare_port), body], daemon_env(services, bare_port)
            )
            try:
                wait_http(f"http://127.0.0.1:{bare_port}/readyz")

                async def run() -> list[Result]:
                    auth = {"Authorization": f"Bearer {token}"}
                    floor = await measure(
                        "bare aiohttp handler",
                        f"http://127.0.0.1:{bare_port}/v1/whoami",
                        {},
                        args.concurrency,
                        args.duration,
                        bare.pid,
                    )
                    real = await measure(
                        "GET /v1/whoami (auth+middleware)",
                        f"http://127.0.0.1:{daemon_port}/v1/whoami",
                        auth,
                        args.concurrency,
                        args.duration,
                        daemon.pid,
                    )
                    return [floor, real]

                floor, real = asyncio.run(run())
            finally:
                bare.terminate()
                bare.wait(10)
        finally:
            daemon.terminate()
            daemon.wait(30)
    report(
        f"HTTP: authenticated whoami vs bare handler (concurrency {args.concurrency}, {args.duration:.0f}s)",
        [floor, real],
        ratio_vs_bare=round(real.rate / floor.rate, 3) if floor.rate else None,
        cpu_ratio_vs_bare=round(
            floor.extra["server_cpu_us_per_request"] / real.extra["server_cpu_us_per_request"], 3
        ),
        server_cpu_us_per_request={
            "bare": floor.extra["server_cpu_us_per_request"],
            "whoami": real.extra["server_cpu_us_per_request"],
        },
    )


if __name__ == "__main__":
    main()
