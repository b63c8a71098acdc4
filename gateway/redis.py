"""Redis client construction and the one helper for Lua scripts.

Scripts are loaded once per client, run with EVALSHA, and reloaded
transparently when the server answers NOSCRIPT (after a restart or a
SCRIPT FLUSH). Every Lua script in the project goes through `LuaScript`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

EncodableT = str | bytes | int | float


def create_redis(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """Client for `url` (redis://, rediss:// or unix://) with bounded socket and pool waits."""
    # A blocking pool: under a burst, callers wait (bounded) for a connection instead of
    # redis-py raising MaxConnectionsError when the pool is momentarily empty.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


class LuaScript:
    """A Lua script run by SHA, loaded on first use and again after NOSCRIPT."""

    def __init__(self, source: str, name: str = "script") -> None:
        self.source = source
        self.name = name
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path) -> LuaScript:
        path = Path(path)
        return cls(path.read_text(), name=path.stem)

    async def __call__(
        self,
        client: aioredis.Redis,
        keys: Sequence[EncodableT] = (),
        args: Sequence[EncodableT] = (),
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def in_pipeline(
        self,
        pipe: aioredis.client.Pipeline,
        keys: Sequence[EncodableT] = (),
        args: Sequence[EncodableT] = (),
    ) -> None:
        """Queue an EVALSHA on a pipeline; call `ensure_loaded` before executing it."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def ensure_loaded(self, client: aioredis.Redis) -> None:
        exists = await client.script_exists(self.sha)
        if not exists[0]:
            await client.script_load(self.source)

    async def run_many(
        self,
        client: aioredis.Redis,
        calls: Sequence[tuple[Sequence[EncodableT], Sequence[EncodableT]]],
    ) -> list[Any]:
        """Many runs (keys, args) in one round trip: a pipeline, not a transaction, so each
        run is atomic on its own exactly as separate calls would be. A run that met NOSCRIPT
        did nothing; only those are sent again once the script is loaded."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            answers = await pipe.execute(raise_on_error=False)
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    results[i] = answer
            if not missing:
                break
            await client.script_load(self.source)
            todo = missing
        return results
