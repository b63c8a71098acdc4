"""SSE fan-out: N concurrent clients on loopback while events are committed at R/s.

The daemon runs as separate processes (`--role api` serving the streams, `--role
worker` running the sequencer); a producer process commits one event per
transaction at the target rate, stamping each with its wall-clock time before the
INSERT; the clients are held by the load generator's worker processes (bench/sse_load.py:
raw sockets, kernel receive timestamps). Reported:

- delivered events/s over all clients, and the ratio to what the log holds for their
  tenants in the measured seq window (1.000: every client got every event; clients_short and
  clients_out_of_order count those that did not, or not in order),
- commit-to-client latency p50/p99 at the client's kernel (SO_TIMESTAMPNS), sampled on every
  client; beside it what `--probes` clients that parse every frame at once see, the
  generator's own lag (parse - kernel time) and commit -> Redis bus (the delivery path
  up to the API's hub),
- the API processes' RSS (peak of samples) and CPU (share, and µs per delivered event), and
  the load generator's CPU the same way: what measuring cost,
- the replay rate: events/s one client receives when it resumes from an id far back
  (the log is prefilled with `--prefill` events first).

With `--dashboard`, the dashboard (/dashboard) is open in Debian's headless chromium for the
first tenant throughout (its stream, its panels' polling, its feed), and the report says how
many events it received and whether they were the tenant's log with no gap.

    python -m bench.sse [--clients 1000] [--rate 100] [--duration 10] [--tenants 1]
        [--api-processes 1] [--generator-processes 2] [--drain 0.25] [--dashboard]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import resource
import time
import uuid
from dataclasses import dataclass, field

from bench.harness import Result, report
from bench.services import bench_services, daemon_env, free_port, spawn, wait_http
from bench.sse_load import Generator
from gateway import db
from gateway.core import scopes
from gateway.events import log
from gateway.tenants.service import create_key, create_tenant

_T = re.compile(rb'"t": ?([0-9.]+)')  # live: PostgreSQL's text, '"t": 1.5'


@dataclass
class Client(asyncio.Protocol):
    """The replaying client: one raw socket (HTTP/1.0: the body is the bare event stream)."""

    events: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _tail: bytes = b""
    _headers_done: bool = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._headers_done:
            data = self._tail + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._tail = data
                return
            if not data.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                raise RuntimeError(data[:200].decode(errors="replace"))
            self._headers_done = True
            self.connected.set()
            data = data[end + 4 :]
            self._tail = b""
        # Every frame has exactly one "\nevent: " line; keep a tail for split matches.
        buf = self._tail[-8:] + data
        self.events += buf.count(b"\nevent: ")
        self._tail = buf[-8:] if not buf.endswith(b"\nevent: ") else b""


async def connect(port: int, token: str, last_event_id: int) -> Client:
    loop = asyncio.get_running_loop()
    client = Client()
    await loop.create_connection(lambda: client, "127.0.0.1", port)
    client.transport.write(
        f"GET /v1/events HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: text/event-stream\r\nLast-Event-ID: {last_event_id}\r\n\r\n".encode()
    )
    return client


# --- producer (its own process, so client load cannot slow the commit rate) ------------


def producer(database_url: str, tenants: list[str], rate: float, seconds: float) -> None:
    async def run() -> None:
        pool = await db.create_pool(database_url, min_size=4, max_size=8)
        ids = [uuid.UUID(t) for t in tenants]
        start = time.perf_counter()
        n = 0
        inflight: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO events (tenant_id, type, subject, data) "
                    "VALUES ($1, 'bench.tick', $2, $3)",
                    ids[i % len(ids)],
                    f"tick-{i}",
                    {"t": time.time()},
                )
                await conn.execute("SELECT pg_notify('trunkline_events', '')")

        while (elapsed := time.perf_counter() - start) < seconds:
            while n < int(elapsed * rate) + 1:  # catch up if a sleep overran
                task = asyncio.create_task(one(n))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                n += 1
            await asyncio.sleep(max(0.0005, n / rate - (time.perf_counter() - start)))
        if inflight:
            await asyncio.gather(*inflight)
        await pool.close()

    asyncio.run(run())


# --- setup ------------------------------------------------------------------------------


async def provision(database_url: str, tenants: int, prefill: int) -> tuple[list[str], list[str]]:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    tokens, ids = [], []
    try:
        for i in range(tenants):
            await create_tenant(pool, f"bench{i}")
            tokens.append((await create_key(pool, f"bench{i}", ["events:read"])).token)
            ids.append(
                str(await pool.fetchval("SELECT id FROM tenants WHERE name = $1", f"bench{i}"))
            )
        batch = 5000
        for start in range(0, prefill, batch):
            n = min(batch, prefill - start)
            await pool.execute(
                """
                INSERT INTO events (tenant_id, type, subject, data)
                SELECT $1, 'bench.prefill', 'prefill-' || g, '{"prefill": true}'
                FROM generate_series(1, $2) g
                """,
                uuid.UUID(ids[0]),
                n,
            )
    finally:
        await pool.close()
    return tokens, ids


async def wait_sequenced(database_url: str, timeout: float = 120) -> int:
    conn = await db.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM events WHERE seq IS NULL"):
            if time.monotonic() > deadline:
                raise TimeoutError("events were not sequenced")
            await asyncio.sleep(0.1)
        return await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events")
    finally:
        await conn.close()


# --- the dashboard, open in a real browser while the clients are served -----------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Dashboard:
    playwright: object
    browser: object
    page: object

    async def seen(self) -> list[int]:
        return await self.page.evaluate("window.trunklineDashboard.seenIds")  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.browser.close()  # type: ignore[attr-defined]
        await self.playwright.stop()  # type: ignore[attr-defined]


async def open_dashboard(database_url: str, port: int) -> Dashboard:
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"--dashboard needs {CHROMIUM}: apt-get install -y chromium")
    from playwright.async_api import async_playwright

    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:  # a key with every panel's scope, for the first tenant
        token = (await create_key(pool, "bench0", sorted(scopes.SCOPES))).token
    finally:
        await pool.close()
    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    await page.goto(f"http://127.0.0.1:{port}/dashboard")
    await page.fill("#key", token)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#conn[data-state=live]", timeout=30_000)
    return Dashboard(pw, browser, page)


async def gapless(database_url: str, tenant_id: str, seen: list[int]) -> bool:
    """The ids the page received are exactly the tenant's log between its first and last."""
    if not seen:
        return False
    conn = await db.connect(database_url)
    try:
        log = await conn.fetch(
            "SELECT seq FROM events WHERE tenant_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
            uuid.UUID(tenant_id),
            seen[0],
            seen[-1],
        )
    finally:
        await conn.close()
    return [r["seq"] for r in log] == seen


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the measurement --------------------------------------------------------------------


