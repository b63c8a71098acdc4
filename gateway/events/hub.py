"""The SSE hub: one per API process, fanning the Redis bus out to local stream clients.

It pattern-subscribes to every tenant channel, so it sees the global seq and
can tell when a message went missing (a Redis reconnect, a sequencer that died
between commit and publish): a jump from seq 41 to 45 makes it read 42-44 from
the log before dispatching 45, and while idle it checks the log's tail every
`resync_interval` so a lost *last* message is found too. Clients therefore get
events strictly in seq order with nothing skipped.

Dispatch is coalesced: events that arrive within `flush_interval` (never
holding the oldest longer than that) go to each client as one write, and
for a client that is keeping up the hub writes it itself — no wake-up of the
client's task, one syscall — which is what lets one process feed thousands
of clients. A client that is behind gets the chunk queued for its own task,
in a bounded buffer; one that falls `buffer` events behind is cut off (it
resumes from its Last-Event-ID), so a slow reader costs bounded memory and
never slows the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from gateway.core import jsonio
from gateway.events import bus, log
from gateway.events.model import TypeFilter, event_json
from gateway.logs import get_logger
from gateway.outage import unavailable

_log = get_logger(__name__)

# (seq, frame) pairs of one flush for one filter, and the same frames joined.
Chunk = tuple[tuple[tuple[int, bytes], ...], bytes]


@dataclass(eq=False)
class Subscription:
    tenant: str
    types: TypeFilter
    limit: int
    chunks: deque[Chunk] = field(default_factory=deque)
    queued: int = 0
    overflowed: bool = False
    shutdown: bool = False
    live: bool = False  # past replay: an overflow now ends the stream
    writing: bool = False
    waiting: bool = False  # the client's own writer is parked with nothing queued
    heartbeat_due: bool = False
    position: int = 0  # the last seq written to the client
    last_write: float = field(default_factory=time.monotonic)
    resp: web.StreamResponse | None = None
    protocol: Any = None
    transport: asyncio.BaseTransport | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, request: web.Request, resp: web.StreamResponse) -> None:
        self.resp = resp
        self.protocol = request.protocol
        self.transport = request.transport

    async def write(self, data: bytes) -> None:
        assert self.resp is not None
        self.writing = True
        try:
            await self.resp.write(data)
        finally:
            self.writing = False
        self.last_write = time.monotonic()

    def writable_now(self, first_seq: int, size: int) -> bool:
        """Can the hub write this chunk itself, at once, without waking the client's task?

        Only when nothing is queued or being written (order), the stream is live and past
        the chunk's start (no replay overlap), and the chunk fits under the transport's
        high-water mark with what it already buffers: then the write cannot pause the
        protocol, so it completes without suspending the hub.
        """
        if not (
            self.live
            and self.waiting
            and not self.writing
            and not self.chunks
            and not self.closed
            and first_seq > self.position
            and self.protocol is not None
            and not self.protocol.writing_paused
        ):
            return False
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        _, high = transport.get_write_buffer_limits()  # type: ignore[attr-defined]
        return transport.get_write_buffer_size() + size + 64 <= high  # type: ignore[attr-defined]

    def push(self, chunk: Chunk) -> None:
        if self.overflowed or self.shutdown:
            return
        n = len(chunk[0])
        # An empty buffer takes any chunk (it is shared with every other client of the tenant),
        # so one big burst does not cut off clients that are keeping up.
        if self.queued and self.queued + n > self.limit:
            self.overflowed = True
            self.chunks.clear()
            self.queued = 0
            self.wakeup.set()
            if self.live:
                self._abort_if_blocked()
            return
        self.chunks.append(chunk)
        self.queued += n
        self.wakeup.set()

    def take(self) -> list[Chunk]:
        out = list(self.chunks)
        self.chunks.clear()
        self.queued = 0
        return out

    def restart_replay(self) -> None:
        """Forget what was buffered (the next replay pass reads it from the log)."""
        self.chunks.clear()
        self.queued = 0
        self.overflowed = False

    @property
    def closed(self) -> bool:
        return self.shutdown or (self.live and self.overflowed)

    def close(self) -> None:
        self.shutdown = True
        self.wakeup.set()
        self._abort_if_blocked()

    def _abort_if_blocked(self) -> None:
        # A writer stuck on a client that stopped reading would never see the flag.
        if self.writing and self.transport is not None:
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                abort()


class Hub:
    def __init__(
        self,
        db: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        flush_interval: float = 0.02,
        resync_interval: float = 5.0,
        heartbeat: float = 15.0,
        fill_batch: int = 1000,
    ) -> None:
        self.db = db
        self.redis = redis
        self.flush_interval = flush_interval
        self.resync_interval = resync_interval
        self.heartbeat = heartbeat
        self.fill_batch = fill_batch
        self.last_seq = 0
        self.filled = 0  # events read from the log because the bus skipped them
        self.received = 0
        self._subs: dict[str, set[Subscription]] = {}
        self._pending: dict[str, list[tuple[int, str, bytes]]] = {}
        self._flush_due = asyncio.Event()
        self._pending_since = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._closed = False
        self._lost = False  # the bus or the log is unreachable (said once until it is back)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self._subscribe()
        self.last_seq = await log.max_seq(self.db)
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name="events-hub:receive"),
            asyncio.create_task(self._heartbeat_loop(), name="events-hub:heartbeat"),
            asyncio.create_task(self._flusher(), name="events-hub:flush"),
        ]

    async def _subscribe(self) -> None:
        """Subscribe and wait for the server's confirmation (only then is nothing missed)."""
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        self._pubsub = self.redis.pubsub()
        await self._pubsub.psubscribe(bus.PATTERN)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = await self._pubsub.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "psubscribe":
                return
        raise TimeoutError("Redis did not confirm the event subscription")

    async def close(self) -> None:
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    # --- clients ------------------------------------------------------------------------

    def subscribe(self, tenant: str, types: TypeFilter, limit: int) -> Subscription:
        sub = Subscription(tenant=tenant, types=types, limit=limit)
        if self._closed:
            sub.shutdown = True
        self._subs.setdefault(tenant, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.tenant)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.tenant]

    @property
    def client_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # --- the bus ------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        # Until a subscription is confirmed again, nothing else is tried: a resubscribe that
        # met the outage leaves a pubsub without a connection, whose every read then failed
        # with RuntimeError (not a Redis error) forever, and live events never came back.
        resubscribe = False
        while not self._closed:
            try:
                if resubscribe:
                    await self._subscribe()
                    resubscribe = False
                    await self._resync()  # what the bus carried while we were away
                msg = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self.resync_interval
                )
                if msg is None:
                    await self._resync()
                elif msg["type"] == "pmessage":
                    await self._on_message(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not self._lost:  # once per outage, not every half second of it
                    _log.warning("event bus connection lost; resubscribing", error=repr(exc))
                self._lost = True
                resubscribe = True
                await asyncio.sleep(0.5)
            except Exception as exc:
                if unavailable(exc) is None:
                    _log.exception("event hub failed to handle a message")
                elif not self._lost:  # PostgreSQL away (the log): said once, no traceback
                    _log.warning("event hub cannot read the event log", error=repr(exc))
                    self._lost = True
                await asyncio.sleep(0.5)
            else:
                self._lost = False

    async def _on_message(self, channel: bytes, data: bytes) -> None:
        head = jsonio.loads(data)
        seq = head["id"]
        self.received += 1
        if seq <= self.last_seq:
            return  # already dispatched (a republish or a gap we filled)
        if seq > self.last_seq + 1:
            await self._fill(seq)
        self.last_seq = seq
        self._enqueue(bus.tenant_of(channel), seq, head["type"], data)

    async def _fill(self, before: int | None) -> None:
        """Dispatch, from the log, every event after last_seq and below `before`."""
        while True:
            rows = await log.global_range(self.db, self.last_seq, before, self.fill_batch)
            for row in rows:
                self.filled += 1
                self.last_seq = row["seq"]
                self._enqueue(
                    str(row["tenant_id"]), row["seq"], row["type"], event_json(row).encode()
                )
            if len(rows) < self.fill_batch:
                return

    async def _resync(self) -> None:
        if await log.max_seq(self.db) > self.last_seq:
            await self._fill(None)

    # --- dispatch -----------------------------------------------------------------------

    def _enqueue(self, tenant: str, seq: int, type_: str, data: bytes) -> None:
        if tenant not in self._subs:
            return
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), data)
        self._pending.setdefault(tenant, []).append((seq, type_, frame))
        if not self._flush_due.is_set():
            self._pending_since = time.monotonic()
            self._flush_due.set()

    async def _flusher(self) -> None:
        while True:
            await self._flush_due.wait()
            # Gather what else arrives, but never hold the oldest pending event longer than
            # flush_interval: when delivery itself is slow, events already waited enough.
            hold = self.flush_interval - (time.monotonic() - self._pending_since)
            if hold > 0:
                await asyncio.sleep(hold)
            self._flush_due.clear()
            pending, self._pending = self._pending, {}
            for tenant, events in pending.items():
                try:
                    await self._deliver(tenant, events)
                except Exception:  # never let one bad client stop delivery to the others
                    _log.exception("event hub failed to deliver", tenant_id=tenant)

    async def _deliver(self, tenant: str, events: list[tuple[int, str, bytes]]) -> None:
        subs = self._subs.get(tenant)
        if not subs:
            return
        by_filter: dict[Any, Chunk | None] = {}
        for sub in list(subs):
            key = sub.types.key()
            if key not in by_filter:
                pairs = tuple((s, f) for s, t, f in events if sub.types.matches(t))
                by_filter[key] = (pairs, b"".join(f for _, f in pairs)) if pairs else None
            chunk = by_filter[key]
            if chunk is None:
                continue
            if sub.writable_now(chunk[0][0][0], len(chunk[1])):
                # The common case, written here: no wake-up of the client's task.
                sub.position = chunk[0][-1][0]
                try:
                    await sub.write(chunk[1])
                except Exception as exc:
                    if not isinstance(exc, ConnectionError):
                        _log.warning("closing an event stream after a write error", error=repr(exc))
                    sub.close()
            else:
                sub.push(chunk)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat / 4))
            due = time.monotonic() - self.heartbeat
            for subs in self._subs.values():
                for sub in subs:
                    if sub.last_write <= due:
                        sub.heartbeat_due = True
                        sub.wakeup.set()
