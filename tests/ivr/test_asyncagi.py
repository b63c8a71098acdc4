"""The Asterisk transport over real TCP AMI: inbound calls into AGI(agi:async) on the test AMI
server (tests/amisim/asyncagi.py, from transcripts 05a/05b/05e/05g), each holding an `ivr`
pool permit, driven by the same engine and runner as the sandbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.ivr.service import flow_row
from gateway.ivr.wiring import RUNNER
from gateway.resources import RESOURCES
from ivr.asyncagi import AsyncAgiTransport
from sip.ami import AMIClient
from sip.pools import PoolConfig, TrunkPools, TrunkPoolsConfig
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim
from tests.helpers import eventually
from tests.ivr.conftest import assert_refused_by_dnc, assert_transferred, entered

PHONE = {
    "name": "phone",
    "start": "greet",
    "nodes": {
        "greet": {"say": "Thanks for calling Acme.", "next": "menu"},
        "menu": {
            "gather": {"say": "Press 1 for billing.", "digits": 1, "timeout": 5, "retries": 0},
            "on": {"1": "thanks"},
            "no_input": "bye",
        },
        "thanks": {"say": "Billing it is.", "then": "hangup"},
        "bye": {"say": "Goodbye.", "then": "hangup"},
    },
}


@pytest.fixture
def ivr_pool_size() -> int:
    return 1  # a test parametrizes it to have more


@pytest.fixture
async def asterisk(ivr, client, redis_client, ivr_pool_size) -> AsyncIterator[tuple]:
    await ivr.upload(PHONE)
    db = client.app[RESOURCES].db
    tenant_id = uuid.UUID(str(await db.fetchval("SELECT tenant_id FROM ivr_flows LIMIT 1")))

    async def route(env: dict[str, str]):
        return await flow_row(db, tenant_id, "phone", None) if env.get("agi_dnid") else None

    async with AMISimServer() as ami:
        agi = AsyncAgiSim(ami)
        ami_client = AMIClient("127.0.0.1", ami.port, "gateway", "secret", action_timeout=2.0)
        await ami_client.start()
        pools = TrunkPools(
            redis_client,
            TrunkPoolsConfig(trunk="ivrtest", pools={"ivr": PoolConfig(ivr_pool_size)}),
        )
        transport = AsyncAgiTransport(
            ami_client, client.app[RUNNER], route, pool=pools.get("ivr"), command_timeout=3.0
        )
        transport.attach()
        try:
            yield agi, transport, pools.get("ivr"), db
        finally:
            await transport.close()
            await ami_client.close()
            await pools.aclose()


async def summary(db, reason: str | None = None):
    async def ended():
        row = await db.fetchrow("SELECT * FROM ivr_sessions ORDER BY ended_at DESC LIMIT 1")
        return row if row is not None and (reason is None or row["end_reason"] == reason) else None

    return await eventually(ended, timeout=10)


async def test_a_call_runs_the_flow_over_asyncagi_and_gives_its_permit_back(asterisk):
    agi, _, pool, db = asterisk
    call = agi.inbound_call("7001", "15550001111", keys=["12"])  # 05g: the caller keys 1 2 #
    row = await summary(db)
    await eventually(
        lambda: _has_command(call, "HANGUP"), timeout=5
    )  # sent after the summary commits
    assert row["end_reason"] == "hangup" and row["transport"] == "asterisk"
    assert row["caller"] == "+15550001111" and row["called"] == "7001"
    assert entered(row["transcript"]) == ["greet", "menu", "thanks"]
    assert call.commands == [
        'EXEC Festival "Thanks for calling Acme."',
        'EXEC Festival "Press 1 for billing."',
        "GET DATA silence/1 5000 1",
        'EXEC Festival "Billing it is."',
        "HANGUP",
    ]
    await eventually(lambda: _no_holders(pool), timeout=5)


async def test_the_caller_hangs_up_mid_gather(asterisk):
    agi, _, pool, db = asterisk
    call = agi.inbound_call("7001", "15550001111", keys=[])  # 05b: BYE during GET DATA
    row = await summary(db)
    assert row["end_reason"] == "caller_hangup" and row["last_node"] == "menu"
    assert call.commands[-1] == "GET DATA silence/1 5000 1"  # nothing sent after the hang-up
    ended = await db.fetchrow(
        "SELECT data FROM events WHERE type = 'ivr.ended' AND subject = $1", str(row["id"])
    )
    assert ended["data"]["reason"] == "caller_hangup"
    await eventually(lambda: _no_holders(pool), timeout=5)


async def test_a_full_ivr_pool_plays_the_overflow_and_counts_it(asterisk):
    agi, transport, pool, db = asterisk
    hold = asyncio.Event()
    first = agi.inbound_call("7001", "15550001111", keys=[hold, "1"])  # waits in its gather
    await eventually(lambda: _has_command(first, "GET DATA"), timeout=5)
    second = agi.inbound_call("7001", "15550002222", keys=["1"])
    await eventually(lambda: _has_command(second, "HANGUP"), timeout=5)
    assert second.commands == ['STREAM FILE all-circuits-busy-now ""', "HANGUP"]
    assert transport.overflows == 1
    overflow = await db.fetchrow("SELECT data FROM events WHERE type = 'ivr.overflow'")
    assert overflow["data"]["from"] == "15550002222"
    hold.set()
    row = await summary(db)
    assert row["end_reason"] == "hangup" and row["caller"] == "+15550001111"
    await eventually(lambda: _no_holders(pool), timeout=5)


async def _no_holders(pool) -> bool:
    return await pool.holders() == []


async def _has_command(call, prefix: str) -> bool:
    return any(c.startswith(prefix) for c in call.commands)


async def test_a_transfer_to_a_dnc_number_takes_the_fallback_on_asterisk_too(asterisk, ivr):
    agi, _, pool, db = asterisk
    await ivr.upload(
        PHONE
        | {
            "nodes": PHONE["nodes"]
            | {"thanks": {"transfer": {"to": "+12125550143"}, "fallback": "bye"}}
        }
    )
    await db.execute(
        "INSERT INTO dnc_entries (number, tenant_id, source)"
        " SELECT '+12125550143', tenant_id, 'internal' FROM ivr_flows LIMIT 1"
    )
    call = agi.inbound_call("7001", "15550001111", keys=["1"])
    row = await summary(db)
    await eventually(
        lambda: _has_command(call, "HANGUP"), timeout=5
    )  # sent after the summary commits
    assert entered(row["transcript"]) == ["greet", "menu", "thanks", "bye"]
    assert not any(c.startswith("EXEC Dial") for c in call.commands)  # never dialled
    assert call.commands[-2:] == ['EXEC Festival "Goodbye."', "HANGUP"]
    await assert_refused_by_dnc(db, row["transcript"], "+12125550143", "bye")
    kinds = [
        r["type"]
        for r in await db.fetch(
            "SELECT type FROM events WHERE subject = $1 ORDER BY id", str(row["id"])
        )
    ]
    assert "ivr.transfer" in kinds
    await eventually(lambda: _no_holders(pool), timeout=5)


@pytest.mark.parametrize("ivr_pool_size", [2])  # the caller's channel and the transfer's
async def test_a_cleared_transfer_is_a_call_dialled_from_the_callers_channel(asterisk, ivr):
    """The chain at accept and at dispatch, the cleared number dialled with EXEC Dial on a
    channel of the pool, the call record ended by the Dial's DIALSTATUS."""
    agi, _, pool, db = asterisk
    transfer = {"transfer": {"to": "+12125550199", "from": None}, "fallback": "bye"}
    transfer["transfer"].pop("from")
    await ivr.upload(PHONE | {"nodes": PHONE["nodes"] | {"thanks": transfer}})
    call = agi.inbound_call("7001", "15550001111", keys=["1"])
    row = await summary(db, "transferred")
    assert call.commands[-2:] == [
        'EXEC Dial "PJSIP/+12125550199@carrier,30"',
        "GET VARIABLE DIALSTATUS",
    ]
    await assert_transferred(db, row["transcript"], "+12125550199", "completed")
    # unanswered: the call ends no_answer and the flow takes its fallback
    unanswered = agi.inbound_call("7001", "15550002222", keys=["1"])
    unanswered.dial_status = "NOANSWER"
    row = await summary(db, "hangup")
    (entry,) = [e for e in row["transcript"] if "transfer" in e]
    assert entry["transfer"] == "failed" and entry["branch"] == "bye"
    await assert_transferred(db, row["transcript"], "+12125550199", "no_answer")
    await eventually(lambda: _no_holders(pool), timeout=5)


