"""How the pools talk to Redis: batched script calls, and one pub/sub channel for wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis import EncodableT, LuaScript
from gateway.stopping import cancel_and_wait
from sip.pools.errors import PoolError

log = structlog.get_logger(__name__)

_Head = tuple[str, tuple[str, ...], int]


@dataclass(eq=False, slots=True)
class _Call:
    script: LuaScript
    keys: tuple[str, ...]
    args: Sequence[EncodableT]
    packed: bytes
    future: asyncio.Future[Any]


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the caller gave up (cancelled); nothing to tell
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _arg(value: EncodableT) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


class ScriptBatcher:
    """Runs EVALSHA calls in batches over a few dedicated connections.

    Why: without hiredis, redis-py spends ~130 µs of CPU on each command (pure-Python
    packing of every argument, pool checkout, reply parsing), which caps a process near
    7k calls/s however many coroutines wait. Here each lane (one connection, one task)
    writes every call queued since its last round trip in one write and reads the
    replies in order; the constant head of a command (EVALSHA, sha, keys) is packed
    once. One call alone goes out at once, so an idle pool pays only a loop hop.
    Scripts still belong to `LuaScript`: its sha is sent and, on NOSCRIPT, its
    `__call__` reloads the script and runs the call again.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        lanes: int = 2,
        on_connect: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._lanes = lanes
        self._on_connect = on_connect
        self._pending: list[_Call] = []
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._heads: dict[_Head, bytes] = {}
        self._closed = False

    def call(
        self, script: LuaScript, keys: tuple[str, ...], args: Sequence[EncodableT]
    ) -> asyncio.Future[Any]:
        """Queue one EVALSHA; the future resolves with its reply (or the Redis error)."""
        if self._closed:
            raise PoolError("trunk pools are closed")
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._lane()) for _ in range(self._lanes)]
        head = self._heads.get((script.sha, keys, len(args)))
        if head is None:
            parts = [b"EVALSHA", script.sha.encode(), str(len(keys)).encode()]
            parts += [k.encode() for k in keys]
            head = b"*%d\r\n" % (len(parts) + len(args)) + b"".join(
                b"$%d\r\n%b\r\n" % (len(p), p) for p in parts
            )
            self._heads[(script.sha, keys, len(args))] = head
        packed = head + b"".join([_arg(a) for a in args])
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call(script, keys, args, packed, fut))
        self._work.set()
        return fut

    async def _lane(self) -> None:
        conn: Any = None
        try:
            while True:
                while not self._pending:
                    if self._closed:
                        return
                    self._work.clear()
                    await self._work.wait()
                batch, self._pending = self._pending, []
                if conn is None:
                    try:
                        conn = await self._redis.connection_pool.get_connection()
                        # Every later reconnect runs it too, before anything is sent on it.
                        conn.register_connect_callback(self._connected)
                        await self._connected(conn)  # handed out connected: check this one
                    except Exception as exc:  # Redis unreachable: fail fast, try again next batch
                        for call in batch:
                            _settle(call.future, exc=exc)
                        continue
                await self._run(conn, batch)
        finally:
            if conn is not None:
                conn.deregister_connect_callback(self._connected)
                await self._redis.connection_pool.release(conn)

    async def _connected(self, conn: Any) -> None:
        """The owner's check of a new connection (a method: redis-py keeps a weak reference).
        If it fails the connection is dropped, so nothing runs on an unchecked one."""
        if self._on_connect is None:
            return
        try:
            await self._on_connect(conn)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise

    async def _run(self, conn: Any, batch: list[_Call]) -> None:
        again: list[_Call] = []
        try:
            # One deadline for the round trip instead of one timer per reply.
            async with asyncio.timeout(conn.socket_timeout):
                data = b"".join([c.packed for c in batch])
                try:
                    await conn.send_packed_command(data, False)
                except RedisConnectionError:
                    # The lane's connection died while idle (Redis restarted): the write fails
                    # before the server saw anything, so the batch goes once more on a fresh
                    # connection instead of failing every call in it with 503 after recovery.
                    await conn.disconnect(nowait=True)
                    await conn.send_packed_command(data, False)
                for call in batch:
                    try:
                        reply = await conn.read_response(timeout=math.inf)
                    except NoScriptError:  # after SCRIPT FLUSH or a server restart
                        again.append(call)
                    except ResponseError as exc:
                        _settle(call.future, exc=exc)
                    else:
                        _settle(call.future, reply)
        except BaseException as exc:
            await conn.disconnect(nowait=True)  # replies may be half read: start afresh
            failure = exc if isinstance(exc, Exception) else RedisConnectionError("lane stopped")
            if isinstance(exc, TimeoutError):
                failure = RedisTimeoutError("timeout waiting for pool script replies")
            for call in batch:
                _settle(call.future, exc=failure)
            if not isinstance(exc, Exception):
                raise
        for call in again:
            try:
                _settle(call.future, await call.script(self._redis, call.keys, call.args))
            except Exception as exc:
                _settle(call.future, exc=exc)

    async def aclose(self) -> None:
        """Finish the calls already queued (their replies carry permits), then stop."""
        self._closed = True
        self._work.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


