"""Issue 14: the DID a tenant sends from is routed from memory, and a changed route takes
effect within a second on every process (gateway/pipeline/didcache.py, migration 0028)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import aiohttp
import asyncpg

from gateway.listener import ChangeListener
from gateway.pipeline.didcache import DidCache
from tests.foundation.test_idempotency_across_processes import RATE_LIMITS, api_processes, env_json
from tests.helpers import auth

FIRST, LOWER = "+14155550199", "+14155550101"
_recipients = (f"+1212555{n:04d}" for n in itertools.count(1000))


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _sender(session: aiohttp.ClientSession, base: str, token: str) -> str:
    """The number a message is sent from when the caller names none (the tenant's first DID)."""
    body = {"to": next(_recipients), "body": "hi", "purpose": "transactional"}
    async with session.post(f"{base}/v1/messages", json=body, headers=auth(token)) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["from"]


async def test_a_changed_route_takes_effect_within_a_second_on_every_process(
    daemon_env, make_key, pg_pool, database_url, tmp_path
):
    token = await make_key("acme")
    tenant = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    await pg_pool.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities) "
        "VALUES ($1, $2, 'sandbox', '{sms}')",
        FIRST,
        tenant,
    )
    env = daemon_env | env_json(
        guardrails__rate_limits=RATE_LIMITS,
        guardrails__policy={"exempt_transactional_from_calling_hours": True},
    )
    async with api_processes(env, tmp_path) as bases, aiohttp.ClientSession() as session:
        for base in bases:  # each process has routed the tenant once
            assert await _sender(session, base, token) == FIRST
        # Cached: with `dids` locked against every reader, both still route (no round trip).
        locker = await asyncpg.connect(database_url)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE dids IN ACCESS EXCLUSIVE MODE")
                for base in bases:
                    assert await asyncio.wait_for(_sender(session, base, token), 5) == FIRST
        finally:
            await locker.close()

        async def everywhere_within_a_second(expected: str) -> None:
            changed = time.monotonic()
            for base in bases:
                while (sender := await _sender(session, base, token)) != expected:
                    assert time.monotonic() - changed < 1.0, (base, sender)
                    await asyncio.sleep(0.02)
                assert time.monotonic() - changed < 1.0, base

        # A new DID that sorts first becomes the tenant's sender ...
        await pg_pool.execute(
            "INSERT INTO dids (number, tenant_id, provider, capabilities) "
            "VALUES ($1, $2, 'sandbox', '{sms}')",
            LOWER,
            tenant,
        )
        await everywhere_within_a_second(LOWER)
        # ... and stops being it the moment it can no longer carry SMS.
        await pg_pool.execute("UPDATE dids SET capabilities = '{voice}' WHERE number = $1", LOWER)
        await everywhere_within_a_second(FIRST)


async def test_the_cache_forgets_a_tenant_on_notify_and_everything_when_lost(
    database_url, make_key, pg_pool
):
    await make_key("acme")
    await make_key("other")
    acme, other = [
        await pg_pool.fetchval("SELECT id FROM tenants WHERE name = $1", name)
        for name in ("acme", "other")
    ]
    listener = ChangeListener(database_url, reconnect=0.2)
    cache = DidCache(listener)
    await listener.start()
    try:
        await _until(lambda: listener.listening)
        # An unknown sender is remembered too (it is refused without a round trip) ...
        assert await cache.did_for_sending(pg_pool, acme, "sms", FIRST) is None
        assert await cache.did_for_sending(pg_pool, other, "sms", None) is None
        assert len(cache) == 2
        # ... until the tenant gets that number: then only that tenant's answers go.
        await pg_pool.execute(
            "INSERT INTO dids (number, tenant_id, provider, capabilities) "
            "VALUES ($1, $2, 'sandbox', '{sms,voice}')",
            FIRST,
            acme,
        )
        await _until(lambda: len(cache) == 1)
        did = await cache.did_for_sending(pg_pool, acme, "sms", FIRST)
        assert did is not None and did["provider"] == "sandbox"
        assert await cache.did_for_sending(pg_pool, acme, "voice", None) is not None
        # A change of a column routing does not read (the IVR flow) sends nothing.
        gen = cache.generation
        await pg_pool.execute("UPDATE dids SET ivr_flow = 'menu' WHERE number = $1", FIRST)
        await pg_pool.execute("UPDATE dids SET provider = 'twilio' WHERE number = $1", FIRST)
        changed = time.monotonic()
        # a heartbeat sent after both commits answered: every notification of them is in
        await _until(lambda: listener.trusted_until >= changed + listener.stale_after)
        assert cache.generation == gen + 1
        did = await cache.did_for_sending(pg_pool, acme, "sms", FIRST)
        assert did is not None and did["provider"] == "twilio"
        # A number taken away is forgotten too.
        await pg_pool.execute("DELETE FROM dids WHERE number = $1", FIRST)
        await _until(lambda: len(cache) == 1)  # `other` stays
        assert await cache.did_for_sending(pg_pool, acme, "sms", FIRST) is None
        # The listener's backend dies: nothing is answered from memory until it is back.
        gen = cache.generation
        await pg_pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'trunkline-listener' AND datname = current_database()"
        )
        await _until(lambda: cache.generation != gen and not listener.listening)
        assert len(cache) == 0
        assert await cache.did_for_sending(pg_pool, other, "sms", None) is None
        assert len(cache) == 0  # a read made while nobody listens is not stored
        await _until(lambda: listener.listening)
        assert await cache.did_for_sending(pg_pool, other, "sms", None) is None
        assert len(cache) == 1
    finally:
        await listener.close()


def test_entries_are_bounded_by_tenant():
    listener = ChangeListener("postgresql://unused")
    cache = DidCache(listener, max_entries=3)
    listener.trusted_until = time.monotonic() + 60  # as if listening
    tenants = [uuid.uuid4() for _ in range(3)]
    cache._put(tenants[0], ("sms", None), None, cache.generation)
    cache._put(tenants[0], ("voice", None), None, cache.generation)
    cache._put(tenants[1], ("sms", None), None, cache.generation)
    cache._put(tenants[2], ("sms", None), None, cache.generation)  # the oldest tenant goes
    assert len(cache) == 2 and tenants[0] not in cache._tenants
    stale = cache.generation
    cache.forget(str(tenants[1]))
    cache._put(tenants[1], ("sms", None), None, stale)  # a read that raced a change
    assert len(cache) == 1 and tenants[1] not in cache._tenants
