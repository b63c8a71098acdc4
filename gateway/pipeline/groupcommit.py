"""Group commit: concurrent accepts share one transaction.

A durable accept costs a WAL flush at commit, and PostgreSQL serializes commits that
carry NOTIFY. Committed one per request, N concurrent accepts pay N flushes, N turns
at the notify lock and ~7 round trips each. Here a request hands over its prepared
write (decided outside any transaction, see accept.py) and waits; a flusher takes
everything queued, writes it with set-based statements in one transaction (or, given
`write_many`, one statement that is its own transaction: messages, see acceptwrite.py),
and answers every request only after that commit. Under light load a batch is a single
write and the latency is one transaction, as before: nothing waits for company.

Idempotency claims live in the same transaction as the writes they protect, so the
Stripe semantics hold per request: duplicates inside one batch follow their first
(the same answer, replayed), and a batch racing another process's batch on a key
waits for it and then replays its stored answer.

A batch that fails as a whole is re-run one write per transaction, so a bad write
answers its own error and never takes its neighbours down. Plans carry their ids, so
a re-run after an ambiguous commit cannot duplicate a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from gateway.core.errors import Problem
from gateway.http import idempotency
from gateway.http.metrics import Registry
from gateway.logs import get_logger
from gateway.outage import unavailable
from gateway.stopping import cancel_and_wait

log = get_logger(__name__)
P = TypeVar("P")
REPLAYED = {"Idempotent-Replayed": "true"}


@dataclass(frozen=True)
class Outcome:
    """What the API answers for one accepted (or refused) request."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def replayed(self) -> bool:
        return "Idempotent-Replayed" in self.headers

    @classmethod
    def replay(cls, stored: idempotency.Replay) -> Outcome:
        return cls(stored.status, stored.body, dict(REPLAYED))


PersistMany = Callable[[asyncpg.Connection, list[P]], Awaitable[list[Outcome]]]
# A batch in one statement, its own transaction (see pipeline/acceptwrite.py): given the
# plans and claims (None: no key) of the batch's first writes of each key, it writes those
# whose key it takes (or that have none) and stores those keys' answers with the claim.
# Per write: its Outcome, or None where the key was not taken. None for a batch it cannot
# write so (having sent nothing): the committer's transaction of several statements then.
WriteMany = Callable[
    [asyncpg.Connection, list[P], list[idempotency.Claim | None]],
    Awaitable[list[Outcome | None] | None],
]


@dataclass
class _Write(Generic[P]):
    plan: P
    claim: idempotency.Claim | None
    answer: asyncio.Future[Outcome]


