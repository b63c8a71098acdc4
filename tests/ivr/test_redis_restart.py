"""Redis restarts empty under 15 live IVR calls (issue 12, DESIGN principle 10).

The daemon (all roles) answers 15 inbound calls on the test AMI server; each holds one of the
`ivr` pool's 15 permits and waits in its menu's gather. Then the Redis of this test — its own
server, not the suite's — is stopped and started again with nothing in it: no permit, no
lease, no session. The pools are rebuilt from PostgreSQL before anything is admitted (the
calls table, and `ivr_live` for IVR calls), so the 16th caller still hears the overflow and
is counted; the 15 callers are carried on by the workers that hold their sessions, their
sessions put back in Redis, and each gives its permit back at the end.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.redis import create_redis
from gateway.resources import RESOURCES
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim
from tests.helpers import eventually
from tests.ivr.conftest import entered
from tests.ivr.test_asyncagi import PHONE

SIZE = 15
NUMBER = "+14155550100"
IVR_LEASES = "tl:pool:{default}:ivr:leases"


@pytest.fixture
async def private_redis() -> AsyncIterator[Any]:
    """A redis-server of this test's own (no persistence), to restart."""
    from gateway.devservices import PrivateRedis, short_runtime_dir

    root = short_runtime_dir("tl-ivr-")
    server = PrivateRedis(data_dir=root / "redis")
    server.url = await asyncio.to_thread(server.start)  # type: ignore[attr-defined]
    yield server
    await asyncio.to_thread(server.stop)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
def settings(database_url, private_redis, ami):
    from tests.calls.conftest import call_settings

    return call_settings(
        database_url,
        private_redis.url,
        ami_port=ami.port,
        pools={"sizes": {"api": 2, "campaign": 2, "ivr": SIZE}},
        ivr={"lease": 3.0},
    )


async def test_after_a_redis_restart_live_ivr_calls_hold_their_permits_again(
    ivr, client, ami, private_redis
):
    db = client.app[RESOURCES].db
    await ivr.upload(PHONE)
    await db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities)"
        " SELECT $1, tenant_id, 'asterisk:main', '{voice}' FROM ivr_flows LIMIT 1",
        NUMBER,
    )
    await ivr.request("PUT", f"/v1/dids/{NUMBER}", 200, {"ivr_flow": "phone"})
    await eventually(lambda: _async(ami.logins >= 1), timeout=10)
    agi = AsyncAgiSim(ami)

    hold = asyncio.Event()
    calls = [
        agi.inbound_call(NUMBER.lstrip("+"), f"1555000{n:04d}", keys=[hold, "1"])
        for n in range(SIZE)
    ]

    async def all_asked() -> bool:
        return all(any(c.startswith("GET DATA") for c in call.commands) for call in calls)

    await eventually(all_asked, timeout=20)
    assert await db.fetchval("SELECT count(*) FROM ivr_live") == SIZE
    uniqueids = {call.channel.uniqueid for call in calls}
    probe = create_redis(private_redis.url)
    try:
        assert {h.decode() for h in await probe.zrange(IVR_LEASES, 0, -1)} == uniqueids
    finally:
        await probe.aclose()

    await asyncio.to_thread(private_redis.stop)
    await asyncio.to_thread(private_redis.start)  # empty: no permit, lease or session left

    probe = create_redis(private_redis.url)
    try:
        assert await probe.dbsize() == 0
        late = agi.inbound_call(NUMBER.lstrip("+"), "15550009999", keys=["1"])
        await eventually(lambda: _async(late.commands[-1:] == ["HANGUP"]), timeout=20)
        assert late.commands == ['STREAM FILE all-circuits-busy-now ""', "HANGUP"]
        overflow = await db.fetchrow("SELECT data FROM events WHERE type = 'ivr.overflow'")
        assert overflow["data"]["from"] == "15550009999"
        # the 15 live calls hold the 15 permits again (rebuilt from ivr_live), nobody else
        holders = {h.decode() for h in await probe.zrange(IVR_LEASES, 0, -1)}
        assert holders == uniqueids

        hold.set()  # the callers press 1: their workers carry each session on

        async def all_ended() -> bool:
            return await db.fetchval("SELECT count(*) FROM ivr_sessions") == SIZE

        await eventually(all_ended, timeout=30)
        rows = await db.fetch("SELECT end_reason, transcript FROM ivr_sessions")
        assert {r["end_reason"] for r in rows} == {"hangup"}
        assert all(entered(r["transcript"]) == ["greet", "menu", "thanks"] for r in rows)
        await eventually(lambda: _async(all(c.commands[-1:] == ["HANGUP"] for c in calls)), 10)

        async def released() -> bool:
            return await probe.zcard(IVR_LEASES) == 0

        await eventually(released, timeout=10)
        assert await db.fetchval("SELECT count(*) FROM ivr_live") == 0
    finally:
        await probe.aclose()


async def _async(value: bool) -> bool:
    return value
