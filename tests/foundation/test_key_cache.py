"""Issue 14: a known API key authenticates with no PostgreSQL round trip, and a revoked one
still fails within a second on every process (gateway/tenants/keycache.py)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import aiohttp
import asyncpg

from gateway.listener import APPLICATION_NAME, ChangeListener
from gateway.tenants.keycache import KeyCache
from gateway.tenants.service import Principal, authenticate_token, parse_token
from tests.foundation.test_idempotency_across_processes import api_processes
from tests.helpers import auth


async def _status(session: aiohttp.ClientSession, base: str, token: str) -> int:
    async with session.get(f"{base}/v1/whoami", headers=auth(token)) as resp:
        return resp.status


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_key_revoked_by_the_cli_fails_within_a_second_on_every_process(
    daemon_env, make_key, pg_pool, database_url, tmp_path
):
    token = await make_key("acme")
    key_id = parse_token(token)[0]
    async with api_processes(daemon_env, tmp_path) as bases, aiohttp.ClientSession() as session:
        for base in bases:  # each process has seen the key live
            assert await _status(session, base, token) == 200
        # Cached: with api_keys locked against every reader, both still answer (no round trip).
        locker = await asyncpg.connect(database_url)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
                for base in bases:
                    status = await asyncio.wait_for(_status(session, base, token), 5)
                    assert status == 200
        finally:
            await locker.close()

        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway.cli", "keys", "revoke", key_id),
            env=daemon_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        revoked = time.monotonic()
        assert proc.returncode == 0, err.decode()
        assert await pg_pool.fetchval(
            "SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = $1", key_id
        )
        for base in bases:
            while (status := await _status(session, base, token)) == 200:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            assert status == 401
            assert time.monotonic() - revoked < 1.0, base


async def test_the_cache_serves_a_known_key_and_forgets_it_on_notify(
    database_url, make_key, pg_pool
):
    listener = ChangeListener(database_url)
    cache = KeyCache(listener)
    await listener.start()
    try:
        await _until(lambda: cache.listening)
        token = await make_key("acme")
        key_id = parse_token(token)[0]
        first = await authenticate_token(pg_pool, token, cache)
        assert first is not None and cache.get(key_id) is not None
        # Another secret with the same key id is refused from the cache too.
        assert await authenticate_token(pg_pool, f"tk_{key_id}_" + "A" * 43, cache) is None
        assert await authenticate_token(pg_pool, token, cache) == first
        # A change made in SQL (no code of ours) reaches the cache through the trigger.
        await pg_pool.execute(
            "UPDATE api_keys SET scopes = '{calls:read}' WHERE key_id = $1", key_id
        )
        await _until(lambda: cache.get(key_id) is None)
        again = await authenticate_token(pg_pool, token, cache)
        assert again is not None and again.scopes == ("calls:read",)
        await pg_pool.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", key_id)
        await _until(lambda: cache.get(key_id) is None)
        assert await authenticate_token(pg_pool, token, cache) is None
        assert cache.get(key_id) is None  # a revoked key is never stored
    finally:
        await listener.close()


async def test_a_lost_listener_turns_the_cache_off_until_it_listens_again(
    database_url, make_key, pg_pool
):
    listener = ChangeListener(database_url, reconnect=0.2)
    cache = KeyCache(listener)
    await listener.start()
    try:
        await _until(lambda: cache.listening)
        token = await make_key("acme")
        key_id = parse_token(token)[0]
        assert await authenticate_token(pg_pool, token, cache) is not None
        assert cache.get(key_id) is not None
        # The listener's backend dies; while it is away the key is revoked in SQL.
        gen = cache.generation
        await pg_pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        await _until(lambda: cache.generation != gen and not cache.listening)
        assert len(cache) == 0 and cache.get(key_id) is None
        # A read made while nobody listens is not stored.
        principal = await authenticate_token(pg_pool, token, cache)
        assert principal is not None and len(cache) == 0
        await pg_pool.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", key_id)
        await _until(lambda: cache.listening)
        assert await authenticate_token(pg_pool, token, cache) is None
    finally:
        await listener.close()


async def test_a_listener_that_stops_answering_is_trusted_no_longer(database_url):
    # A connection that died silently (no RST, nothing to notice) answers no heartbeat: its
    # entries stop being used `stale_after` seconds after the last answered one.
    listener = ChangeListener(database_url, heartbeat=0.05, stale_after=0.3)
    cache = KeyCache(listener)
    await listener.start()
    try:
        await _until(lambda: cache.listening)
        who = Principal(uuid.uuid4(), "acme", "k" * 16, ("calls:read",))
        cache.put("k" * 16, b"h", who, cache.generation)
        assert cache.get("k" * 16) is not None
        listener.probe = "SELECT pg_sleep(30)"  # the next heartbeat gets no answer
        await asyncio.sleep(0.4)
        assert listener._conn is not None and not listener._conn.is_closed()
        assert not cache.listening and cache.get("k" * 16) is None
    finally:
        await listener.close()


def test_entries_are_bounded_in_number_and_age():
    listener = ChangeListener("postgresql://unused")
    cache = KeyCache(listener, max_entries=3, ttl=0.05)
    listener.trusted_until = time.monotonic() + 60  # as if listening
    who = Principal(uuid.uuid4(), "acme", "x", ())
    for i in range(5):
        cache.put(f"key{i}", b"h", who, cache.generation)
    assert len(cache) == 3
    assert cache.get("key0") is None and cache.get("key1") is None
    assert cache.get("key4") is not None
    stale = cache.generation
    cache.forget("key4")
    cache.put("key4", b"h", who, stale)  # a read that raced a change is not stored
    assert cache.get("key4") is None
    time.sleep(0.06)
    assert cache.get("key3") is None  # expired
