"""Shared benchmark harness: warm-up, fixed duration, concurrency, latency percentiles.

Every benchmark prints a human table and one JSON line (prefixed `BENCH `) so
figures can be collected by a script. A figure is only meaningful beside its
floor measured in the same run, so `report` takes several named results.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc).

    On a shared machine rates swing with the neighbours' load; a server's own CPU time per
    request does not, so benchmarks print it beside their rates."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a server and its children, live and reaped (PostgreSQL's backends are
    children of the postmaster): where a figure's CPU goes besides the daemon's own."""
    clk = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry.name}/stat").read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(entry.name) == pid:
            total += sum(int(f) for f in fields[11:15]) / clk  # its own, and reaped children
        elif int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / clk
    return total


@dataclass
class Result:
    name: str
    ops: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        data = sorted(self.latencies_ms)
        idx = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[idx]

    def summary(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "rate_per_s": round(self.rate, 1),
        }
        if self.latencies_ms:
            out |= {
                "p50_ms": round(self.pct(50) or 0, 3),
                "p99_ms": round(self.pct(99) or 0, 3),
                "mean_ms": round(statistics.fmean(self.latencies_ms), 3),
            }
        return out | self.extra


async def run_load(
    name: str,
    op: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
) -> Result:
    """Run `op` from `concurrency` workers for `duration` seconds after a warm-up."""
    latencies: list[float] = []
    ops = 0
    measuring = False
    stop_at = 0.0

    async def worker() -> None:
        nonlocal ops
        while True:
            t0 = time.perf_counter()
            if measuring and t0 >= stop_at:
                return
            await op()
            if measuring:
                latencies.append((time.perf_counter() - t0) * 1000)
                ops += 1

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        measuring = True
        start = time.perf_counter()
        stop_at = start + duration
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + 60)
        elapsed = time.perf_counter() - start
    finally:
        for t in tasks:
            t.cancel()
    return Result(name, ops, elapsed, latencies)


def report(title: str, results: list[Result], **figures: Any) -> None:
    """Print a table of results, the named derived figures, and one JSON line."""
    print(f"\n== {title}")
    print(f"{'name':<40} {'ops':>9} {'rate/s':>11} {'p50 ms':>9} {'p99 ms':>9}")
    for r in results:
        s = r.summary()
        p50 = f"{s['p50_ms']:.3f}" if "p50_ms" in s else "-"
        p99 = f"{s['p99_ms']:.3f}" if "p99_ms" in s else "-"
        print(f"{r.name:<40} {r.ops:>9} {r.rate:>11.1f} {p50:>9} {p99:>9}")
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(
        "BENCH "
        + json.dumps({"title": title, "results": [r.summary() for r in results], **figures})
    )


__all__ = ["Result", "asdict", "cpu_seconds", "report", "run_load"]