async def measure_replay(port: int, token: str, expected: int) -> Result:
    client = await connect(port, token, last_event_id=0)
    await asyncio.wait_for(client.connected.wait(), 30)
    started = time.perf_counter()
    while client.events < expected:
        await asyncio.sleep(0.01)
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"replay got {client.events} of {expected}")
    elapsed = time.perf_counter() - started
    client.transport.close()
    return Result("replay from the log (one client)", client.events, elapsed)


async def bus_tap(redis_url: str, stamps: list[float], stop: asyncio.Event) -> None:
    """Commit -> the Redis bus, per event (what reaches every API process's hub)."""
    import redis.asyncio as aioredis

    from gateway.events import bus

    client = aioredis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(bus.PATTERN)
    try:
        while not stop.is_set():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None and (m := _T.search(msg["data"])):
                stamps.append((time.time() - float(m.group(1))) * 1000)
    finally:
        await pubsub.aclose()
        await client.aclose()


def pct(data: list[float], q: float) -> float:
    if not data:
        return 0.0
    data = sorted(data)
    return round(data[min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))], 1)


async def measure_live(
    args, port: int, api_pids: list[int], worker_pid: int, tokens, services, ids
):
    probes = min(args.probes, args.clients)
    t0 = time.perf_counter()
    gen = Generator.start(port, tokens, args.clients, probes, args.generator_processes, args.drain)
    try:
        await asyncio.to_thread(gen.wait_connected, 300)
        connect_s = time.perf_counter() - t0
        rss_idle = sum(rss_mb(p) for p in api_pids)

        total = args.warmup + args.duration
        proc = multiprocessing.get_context("spawn").Process(
            target=producer, args=(services.database_url, ids, args.rate, total)
        )
        proc.start()
        await asyncio.sleep(args.warmup)
        conn = await db.connect(services.database_url)
        try:
            lo = await log.max_seq(conn) + 1
            tap_stop, commit_to_bus = asyncio.Event(), []
            tap = asyncio.create_task(bus_tap(services.redis_url, commit_to_bus, tap_stop))
            gen.measure()
            cpu0, rss_peak = sum(cpu_seconds(p) for p in api_pids), 0.0
            own0, worker0 = cpu_seconds(os.getpid()), cpu_seconds(worker_pid)
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < args.duration:
                rss_peak = max(rss_peak, sum(rss_mb(p) for p in api_pids))
                await asyncio.sleep(min(0.5, args.duration - elapsed))
            gen.measure(start=False)
            hi = await log.max_seq(conn)
            elapsed = time.perf_counter() - start
            cpu = sum(cpu_seconds(p) for p in api_pids) - cpu0
            own = cpu_seconds(os.getpid()) - own0
            worker_cpu = cpu_seconds(worker_pid) - worker0
            tap_stop.set()
            await tap
            await asyncio.to_thread(proc.join)
            await asyncio.sleep(1.0 + 2 * args.drain)  # the window's last events reach everyone
            reports = await asyncio.to_thread(gen.stop, lo, hi)
            per_tenant = dict(
                await conn.fetch(
                    "SELECT tenant_id::text, count(*) FROM events WHERE seq BETWEEN $1 AND $2 "
                    "GROUP BY tenant_id",
                    lo,
                    hi,
                )
            )
        finally:
            await conn.close()
    finally:
        gen.kill()
    counts = [c for r in reports for c in r["counts"]]
    expected = [per_tenant.get(ids[tenant], 0) for tenant, _ in counts]
    delivered = sum(n for _, n in counts)
    gen_cpu = sum(r["cpu_s"] for r in reports) + own
    segments = sum(r["segments"] for r in reports)
    samples = [x for r in reports for x in r["kernel_ms"]]
    return Result(
        f"live: {args.clients} clients x {args.rate:g} ev/s",
        delivered,
        elapsed,
        samples,
        extra={
            "expected": sum(expected),
            "clients_short": sum(1 for (_, n), e in zip(counts, expected, strict=True) if n != e),
            "clients_out_of_order": args.clients - sum(r["ordered"] for r in reports),
            "clients_cut_off": sum(r["closed"] for r in reports),
            "connect_s": round(connect_s, 2),
            "commit_to_bus_p50_ms": pct(commit_to_bus, 50),
            "commit_to_bus_p99_ms": pct(commit_to_bus, 99),
            "probe_parse_p50_ms": pct([x for r in reports for x in r["probe_ms"]], 50),
            "probe_parse_p99_ms": pct([x for r in reports for x in r["probe_ms"]], 99),
            "generator_lag_p50_ms": pct([x for r in reports for x in r["lag_ms"]], 50),
            "generator_lag_p99_ms": pct([x for r in reports for x in r["lag_ms"]], 99),
            "api_rss_mb_idle": round(rss_idle, 1),
            "api_rss_mb_peak": round(rss_peak, 1),
            "api_cpu_share": round(cpu / elapsed, 2),
            "api_cpu_us_per_delivery": round(cpu / max(1, delivered) * 1e6, 2),
            # Under load the hub coalesces more events into each write, so CPU per delivery
            # falls as latency rises; CPU per write (a TCP segment the clients' kernels
            # counted) is the fan-out's own cost.
            "server_writes": segments,
            "api_cpu_us_per_write": round(cpu / max(1, segments) * 1e6, 2),
            "worker_cpu_share": round(worker_cpu / elapsed, 2),
            "load_generator_cpu_share": round(gen_cpu / elapsed, 2),
            "load_generator_cpu_us_per_delivery": round(gen_cpu / max(1, delivered) * 1e6, 2),
            "latency_samples": len(samples),
            "latency_probes": probes,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--api-processes", type=int, default=1, help="API processes sharing the port (reuse_port)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="events committed per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tenants", type=int, default=1, help="clients and events spread over")
    parser.add_argument(
        "--probes", type=int, default=100, help="clients read at once (they measure parse latency)"
    )
    parser.add_argument(
        "--generator-processes", type=int, default=2, help="load generator worker processes"
    )
    parser.add_argument(
        "--drain", type=float, default=0.25, help="seconds between reads of the other clients"
    )
    parser.add_argument("--prefill", type=int, default=100_000, help="events for the replay run")
    parser.add_argument(
        "--flush-interval", type=float, default=None, help="events.sse_flush_interval (s)"
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="keep /dashboard open in headless chromium"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, args.clients * 2 + 1024)), hard)
    )

    with bench_services() as services:
        tokens, ids = asyncio.run(provision(services.database_url, args.tenants, args.prefill))
        port = free_port()
        extra = {}
        if args.flush_interval is not None:
            extra["TRUNKLINE_EVENTS__SSE_FLUSH_INTERVAL"] = str(args.flush_interval)
        if args.api_processes > 1:  # one port, the kernel spreads the clients (SO_REUSEPORT)
            extra["TRUNKLINE_HTTP__REUSE_PORT"] = "true"
        env = daemon_env(services, port, **extra)
        worker = spawn(["-m", "gateway.cli", "run", "--role", "worker"], env)
        apis = [
            spawn(["-m", "gateway.cli", "run", "--role", "api"], env)
            for _ in range(args.api_processes)
        ]
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            asyncio.run(wait_sequenced(services.database_url))

            async def run() -> list[Result]:
                dash = await open_dashboard(services.database_url, port) if args.dashboard else None
                try:
                    replay = await measure_replay(port, tokens[0], args.prefill)
                    live = await measure_live(
                        args, port, [a.pid for a in apis], worker.pid, tokens, services, ids
                    )
                    if dash is not None:
                        seen = await dash.seen()
                        live.extra["dashboard_events_seen"] = len(seen)
                        live.extra["dashboard_gapless"] = await gapless(
                            services.database_url, ids[0], seen
                        )
                finally:
                    if dash is not None:
                        await dash.close()
                return [replay, live]

            replay, live = asyncio.run(run())
        finally:
            for proc in (*apis, worker):
                proc.terminate()
            for proc in (*apis, worker):
                proc.wait(30)
    expected = live.extra.pop("expected")
    report(
        f"SSE: {args.clients} clients, {args.rate:g} events/s, {args.tenants} tenant(s), "
        f"{args.duration:g}s on {os.cpu_count()} cores"
        + (f", {args.api_processes} API processes" if args.api_processes > 1 else "")
        + (", the dashboard open in chromium" if args.dashboard else ""),
        [replay, live],
        delivered_per_s=round(live.rate, 1),
        delivered_ratio=round(live.ops / expected, 3) if expected else None,
        p50_ms=round(live.pct(50) or 0, 1),
        p99_ms=round(live.pct(99) or 0, 1),
        replay_events_per_s=round(replay.rate, 1),
        **live.extra,
        latency="stamped before the INSERT -> bytes in the client's socket (kernel receive "
        "timestamp), every client; probe_parse: -> parsed by a probe read at once",
    )


if __name__ == "__main__":
    main()