async def test_a_worker_killed_mid_call_is_replaced_by_another_from_the_same_node(
    ivr, client, redis_client
):
    """kill -9 of the worker driving a call: its lease lapses, another worker (its own AMI
    connection) takes the call over and carries the session on from the node it waits at."""
    from ivr.leases import RedisCallLease

    await ivr.upload(PHONE)
    db = client.app[RESOURCES].db
    tenant_id = uuid.UUID(str(await db.fetchval("SELECT tenant_id FROM ivr_flows LIMIT 1")))

    async def route(env: dict[str, str]):
        return await flow_row(db, tenant_id, "phone", None)

    async with AMISimServer() as ami:
        agi = AsyncAgiSim(ami)
        pools = TrunkPools(
            redis_client,
            TrunkPoolsConfig(trunk="ivrkill", pools={"ivr": PoolConfig(1, lease=2.0)}),
        )
        workers = []
        for _ in range(2):
            ami_client = AMIClient("127.0.0.1", ami.port, "gateway", "secret", action_timeout=2.0)
            await ami_client.start()
            transport = AsyncAgiTransport(
                ami_client,
                client.app[RUNNER],
                route,
                pool=pools.get("ivr"),
                lease=RedisCallLease(redis_client, seconds=0.6),
                command_timeout=3.0,
            )
            workers.append((ami_client, transport))
        (ami_a, a), (ami_b, b) = workers
        a.attach()  # only A is up when the call arrives: A runs it
        hold = asyncio.Event()
        call = agi.inbound_call("7001", "15550001111", keys=[hold, "", "1"])
        await eventually(lambda: _has_command(call, "GET DATA"), timeout=5)
        b.attach()
        b.seen.update(a.seen)  # B's connection saw the AsyncAGIStart too (it was up)
        try:
            await a.abandon()  # kill -9: no lease, permit or session is given back
            await ami_a.close()
            await eventually(lambda: _async(b.takeovers == 1), timeout=5)
            # B asks again; Asterisk runs it after A's GET DATA, which ends unheard
            await eventually(lambda: _async(len(call.commands) >= 4), timeout=5)
            hold.set()
            row = await summary(db)
            await eventually(
                lambda: _has_command(call, "HANGUP"), timeout=5
            )  # sent after the summary commits
            assert row["end_reason"] == "hangup"
            assert entered(row["transcript"]) == ["greet", "menu", "menu", "thanks"]
            assert any("resumed" in e for e in row["transcript"])
            assert call.commands[2:] == [
                "GET DATA silence/1 5000 1",  # A's, lost with A
                'EXEC Festival "Press 1 for billing."',  # B's re-prompt
                "GET DATA silence/1 5000 1",
                'EXEC Festival "Billing it is."',
                "HANGUP",
            ]
            kinds = [
                r["type"]
                for r in await db.fetch(
                    "SELECT type FROM events WHERE subject = $1 ORDER BY id", str(row["id"])
                )
            ]
            assert kinds.count("ivr.resumed") == 1 and kinds[-1] == "ivr.ended"
            await eventually(lambda: _no_holders(pools.get("ivr")), timeout=5)
        finally:
            await b.close()
            await ami_b.close()
            await pools.aclose()


async def _async(value: bool) -> bool:
    return value


async def test_a_bridge_outside_the_bridge_hosts_is_never_dialled(asterisk, ivr):
    """Allowed at upload (agents.bridge_hosts), refused by a transport whose hosts changed."""
    agi, _, pool, _ = asterisk
    await ivr.upload(
        PHONE | {"nodes": PHONE["nodes"] | {"thanks": {"bridge_to": "sip:agent@ultravox"}}}
    )
    call = agi.inbound_call("7001", "15550001111", keys=["1"])
    await eventually(lambda: _has_command(call, "HANGUP"), timeout=5)
    assert not any(c.startswith("EXEC Dial") for c in call.commands)
    await eventually(lambda: _no_holders(pool), timeout=5)
