"""Messages delivered per second by one worker process (accepted → delivered on the sandbox).

A backlog of `--messages` is accepted through the HTTP API first (accepted/s printed), with
no worker running; then the API stops and one worker process with the default settings
(`messaging.dispatch_concurrency`) dispatches it: the full dispatch-stage guardrail chain, the
attempt row before the send, the sandbox provider, its receipts (sent, delivered) applied as
they come. Delivered/s counts from the first delivered message to the last, so the worker's
start-up is not in the figure.

Beside it, in the same run on the same servers: pgbench's single-row durable INSERT
transactions (-c 8; the floor `bench.accept` uses), and with `--baseline TREE` the same
backlog dispatched by the worker of another checkout (e.g. `git worktree add /tmp/base main`),
so a shared, busy machine still gives a meaningful ratio.

    python -m bench.dispatch [--messages 5000] [--baseline /tmp/base] [--profile out.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.accept import _AREA_CODES, pgbench_floor, provision
from bench.harness import Result, report
from bench.services import bench_services, daemon_env, free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
FLOOR_AIM = 1000.0  # issue 14: ≥ 1,000 delivered/s with the default worker count


def _bench_env(url: str, redis_url: str, port: int, tree: Path) -> dict[str, str]:
    from bench.services import BenchServices

    env = daemon_env(
        BenchServices(url, redis_url),
        port,
        TRUNKLINE_PROVIDERS__SANDBOX__RECEIPT_DELAY="0",
        # The full chain runs; the limits are raised so they measure the path, not throttle it.
        TRUNKLINE_GUARDRAILS__POLICY__EXEMPT_TRANSACTIONAL_FROM_CALLING_HOURS="true",
        TRUNKLINE_GUARDRAILS__RATE_LIMITS__TENANT__RATE="1000000",
        TRUNKLINE_GUARDRAILS__RATE_LIMITS__TENANT__BURST="1000000",
        TRUNKLINE_GUARDRAILS__RATE_LIMITS__API_KEY__RATE="1000000",
        TRUNKLINE_GUARDRAILS__RATE_LIMITS__API_KEY__BURST="1000000",
        TRUNKLINE_GUARDRAILS__RATE_LIMITS__PROVIDER_CPS='{"sandbox": 1000000}',
    )
    env["PYTHONPATH"] = str(tree)
    return env


async def accept_load_n(base: str, token: str, concurrency: int, total: int) -> Result:
    """Accept exactly `total` messages through POST /v1/messages from `concurrency` clients."""
    headers = {"Authorization": f"Bearer {token}"}
    left = total
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, base_url=base) as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                # distinct New York recipients: the real per-destination limit stays on
                to = f"+1{random.choice(_AREA_CODES)}555{random.randrange(10_000):04d}"
                body = {"to": to, "body": "Your code is 1234", "purpose": "transactional"}
                key = {"Idempotency-Key": uuid.uuid4().hex}
                async with session.post("/v1/messages", json=body, headers=headers | key) as r:
                    await r.read()
                    if r.status not in (201, 202):  # created (202 before 201s came)
                        raise RuntimeError(f"accept answered {r.status}: {await r.text()}")

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return Result("POST /v1/messages (backlog)", total, time.perf_counter() - start)


def _spawn(tree: Path, role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The daemon of `tree` in `role`; its log goes to a file named on failure."""
    log = tempfile.NamedTemporaryFile(prefix=f"bench-dispatch-{role}-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--role", role],
        env=env,
        cwd=tree,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