@dataclass(eq=False)
class Waiter:
    """A local coroutine waiting in a pool's queue; `future` gets the lease expiry (ms)."""

    ticket: str
    holder: str
    member: str
    recheck: Callable[[Waiter], Awaitable[int | None]]
    future: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Waker:
    """One subscription per process-side `TrunkPools`: grants published by any process's
    scripts arrive here and resolve the matching local waiter.

    Pub/sub can drop messages while the connection is down, so every (re)subscription is
    followed by a re-check of all local waiters against Redis: the grant itself is durable
    (it is the lease in the ZSET), the message is only the doorbell.
    """

    def __init__(self, redis: aioredis.Redis, channel: str) -> None:
        self._redis = redis
        self.channel = channel
        self._waiters: dict[str, Waiter] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._rechecks: set[asyncio.Task[None]] = set()

    def register(self, waiter: Waiter) -> None:
        """Start listening for `waiter` before its ticket is queued, so no grant can slip by."""
        if self._closed:
            raise PoolError("trunk pools are closed")
        self._waiters[waiter.ticket] = waiter
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, ticket: str) -> None:
        self._waiters.pop(ticket, None)

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while not self._closed:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is None:
                        continue
                    if msg["type"] == "message":
                        self._deliver(msg["data"])
                    elif msg["type"] == "subscribe":
                        backoff = 0.05
                        self._recheck_all()  # redis-py resubscribes after a reconnect, too
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("pool wake-up channel lost; resubscribing", error=str(exc))
            except Exception:
                log.exception("pool wake-up listener failed; resubscribing")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(backoff)  # reconnect back-off, not a poll: waiters are re-checked
            backoff = min(backoff * 2, 2.0)

    def _deliver(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        ticket, _, expiry = text.partition("|")
        waiter = self._waiters.get(ticket)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(int(expiry))

    def _recheck_all(self) -> None:
        for waiter in list(self._waiters.values()):
            task = asyncio.get_running_loop().create_task(self._recheck(waiter))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, waiter: Waiter) -> None:
        try:
            expiry = await waiter.recheck(waiter)
        except Exception as exc:  # the waiter's own deadline check still covers it
            log.warning("pool waiter re-check failed", error=str(exc))
            return
        if expiry is not None and not waiter.future.done():
            waiter.future.set_result(expiry)

    async def aclose(self) -> None:
        """Stop listening. Bounded: a cancel that lands as the SUBSCRIBE's send completes is
        swallowed by redis-py's wait_for (gateway/stopping.py), and the loop would then
        block in `get_message` for good; the task is cancelled again while it goes on."""
        self._closed = True
        await cancel_and_wait(self._task)
        for task in list(self._rechecks):
            task.cancel()
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.cancel()
