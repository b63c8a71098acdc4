"""The SSE hub: one per API process, fanning the Redis bus out to local stream clients.

It pattern-subscribes to every tenant channel, so it sees the global seq and
can tell when a message went missing (a Redis reconnect, a sequencer that died
between commit and publish): a jump from seq 41 to 45 makes it read 42-44 from
the log before dispatching 45, and while idle it checks the log's tail every
`resync_interval` so a lost *last* message is found too. Clients therefore get
events strictly in seq order with nothing skipped.

Dispatch: an event that finds the hub idle goes out at once; while events keep
coming, they are flushed at most once per `flush_interval`, so a client gets
one write per burst. Clients that see the same bytes (one tenant, one type
filter, one framing) form a group, and a group's clients that are keeping up —
live, parked, nothing queued, nothing left in their transport's buffer — are
written by the hub itself in one C-level loop over their transports (`map` of
`transport.write`): no Python per client per event, no wake-up of their tasks;
the frames are encoded once per group. A client whose transport did not take a
write at once leaves that set: its chunks are then queued for its own task, in a
bounded buffer; one that falls `buffer` events behind is cut off (it resumes
from its Last-Event-ID), so a slow reader costs bounded memory and never slows
the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
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
from gateway.stopping import cancel_and_wait

_log = get_logger(__name__)

# (seq, frame) pairs of one flush for one filter, and the same frames joined.
Chunk = tuple[tuple[tuple[int, bytes], ...], bytes]
KEEPALIVE = b": keepalive\n\n"
# A chunk bigger than this goes through the clients' own tasks (their writes wait for
# drain): written directly it could overrun a transport's high-water mark.
DIRECT_MAX = 32 * 1024
_IS_CLOSING = operator.methodcaller("is_closing")
_BUFFERED = operator.methodcaller("get_write_buffer_size")


def _consume(it: Any) -> None:
    deque(it, maxlen=0)  # runs an iterator to its end in C


@dataclass(eq=False)
class Group:
    """The subscriptions of one tenant that are sent the same bytes (type filter, framing)."""

    types: TypeFilter
    chunked: bool  # HTTP/1.1 chunked transfer encoding: the hub frames direct writes itself
    direct: dict[Any, Subscription] = field(default_factory=dict)  # transport -> sub
    others: set[Subscription] = field(default_factory=set)
    position: int = 0  # the last seq written to the direct set
    last_write: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.direct) + len(self.others)

    def encode(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def demote(self, sub: Subscription) -> None:
        """Out of the direct set: its chunks are queued for its own task from now on."""
        if sub.direct:
            self.direct.pop(sub.transport, None)
            sub.direct = False
            sub.position = max(sub.position, self.position)
            sub.last_write = max(sub.last_write, self.last_write)
            self.others.add(sub)

    def write_direct(self, data: bytes, last_seq: int | None) -> None:
        """Write `data` (already framed) to every direct client, in C; then demote those
        whose transport kept some of it (or is closing)."""
        for transport in list(filter(_IS_CLOSING, self.direct)):
            sub = self.direct[transport]
            self.demote(sub)
            sub.close()
        try:
            _consume(map(operator.methodcaller("write", data), self.direct))
        except Exception as exc:  # which clients got it is unknown: they all resume instead
            _log.warning("closing event streams after a write error", error=repr(exc))
            for sub in list(self.direct.values()):
                self.demote(sub)
                sub.close()
            return
        if last_seq is not None:
            self.position = last_seq
        self.last_write = time.monotonic()
        for transport in list(filter(_BUFFERED, self.direct)):
            self.demote(self.direct[transport])


@dataclass(eq=False)
class Subscription:
    tenant: str
    types: TypeFilter
    limit: int
    hub: Hub | None = None
    group: Group | None = None
    chunks: deque[Chunk] = field(default_factory=deque)
    queued: int = 0
    overflowed: bool = False
    shutdown: bool = False
    live: bool = False  # past replay: an overflow now ends the stream
    writing: bool = False
    direct: bool = False  # in its group's direct set: the hub writes to it
    heartbeat_due: bool = False
    position: int = 0  # the last seq written to the client (while direct: see Group.position)
    last_write: float = field(default_factory=time.monotonic)
    resp: web.StreamResponse | None = None
    protocol: Any = None
    transport: Any = None
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

    def park(self) -> None:
        """About to wait with nothing to write: join the direct set if the hub can write
        to this client at once from now on.

        Only when the stream is live, nothing is queued or being written (order), the
        transport holds nothing (a write cannot pause it) and the position is not ahead
        of what the hub has dispatched (a replay that read past the bus would overlap)."""
        group, transport = self.group, self.transport
        if (
            group is None
            or self.hub is None
            or self.direct
            or not self.live
            or self.chunks
            or self.closed
            or self.writing
            or self.heartbeat_due
            or self.position > self.hub.dispatched
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
            or self.protocol is None
            or self.protocol.writing_paused
        ):
            return
        group.others.discard(self)
        group.direct[transport] = self
        self.direct = True

    def unpark(self) -> None:
        if self.direct and self.group is not None:
            self.group.demote(self)

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
        self.unpark()
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
        self.dispatched = 0  # the last seq handed to the clients (directly or queued)
        self._subs: dict[str, set[Subscription]] = {}
        self._groups: dict[str, dict[Any, Group]] = {}
        self._pending: dict[str, list[tuple[int, str, bytes]]] = {}
        self._flush_due = asyncio.Event()
        self._last_flush = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._closed = False
        self._lost = False  # the bus or the log is unreachable (said once until it is back)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self._subscribe()
        self.last_seq = self.dispatched = await log.max_seq(self.db)
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
        for task in self._tasks:  # bounded: a loop in redis-py may swallow one cancel
            await cancel_and_wait(task)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    # --- clients ------------------------------------------------------------------------

    def subscribe(
        self, tenant: str, types: TypeFilter, limit: int, *, chunked: bool = False
    ) -> Subscription:
        """Register a client; `chunked`: its response uses chunked transfer encoding."""
        sub = Subscription(tenant=tenant, types=types, limit=limit, hub=self)
        if self._closed:
            sub.shutdown = True
        self._subs.setdefault(tenant, set()).add(sub)
        groups = self._groups.setdefault(tenant, {})
        key = (types.key(), chunked)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(types, chunked)
        group.others.add(sub)
        sub.group = group
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.unpark()
        subs = self._subs.get(sub.tenant)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.tenant]
        group = sub.group
        if group is not None:
            group.others.discard(sub)
            groups = self._groups.get(sub.tenant, {})
            if not group:
                groups.pop((group.types.key(), group.chunked), None)
                if not groups:
                    self._groups.pop(sub.tenant, None)

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
            if not self._pending:
                self.dispatched = seq  # nobody here to send it to, nothing before it waits
            return
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), data)
        self._pending.setdefault(tenant, []).append((seq, type_, frame))
        self._flush_due.set()

    async def _flusher(self) -> None:
        while True:
            await self._flush_due.wait()
            # An event that finds the hub idle goes out at once; while events keep coming,
            # at most one flush per flush_interval: one write per client per burst.
            hold = self._last_flush + self.flush_interval - time.monotonic()
            if hold > 0:
                await asyncio.sleep(hold)
            self._flush_due.clear()
            self._last_flush = time.monotonic()
            upto = self.last_seq  # every event up to here is pending now, or had no client
            pending, self._pending = self._pending, {}
            for tenant, events in pending.items():
                try:
                    self._deliver(tenant, events)
                except Exception:  # never let one bad client stop delivery to the others
                    _log.exception("event hub failed to deliver", tenant_id=tenant)
            self.dispatched = max(self.dispatched, upto)

    def _deliver(self, tenant: str, events: list[tuple[int, str, bytes]]) -> None:
        """Hand one flush to the tenant's clients (synchronous: nothing moves meanwhile)."""
        by_filter: dict[Any, Chunk | None] = {}
        for group in list(self._groups.get(tenant, {}).values()):
            key = group.types.key()
            if key not in by_filter:
                pairs = tuple((s, f) for s, t, f in events if group.types.matches(t))
                by_filter[key] = (pairs, b"".join(f for _, f in pairs)) if pairs else None
            chunk = by_filter[key]
            if chunk is None:
                continue
            if group.direct and len(chunk[1]) > DIRECT_MAX:
                # Too big to write without waiting: every client's own task takes it.
                for sub in list(group.direct.values()):
                    group.demote(sub)
            others = list(group.others)  # before the write: who it demotes already has it
            if group.direct:
                group.write_direct(group.encode(chunk[1]), chunk[0][-1][0])
            for sub in others:
                sub.push(chunk)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat / 4))
            due = time.monotonic() - self.heartbeat
            for groups in list(self._groups.values()):
                for group in list(groups.values()):
                    if group.direct and group.last_write <= due:
                        group.write_direct(group.encode(KEEPALIVE), None)
            for subs in self._subs.values():
                for sub in subs:
                    if not sub.direct and sub.last_write <= due:
                        sub.heartbeat_due = True
                        sub.wakeup.set()