async def _fresh_database(url: str, name: str, tree: Path) -> str:
    parts = urlsplit(url)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    fresh = urlunsplit(parts._replace(path="/" + name))
    # the tree's own migrations: a baseline checkout refuses a database migrated further
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "migrate",
        env=env | {"PYTHONPATH": str(tree), "TRUNKLINE_DATABASE__URL": fresh},
        cwd=tree,
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await asyncio.wait_for(migrate.wait(), 120) != 0:
        raise RuntimeError(f"migrating {name} with {tree} failed")
    return fresh


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drain(url: str, total: int, timeout: float, pid: int) -> Result:
    """Delivered per second, from the first delivered message to the last; and the worker's
    CPU time per delivered message over the same span (a figure a busy machine bends less)."""
    conn = await asyncpg.connect(url)
    query = "SELECT count(*) FILTER (WHERE status = 'delivered') FROM messages"
    try:
        deadline = time.perf_counter() + timeout
        first = start = None
        cpu = 0.0
        done = 0
        while time.perf_counter() < deadline:
            done = await conn.fetchval(query)
            now = time.perf_counter()
            if first is None and done:
                first, start, cpu = done, now, _cpu_seconds(pid)
            if done >= total:
                break
            await asyncio.sleep(0.02)
        elapsed = (time.perf_counter() - start) if start is not None else timeout
        counted = done - (first or 0)
        used = _cpu_seconds(pid) - cpu if start is not None else 0.0
        return Result(
            "accepted -> delivered (sandbox)",
            counted,
            elapsed,
            extra={
                "delivered": done,
                "worker_cpu_ms_per_message": round(used * 1000 / counted, 3) if counted else None,
            },
        )
    finally:
        await conn.close()


def run_tree(
    label: str,
    tree: Path,
    base_url: str,
    redis_url: str,
    messages: int,
    concurrency: int,
    timeout: float,
    profile: str | None,
    extra: dict[str, str],
) -> tuple[Result, Result]:
    url = asyncio.run(_fresh_database(base_url, f"trunkline_bench_dispatch_{label}", tree))
    token = asyncio.run(provision(url))
    port = free_port()
    env = _bench_env(url, redis_url, port, tree) | extra
    api = _spawn(tree, "api", env)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)  # a busy machine
        except TimeoutError:
            print(Path(api.log_path).read_text()[-3000:])  # type: ignore[attr-defined]
            raise
        accepted = asyncio.run(
            accept_load_n(f"http://127.0.0.1:{port}", token, concurrency, messages)
        )
    finally:
        api.terminate()
        api.wait(30)
    worker = _spawn(tree, "worker", env)
    spy = None
    if profile:
        time.sleep(1.0)  # py-spy must find the interpreter loaded
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(worker.pid),
                "--format",
                "raw",
                "--output",
                profile,
                "--rate",
                "200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        delivered = asyncio.run(_drain(url, messages, timeout, worker.pid))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(60)
        worker.terminate()
        worker.wait(30)
    accepted.name = f"[{label}] {accepted.name}"
    delivered.name = f"[{label}] {delivered.name}"
    return accepted, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64, help="API clients for the backlog")
    parser.add_argument("--floor-seconds", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--baseline", type=Path, help="another checkout whose worker to compare")
    parser.add_argument("--profile", help="py-spy raw (collapsed) profile of this tree's worker")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TRUNKLINE_X=Y",
        help="extra daemon setting for both trees (the figure is for defaults without it)",
    )
    args = parser.parse_args()

    results: list[Result] = []
    figures: dict[str, object] = {
        "messages": args.messages,
        "aim_delivered_per_s": FLOOR_AIM,
        "settings": args.set or "defaults",
    }
    with bench_services() as services:
        floor = pgbench_floor(services.database_url, args.floor_seconds)
        results.append(
            Result(
                "pgbench -c 8 single-row INSERT (floor)",
                int((floor or 0) * args.floor_seconds),
                args.floor_seconds,
            )
        )
        trees = [("this", ROOT, args.profile)]
        if args.baseline:
            trees.append(("baseline", args.baseline.resolve(), None))
        delivered: dict[str, Result] = {}
        for label, tree, profile in trees:
            accepted, drained = run_tree(
                label,
                tree,
                services.database_url,
                services.redis_url,
                args.messages,
                args.concurrency,
                args.drain_timeout,
                profile,
                dict(item.split("=", 1) for item in args.set),
            )
            results += [accepted, drained]
            delivered[label] = drained
    this = delivered["this"].rate
    for label, result in delivered.items():
        figures[f"{label}_worker_cpu_ms_per_message"] = result.extra["worker_cpu_ms_per_message"]
    figures["delivered_per_s"] = round(this, 1)
    figures["delivered_vs_pgbench_floor"] = round(this / floor, 3) if floor else None
    if "baseline" in delivered and delivered["baseline"].rate:
        figures["delivered_vs_baseline"] = round(this / delivered["baseline"].rate, 2)
    figures["aim_met"] = this >= FLOOR_AIM
    report(
        "Dispatch path: accepted -> delivered/s, one worker, default settings", results, **figures
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
