"""Process lifecycle: SIGTERM drains in-flight work; the supervisor restarts crashed tasks."""

import asyncio
import contextlib
import json
import signal
import sys
import time

import aiohttp

from gateway.supervisor import Supervisor
from tests.helpers import wait_ready


def log_events(text: str) -> set[str]:
    """The `event` of each JSON log line in `text` (however the renderer spaces them)."""
    events = set()
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                events.add(record["event"])
    return events


async def test_sigterm_during_a_slow_request_lets_it_finish_and_exits_0(daemon_env):
    env = daemon_env | {"TRUNKLINE_HTTP__SHUTDOWN_TIMEOUT": "10"}
    base = f"http://127.0.0.1:{env['TRUNKLINE_HTTP__PORT']}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.foundation.slow_app",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_ready(base)
        async with aiohttp.ClientSession() as session:
            slow = asyncio.create_task(session.get(f"{base}/test/slow?s=1.5"))
            await asyncio.sleep(0.3)  # the request is in flight
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(slow, 10)
            assert resp.status == 200
            assert (await resp.json()) == {"finished": True}
            # New connections are refused while draining or after exit.
            try:
                await session.get(f"{base}/healthz")
                refused = False
            except aiohttp.ClientConnectionError:
                refused = True
            assert refused
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
        assert time.monotonic() - sent < 10
        stderr = (await proc.stderr.read()).decode()
        assert {"shutting down", "stopped"} <= log_events(stderr)
        assert "Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_supervisor_restarts_a_crashed_task_and_stops_on_time():
    runs = 0
    done = asyncio.Event()

    async def flaky(stopping: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        done.set()
        await stopping.wait()

    async def stubborn(stopping: asyncio.Event) -> None:
        await asyncio.sleep(3600)  # ignores `stopping`: must be cancelled at the deadline

    sup = Supervisor(backoff_initial=0.01, backoff_max=0.05)
    sup.add("flaky", flaky)
    sup.add("stubborn", stubborn)
    sup.start()
    await asyncio.wait_for(done.wait(), 5)
    assert sup.restarts == {"flaky": 2}
    started = time.monotonic()
    await sup.stop(deadline=0.2)
    assert time.monotonic() - started < 2


async def test_two_api_processes_share_a_port_with_reuse_port(daemon_env):
    env = daemon_env | {"TRUNKLINE_HTTP__REUSE_PORT": "true"}
    base = f"http://127.0.0.1:{env['TRUNKLINE_HTTP__PORT']}"
    procs = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway.cli", "run", "--role", "api"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]

    async def listening(proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            assert line, "the process exited instead of binding the shared port"
            if "listening" in log_events(line.decode()):
                return

    try:
        await asyncio.wait_for(asyncio.gather(*(listening(p) for p in procs)), 60)
        await wait_ready(base)
        procs[0].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(procs[0].wait(), 30) == 0
        await wait_ready(base, timeout=10)  # the other one still serves the port
        assert procs[1].returncode is None
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def test_supervisor_backoff_starts_over_after_a_healthy_run():
    """Issue 10 item 8: short outages must not leave a task restarting ever more slowly."""
    gaps: list[float] = []
    crashed_at = 0.0
    runs = 0
    done = asyncio.Event()

    async def blippy(stopping: asyncio.Event) -> None:
        nonlocal runs, crashed_at
        if crashed_at:
            gaps.append(time.monotonic() - crashed_at)
        runs += 1
        if runs == 6:
            await asyncio.sleep(0.3)  # a healthy run, longer than healthy_after
        elif runs == 7:
            done.set()
            await stopping.wait()
            return
        crashed_at = time.monotonic()
        raise ConnectionError("redis blip")

    sup = Supervisor(backoff_initial=0.02, backoff_max=5.0, healthy_after=0.2)
    sup.add("events", blippy)
    sup.start()
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await sup.stop(deadline=1)
    # Five quick crashes doubled the backoff: 0.02 → 0.32 (± 20 %); without the reset the
    # sixth crash, after a healthy run, would wait 0.64 ± 20 %. With it, the initial 0.02.
    assert gaps[4] >= 0.32 * 0.8
    assert sup.last_wait["events"] <= 0.02 * 1.2
    # and that wait is what happened: below the shortest no-reset wait (0.64 - 20 %), with
    # room for a loaded machine's scheduling (0.3 failed at 0.37 s under load)
    assert gaps[5] < 0.64 * 0.8


async def test_a_task_stopped_by_an_outage_restarts_when_it_ends_without_a_traceback():
    """Issue 10 items 4 and 8: our outage is no crash: no traceback per restart, and the
    task is back as soon as the dependency is, not after its (here 3 s) backoff."""
    from structlog.testing import capture_logs

    from gateway.outage import OutageMonitor
    from gateway.redis import create_redis
    from tests.helpers import free_port

    healthy = asyncio.Event()
    back = asyncio.Event()

    async def probe() -> None:
        if not healthy.is_set():
            raise ConnectionRefusedError("still down")

    monitor = OutageMonitor({"redis": probe}, probe_interval=0.02)
    unreachable = create_redis(f"redis://127.0.0.1:{free_port()}")

    async def listener(stopping: asyncio.Event) -> None:
        if not healthy.is_set():
            await unreachable.ping()  # a real redis-py ConnectionError
        back.set()
        await stopping.wait()

    sup = Supervisor(backoff_initial=3.0, backoff_max=30.0, outages=monitor)
    sup.add("listener", listener)
    try:
        with capture_logs() as logs:
            sup.start()
            deadline = time.monotonic() + 5
            while not monitor.is_down("redis"):
                assert time.monotonic() < deadline, "the outage was never confirmed"
                await asyncio.sleep(0.01)
            healthy.set()
            started = time.monotonic()
            await asyncio.wait_for(back.wait(), 5)
            assert time.monotonic() - started < 1.5  # not the 3 s (± 20 %) backoff
    finally:
        await sup.stop(deadline=1)
        await monitor.aclose()
        await unreachable.aclose()
    assert sup.restarts == {"listener": 1}
    assert [e for e in logs if e.get("exc_info") or e["event"] == "task crashed; restarting"] == []
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "redis unavailable",
        "redis available again",
    ]