class GroupCommitter(Generic[P]):
    """Owns the flusher task and its batches; `close()` lets every batch finish."""

    def __init__(
        self,
        db: asyncpg.Pool,
        persist_many: PersistMany[P],
        *,
        name: str,
        max_batch: int = 256,
        max_in_flight: int = 2,
        max_queued: int = 10_000,
        timeout: float = 30.0,
        metrics: Registry | None = None,
        write_many: WriteMany[P] | None = None,
    ) -> None:
        self.db = db
        self.persist_many = persist_many
        self.write_many = write_many
        self.name = name
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.timeout = timeout
        self._queue: asyncio.Queue[_Write[P]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._batches: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        registry = metrics or Registry()
        self._sizes = registry.histogram(
            "trunkline_group_commit_batch_writes", "Writes committed per group-commit transaction"
        )
        self._seconds = registry.histogram(
            "trunkline_group_commit_seconds", "Duration of one group-commit transaction"
        )

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._run(), name=f"group-commit:{self.name}")

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking writes, commit what is queued, and wait for batches in flight."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # (3.11's wait_for can swallow our cancel)
                await self._queue.join()
        await cancel_and_wait(self._flusher)
        while not self._queue.empty():
            self._resolve(self._queue.get_nowait(), _unavailable("the server is shutting down"))

    async def submit(self, plan: P, claim: idempotency.Claim | None = None) -> Outcome:
        """Queue one prepared write; return its answer once it is durable."""
        if self._closed or self._flusher is None:
            raise _unavailable("the server is shutting down")
        if self._queue.qsize() >= self.max_queued:
            raise _unavailable("too many writes are waiting to commit; retry shortly")
        loop = asyncio.get_running_loop()
        write = _Write(plan, claim, loop.create_future())
        self._queue.put_nowait(write)
        # A caller that gives up (cancelled, or out of time) only settles its own answer: the
        # batch its write is in goes on, and `_resolve` skips an answer already settled. (One
        # timer, no wait_for/shield: those cost two more futures and a task step per write.)
        timer = loop.call_later(self.timeout, _time_out, write.answer, self.timeout)
        try:
            return await write.answer
        finally:
            timer.cancel()

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = [await self._queue.get()]
            except BaseException:
                self._slots.release()
                raise
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._flush(batch))
            self._batches.add(task)
            task.add_done_callback(functools.partial(self._batch_done, writes=len(batch)))

    def _batch_done(self, task: asyncio.Task[None], *, writes: int) -> None:
        self._batches.discard(task)
        self._slots.release()
        for _ in range(writes):
            self._queue.task_done()

    async def _flush(self, batch: list[_Write[P]]) -> None:
        started = time.perf_counter()
        try:
            answers = await self._commit(batch)
        except Exception as exc:
            if unavailable(exc) is not None:
                # Our outage, not one write's fault: one by one would fail the same way. Each
                # caller answers 503; the outage monitor logs it once, not once per write.
                for write in batch:
                    self._resolve(write, exc)
                return
            if len(batch) == 1:
                log.exception("group commit failed", committer=self.name)
                self._resolve(batch[0], exc)
                return
            log.warning(
                "group commit failed; committing its writes one by one",
                committer=self.name,
                writes=len(batch),
                error=repr(exc),
            )
            for write in batch:
                await self._flush([write])
            return
        self._sizes.observe(len(batch), committer=self.name)
        self._seconds.observe(time.perf_counter() - started, committer=self.name)
        for write, answer in zip(batch, answers, strict=True):
            self._resolve(write, answer)

    async def _commit(self, batch: list[_Write[P]]) -> list[Outcome | Exception]:
        """One transaction: claim keys, persist what is ours to persist, record answers."""
        answers: list[Outcome | Exception | None] = [None] * len(batch)
        first: dict[Hashable, int] = {}  # the first write of each key in this batch
        for i, write in enumerate(batch):
            if write.claim is not None:
                first.setdefault(write.claim.ident, i)
        if self.write_many is None or not await self._write_at_once(batch, first, answers):
            await self._transaction(batch, first, answers)
        for i, write in enumerate(batch):  # duplicates inside the batch follow their first
            if write.claim is not None and first[write.claim.ident] != i:
                answers[i] = _follow(
                    write.claim,
                    batch[first[write.claim.ident]].claim,
                    answers[first[write.claim.ident]],
                )  # type: ignore[arg-type]
        return answers  # type: ignore[return-value]

    async def _write_at_once(
        self,
        batch: list[_Write[P]],
        first: dict[Hashable, int],
        answers: list[Outcome | Exception | None],
    ) -> bool:
        """The batch by `write_many`, one statement; False if it cannot take this batch."""
        assert self.write_many is not None
        lead = [i for i, w in enumerate(batch) if w.claim is None or first[w.claim.ident] == i]
        async with self.db.acquire() as conn:
            done = await self.write_many(
                conn, [batch[i].plan for i in lead], [batch[i].claim for i in lead]
            )
            if done is None:
                return False
            taken = []
            for i, outcome in zip(lead, done, strict=True):
                answers[i] = outcome
                if outcome is None:
                    taken.append(i)
            if taken:  # answered before, or held by another try: what is stored says which
                stored = await idempotency.answers_of(conn, [batch[i].claim for i in taken])  # type: ignore[misc]
                for i in taken:
                    found = stored[batch[i].claim.ident]  # type: ignore[union-attr]
                    answers[i] = _stored(found)
        return True

    async def _transaction(
        self,
        batch: list[_Write[P]],
        first: dict[Hashable, int],
        answers: list[Outcome | Exception | None],
    ) -> None:
        """The batch in one transaction of several statements (claims, `persist_many`,
        answers)."""
        async with self.db.acquire() as conn, conn.transaction():
            claimed = await idempotency.claim_many(conn, [batch[i].claim for i in first.values()])  # type: ignore[misc]
            for i in first.values():
                found = claimed[batch[i].claim.ident]  # type: ignore[union-attr]
                if found is not None:
                    answers[i] = _stored(found)
            mine = [
                i
                for i, w in enumerate(batch)
                if w.claim is None or (first[w.claim.ident] == i and answers[i] is None)
            ]
            outcomes = await self.persist_many(conn, [batch[i].plan for i in mine])
            for i, outcome in zip(mine, outcomes, strict=True):
                answers[i] = outcome
            await idempotency.record_many(
                conn,
                [
                    (c.tenant_id, c.key, answers[i].status, answers[i].body)  # type: ignore[union-attr]
                    for i in mine
                    if (c := batch[i].claim) is not None
                ],
            )

    @staticmethod
    def _resolve(write: _Write[P], answer: Outcome | BaseException) -> None:
        if write.answer.done():
            return
        if isinstance(answer, BaseException):
            write.answer.set_exception(answer)
            write.answer.exception()  # retrieved: a caller that gave up leaves no warning
        else:
            write.answer.set_result(answer)


def _stored(found: idempotency.Replay | Exception) -> Outcome | Exception:
    """What a key already taken answers: its stored answer replayed, or why not."""
    return Outcome.replay(found) if isinstance(found, idempotency.Replay) else found


def _follow(
    claim: idempotency.Claim, leader: idempotency.Claim, answer: Outcome | Exception
) -> Outcome | Exception:
    """A duplicate's answer, as if it had arrived just after its first committed."""
    if claim.digest != leader.digest:
        return idempotency.reused(claim.key)
    if isinstance(answer, Exception):
        return answer
    return Outcome(answer.status, answer.body, dict(REPLAYED))


def _time_out(answer: asyncio.Future[Outcome], after: float) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError(f"the write was not committed within {after:g} s"))


def _unavailable(detail: str) -> Problem:
    return Problem(detail, status=503, code="unavailable", headers={"Retry-After": "1"})
