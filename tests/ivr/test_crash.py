"""kill -9 of the worker process driving an IVR call, mid-gather (issue 12).

A real `trunkline run --role worker` subprocess answers an inbound call on the test AMI server
(AsyncAGI, as transcripts 05a/05g) and is killed with SIGKILL while the caller is asked for a
digit. A second worker process — started after the kill, as systemd would start it, so its
AMI connection never saw the call's AsyncAGIStart — finds the call in Redis once the dead
worker's lease lapses and carries the same session on from the same node: the menu asks
again, the caller's digit takes its branch, the call ends normally, and its `ivr` permit is
given back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

from gateway.core.ids import new_id
from ivr import repo
from ivr.flow import Flow
from ivr.leases import LIVE_KEY, RedisCallLease
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim
from tests.ivr.conftest import entered
from tests.ivr.test_asyncagi import PHONE

NUMBER = "+14155550100"
IVR_LEASES = "tl:pool:{default}:ivr:leases"

CONFIG = """
[http]
shutdown_timeout = 3

[providers.voice]
primary = "asterisk:main"

[asterisk.main]
host = "127.0.0.1"
port = {port}
username = "gateway"
secret = "secret"
action_timeout = 2.0
connect_timeout = 1.0
reconnect_backoff_initial = 0.05
reconnect_backoff_max = 0.2
tracker_lease = 3.0

[pools]
sizes = {{ api = 2, campaign = 2, ivr = 2 }}
lease = 3.0
renew_interval = 1.0

[ivr]
lease = 1.0
command_timeout = 5.0
"""


def worker(env: dict[str, str], config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "--config",
                str(config),
                "run",
                "--role",
                "worker",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


async def until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        await asyncio.sleep(0.05)


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def started(log: Path, ami: AMISimServer, logins: int) -> bool:
    text = await asyncio.to_thread(_read, log)
    return "worker started" in text and ami.logins >= logins


async def test_kill_9_of_the_worker_mid_gather(pg_pool, make_key, daemon_env, redis_url, tmp_path):
    await make_key("acme")
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    document = Flow.model_validate(PHONE).model_dump(mode="json", by_alias=True, exclude_none=True)
    async with pg_pool.acquire() as conn:
        await repo.insert_flow(conn, new_id(), tenant_id, "phone", document, "whsec_t")
        await conn.execute(
            "INSERT INTO dids (number, tenant_id, provider, capabilities, ivr_flow)"
            " VALUES ($1, $2, 'asterisk:main', '{voice}', 'phone')",
            NUMBER,
            tenant_id,
        )
    redis = aioredis.Redis.from_url(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    async with AMISimServer() as ami:
        agi = AsyncAgiSim(ami)
        config = tmp_path / "worker.toml"
        config.write_text(CONFIG.format(port=ami.port))
        try:
            first = worker(daemon_env, config, tmp_path / "a.log")
            procs.append(first)
            await until(lambda: started(tmp_path / "a.log", ami, 1), 30, "worker A up")

            hold = asyncio.Event()
            call = agi.inbound_call(NUMBER.lstrip("+"), "15550001111", keys=[hold, "", "1"])
            uniqueid = call.channel.uniqueid

            async def asked() -> bool:
                return any(c.startswith("GET DATA") for c in call.commands)

            await until(asked, 15, "A asks for a digit")
            token = (await redis.get(RedisCallLease.key(uniqueid))).decode()
            assert token.startswith(f"{first.pid}:")  # A drives the call
            listed = await until(
                lambda: _session_listed(redis, uniqueid), 5, "the call's session listed"
            )
            assert await redis.zscore(IVR_LEASES, uniqueid) is not None  # A took the permit

            os.kill(first.pid, signal.SIGKILL)  # mid-gather: no cleanup of any kind
            assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL

            second = worker(daemon_env, config, tmp_path / "b.log")
            procs.append(second)

            async def taken_over() -> bool:
                lease = await redis.get(RedisCallLease.key(uniqueid))
                return lease is not None and lease.decode().startswith(f"{second.pid}:")

            await until(taken_over, 30, "B takes the call over")
            # B asks again; Asterisk runs it after A's GET DATA, which ends unheard
            await until(lambda: _async(len(call.commands) >= 4), 10, "B re-prompts")
            hold.set()

            async def summary():  # type: ignore[no-untyped-def]
                return await pg_pool.fetchrow("SELECT * FROM ivr_sessions")

            row = await until(summary, 15, "the session's summary")
            await until(lambda: _async(call.commands[-1:] == ["HANGUP"]), 5, "the flow hangs up")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                await asyncio.to_thread(proc.wait, 30)

    # The same session, carried on from the node it waited at.
    assert str(row["id"]) == listed
    assert row["end_reason"] == "hangup" and row["steps"] == 3  # started, resumed, the digit
    assert entered(row["transcript"]) == ["greet", "menu", "menu", "thanks"]
    resumed = [e for e in row["transcript"] if "resumed" in e]
    assert len(resumed) == 1 and resumed[0]["node"] == "menu"
    assert resumed[0]["resumed"].startswith(f"{second.pid}-")
    assert call.commands == [
        'EXEC Festival "Thanks for calling Acme."',
        'EXEC Festival "Press 1 for billing."',
        "GET DATA silence/1 5000 1",  # A's, lost with A
        'EXEC Festival "Press 1 for billing."',  # B's re-prompt
        "GET DATA silence/1 5000 1",
        'EXEC Festival "Billing it is."',
        "HANGUP",
    ]
    kinds = [
        r["type"]
        for r in await pg_pool.fetch(
            "SELECT type FROM events WHERE subject = $1 ORDER BY id", str(row["id"])
        )
    ]
    assert kinds.count("ivr.started") == 1 and kinds.count("ivr.resumed") == 1
    assert kinds[-1] == "ivr.ended"
    # The permit A took is back (B gave it back when the call ended), nothing is left over.
    assert await redis.zscore(IVR_LEASES, uniqueid) is None
    assert await redis.hget(LIVE_KEY, uniqueid) is None
    assert await pg_pool.fetchval("SELECT count(*) FROM ivr_live") == 0
    await redis.aclose()


async def _session_listed(redis: aioredis.Redis, uniqueid: str) -> str | None:
    import json

    raw = await redis.hget(LIVE_KEY, uniqueid)
    return json.loads(raw).get("session") if raw else None


async def _async(value: bool) -> bool:
    return value
