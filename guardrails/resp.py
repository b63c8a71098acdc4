"""One lean, pipelined Redis connection for the Lua call every outbound action makes.

Why not the redis-py client: per command it pays a pool checkout and check-in, a retry
wrapper, a timeout per step and one encoder call per argument, whatever its reply parser.
`python -m bench.resp` runs the rate-limit EVALSHA from 64 callers on one loop through each:
on the 2-core dev box this connection cost 10.7 µs of CPU per call (36,300 calls/s), redis-py
65.4 µs with its pure-Python parser and 54.4 µs with hiredis (12,900/s), and redis-py with
hiredis in pipelines of 64 still 19.7 µs. The check runs once per outbound action, on the
accept path of every message, so it gets this instead:

* one connection per event loop, opened on first use with the client's own settings (same
  server, database and credentials), shared by every concurrent caller: Redis answers in the
  order it was asked, so replies are matched to callers by a FIFO of futures — no pool, no
  lock, and the commands of all callers in one event-loop turn (the accepts in flight) are
  one `transport.write` of bytes;
* replies parsed from the protocol's `data_received` callback, with no task in between.

Anything it cannot do as the client would (TLS, a credential provider, a client without a
connection pool) is left to redis-py, as are failures: a call that meets a broken connection is
retried once through the client, as redis-py's own retry policy would. A timeout is an error.
`gateway/redis.py` would be this module's natural home; it lives here while the guardrail
chain is its only user.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis import EncodableT, LuaScript

_CRLF = b"\r\n"


def pack(*args: EncodableT) -> bytes:
    """A command as a RESP array of bulk strings (built as one str: the arguments are ASCII)."""
    out = [f"*{len(args)}\r\n"]
    for arg in args:
        text = arg.decode("latin-1") if type(arg) is bytes else str(arg)
        out.append(f"${len(text)}\r\n{text}\r\n")
    command = "".join(out)
    if command.isascii():  # then every length above is also a length in bytes
        return command.encode()
    return _pack_bytes(args)


def _pack_bytes(args: Sequence[EncodableT]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, position after it). Errors are values."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 0x24:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == 0x3A:  # : integer
        return int(line), pos
    if kind == 0x2B:  # + simple string
        return line, pos
    if kind == 0x2D:  # - error
        text = line.decode(errors="replace")
        return (NoScriptError if text.startswith("NOSCRIPT") else ResponseError)(text), pos
    if kind == 0x2A:  # * array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise RedisConnectionError(f"unexpected reply type {chr(kind)!r} from Redis")


class _Protocol(asyncio.Protocol):
    """Writes commands, and hands each reply to the oldest caller still waiting for one.

    Timeouts: one watchdog timer per connection, not one per call (a timer per call costs
    more than the rest of the call): when the oldest unanswered command is older than
    `timeout`, the connection is presumed dead, closed, and every waiting caller gets
    TimeoutError.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.buffer = bytearray()
        self.closed = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._unsent: list[bytes] | None = None  # commands of this loop turn, not yet written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("the guardrail Redis connection is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self.timeout
        self.waiting.append((future, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)
        # Corked: what every caller of this loop turn sends goes out in one write at its end
        # (one syscall, and one read for Redis), not one each: a pipeline for the whole turn.
        if self._unsent is None:
            self._unsent = [command]
            loop.call_soon(self._flush)
        else:
            self._unsent.append(command)
        return future

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, None
        if unsent and self.transport is not None and not self.transport.is_closing():
            self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def _watch(self) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        oldest = self.waiting[0][1]
        if oldest > loop.time():
            self._watchdog = loop.call_at(oldest, self._watch)
            return
        self._fail(RedisTimeoutError(f"Redis did not answer within {self.timeout:g} s"))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while pos < len(self.buffer):
                reply, pos = _parse(self.buffer, pos)
                future = self.waiting.popleft()[0]
                if future.done():  # its caller gave up (cancelled)
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (RedisConnectionError, IndexError, ValueError) as exc:  # out of step: give up
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.close()
        del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"the guardrail Redis connection was lost: {exc}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc)


class ScriptPipe:
    """EVALSHA over one pipelined connection per event loop, beside a redis-py client.

    `client` is the redis-py client this stands in for: its connection settings are used, and
    it runs what this cannot (see the module docstring).
    """

    def __init__(self, client: aioredis.Redis, *, name: str = "trunkline-guardrails") -> None:
        self.client = client
        self.name = name  # CLIENT SETNAME: how the connection shows in CLIENT LIST
        pool = getattr(client, "connection_pool", None)
        kwargs: dict[str, Any] = dict(getattr(pool, "connection_kwargs", {}))
        kind = getattr(pool, "connection_class", None)
        self.path: str | None = kwargs.get("path")
        self.host: str | None = kwargs.get("host")
        self.port: int = int(kwargs.get("port") or 6379)
        self.username: str | None = kwargs.get("username")
        self.password: str | None = kwargs.get("password")
        self.db = int(kwargs.get("db") or 0)
        self.timeout: float = float(kwargs.get("socket_timeout") or 10.0)
        self.connect_timeout: float = float(kwargs.get("socket_connect_timeout") or 5.0)
        self.usable = (
            kind in (aioredis.Connection, aioredis.UnixDomainSocketConnection)
            and kwargs.get("credential_provider") is None
            and (self.path is not None or self.host is not None)
        )
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def evalsha(
        self,
        script: LuaScript,
        keys: Sequence[EncodableT],
        args: Sequence[EncodableT],
        *,
        reload: bool = True,
    ) -> Any:
        """`script(client, keys, args)`, through the lean connection where it can be."""
        if not self.usable:
            return await script(self.client, keys, args)
        command = pack(b"EVALSHA", script.sha, len(keys), *keys, *args)
        protocol = self._protocol
        try:
            if protocol is None or protocol.closed or self._loop is not asyncio.get_running_loop():
                protocol = await self._connect()
            return await self._settle(self._write(protocol, command), script, keys, args, reload)
        except (RedisConnectionError, OSError):
            self._drop(protocol)
            return await script(self.client, keys, args)

    def start(
        self, script: LuaScript, keys: Sequence[EncodableT], args: Sequence[EncodableT]
    ) -> Started | None:
        """Send the call now, without awaiting anything, if this loop's connection is open.

        This is how the chain overlaps the call with its database query without a task: the
        command is on the wire when this returns. None: use `evalsha` (not connected yet, or
        a client this cannot stand in for).
        """
        protocol = self._protocol
        if (
            protocol is None
            or protocol.closed
            or self._loop is not asyncio.get_running_loop()
            or not self.usable
        ):
            return None
        command = pack(b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            future = self._write(protocol, command)
        except RedisConnectionError:
            return None
        return Started(self, protocol, future, script, keys, args)

    def _write(self, protocol: _Protocol, command: bytes) -> asyncio.Future[Any]:
        return protocol.send(command)

    async def _settle(
        self,
        future: asyncio.Future[Any],
        script: LuaScript,
        keys: Sequence[EncodableT],
        args: Sequence[EncodableT],
        reload: bool = True,
    ) -> Any:
        """The reply to a sent call; a server that lost the script gets it and runs it again."""
        try:
            return await future
        except NoScriptError:  # a restarted or flushed server: load it, once
            if not reload:
                raise
            await self.client.script_load(script.source)
            return await self.evalsha(script, keys, args, reload=False)

    async def _connect(self) -> _Protocol:
        """The connection of the running loop, opened by the first caller that needs it."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._protocol, self._connecting, self._loop = None, None, loop
        if self._connecting is None or self._connecting.done():
            self._connecting = loop.create_future()
            try:
                protocol = await self._open(loop)
            except BaseException as exc:
                self._connecting.set_exception(exc)
                self._connecting.exception()  # retrieved: the waiters re-raise it
                self._connecting = None
                raise
            self._protocol = protocol
            self._connecting.set_result(protocol)
            return protocol
        return await asyncio.shield(self._connecting)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        async with asyncio.timeout(self.connect_timeout):

            def factory() -> _Protocol:
                return _Protocol(self.timeout)

            if self.path is not None:
                _, protocol = await loop.create_unix_connection(factory, self.path)
            else:
                _, protocol = await loop.create_connection(factory, self.host, self.port)
        try:
            async with asyncio.timeout(self.timeout):  # (the handshake, once per connection)
                if self.password is not None:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    await protocol.send(pack(b"AUTH", *auth))
                if self.db:
                    await protocol.send(pack(b"SELECT", self.db))
                await protocol.send(pack(b"CLIENT", b"SETNAME", self.name))
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
        return protocol

    def _drop(self, protocol: _Protocol | None) -> None:
        """Close a connection that failed (not the one a concurrent caller opened since)."""
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        if self._protocol is protocol:
            self._protocol = None

    async def aclose(self) -> None:
        """Close the connection (the redis-py client is its owner's to close)."""
        if self._loop is asyncio.get_running_loop():
            self._drop(self._protocol)
        self._protocol, self._loop = None, None


@dataclass(frozen=True, slots=True)
class Started:
    """A call already sent by `ScriptPipe.start`; `result()` is its reply."""

    pipe: ScriptPipe
    protocol: _Protocol
    future: asyncio.Future[Any]
    script: LuaScript
    keys: Sequence[EncodableT]
    args: Sequence[EncodableT]

    async def result(self) -> Any:
        """The reply; a connection lost on the way means one more try through the client."""
        try:
            return await self.pipe._settle(self.future, self.script, self.keys, self.args)
        except (RedisConnectionError, OSError):
            self.pipe._drop(self.protocol)
            return await self.script(self.pipe.client, self.keys, self.args)
