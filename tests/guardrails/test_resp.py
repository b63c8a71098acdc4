"""The rate-limit check's own Redis connection: one pipelined connection, on a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis import LuaScript, create_redis
from guardrails.resp import ScriptPipe, pack

ECHO = LuaScript("return {KEYS[1], ARGV[1]}", name="echo")
COUNT = LuaScript("return redis.call('INCR', KEYS[1])", name="count")


@pytest.fixture
async def pipe(redis_client):
    pipe = ScriptPipe(redis_client)
    yield pipe
    await pipe.aclose()


def test_commands_are_packed_as_resp_arrays():
    assert (
        pack(b"EVALSHA", "ab", 2, 1.5)
        == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\n1.5\r\n"
    )
    # a non-ASCII argument: lengths in bytes, not characters
    assert pack("clé") == b"*1\r\n$4\r\ncl\xc3\xa9\r\n"


async def test_concurrent_callers_share_one_connection_and_each_gets_its_own_reply(
    redis_client,
):
    pipe = ScriptPipe(redis_client, name="test-pipe-shared")
    replies = await asyncio.gather(*(pipe.evalsha(ECHO, [f"k{i}"], [str(i)]) for i in range(500)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]
    clients = await redis_client.client_list()
    assert [c["name"] for c in clients].count("test-pipe-shared") == 1
    await pipe.aclose()


async def test_a_started_call_is_on_the_wire_before_anything_is_awaited(pipe, redis_client):
    assert pipe.start(COUNT, ["n"], []) is None  # not connected yet: the caller uses evalsha
    assert await pipe.evalsha(COUNT, ["n"], []) == 1
    started = [pipe.start(COUNT, ["n"], []) for _ in range(3)]
    assert all(s is not None for s in started)
    assert await redis_client.get("n") == b"4"  # (the client's own round trip came after them)
    assert [await s.result() for s in started] == [2, 3, 4]


async def test_a_flushed_script_cache_is_reloaded_transparently(pipe, redis_client):
    assert await pipe.evalsha(COUNT, ["n"], []) == 1
    await redis_client.script_flush()
    assert await pipe.evalsha(COUNT, ["n"], []) == 2
    await redis_client.script_flush()
    started = pipe.start(COUNT, ["n"], [])
    assert started is not None and await started.result() == 3


async def test_a_killed_connection_is_replaced(redis_client):
    pipe = ScriptPipe(redis_client, name="test-pipe-killed")
    assert await pipe.evalsha(COUNT, ["n"], []) == 1
    (ours,) = [c for c in await redis_client.client_list() if c["name"] == "test-pipe-killed"]
    await redis_client.execute_command("CLIENT", "KILL", "ID", ours["id"])
    await asyncio.sleep(0.05)
    assert await pipe.evalsha(COUNT, ["n"], []) == 2  # through the client, then a new connection
    assert await pipe.evalsha(COUNT, ["n"], []) == 3
    assert pipe.start(COUNT, ["n"], []) is not None
    await pipe.aclose()


async def test_a_server_that_does_not_answer_times_out(redis_url):
    client, busy = create_redis(redis_url), create_redis(redis_url)
    pipe = ScriptPipe(client)
    pipe.timeout = 0.2
    spin = "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] > s + 600000 return 1"
    try:
        assert await pipe.evalsha(COUNT, ["n"], []) == 1
        blocking = asyncio.ensure_future(busy.eval(spin, 0))  # Redis does nothing else for 0.6 s
        await asyncio.sleep(0.05)
        with pytest.raises(RedisTimeoutError):
            await pipe.evalsha(COUNT, ["n"], [])
        await blocking
        assert await pipe.evalsha(COUNT, ["n"], []) == 3  # a new connection (the call did run)
    finally:
        await pipe.aclose()
        await client.aclose()
        await busy.aclose()


async def test_a_client_it_cannot_stand_in_for_is_used_as_it_is():
    tls = create_redis("rediss://localhost:6399/0")
    assert not ScriptPipe(tls).usable
    await tls.aclose()
