"""Process lifecycle: SIGTERM drains in-flight work; the supervisor restarts crashed tasks."""

import asyncio
import signal
import sys
import time

import aiohttp

from gateway.supervisor import Supervisor
from tests.helpers import wait_ready


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
        assert '"event": "shutting down"' in stderr and '"event": "stopped"' in stderr
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
