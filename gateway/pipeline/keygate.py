"""One try per Idempotency-Key at a time, in every process: duplicates wait, then replay.

A keyed request claims (tenant, key) before any work, in one committed statement
(`idempotency.begin`): an in-flight row with an owner and a lease. Until then it spends
nothing -- no trunk channel, no rate-limit token, no guardrail chain. A duplicate that
finds the key in flight waits for the answer and replays it:

- in this process, behind the first try (an asyncio lock per key, no database traffic);
- in another process, polling the row with backoff (one poller per key per process).

The first try's transaction (group commit) stores the answer only while it still owns the
claim, so a try whose lease was taken over cannot store a second answer. While it works, its
lease is renewed; a try that died (or failed with an error that is not stored, which gives
the claim back at once) leaves the key to the next waiter, which runs the work itself.
Every wait is bounded: a duplicate still waiting after `wait` seconds is answered 409
`idempotency_key_in_use` with Retry-After, never a second concurrent run of the work.

Requests without a key never come here: their path is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

import asyncpg

from gateway.batching import Coalescer
from gateway.core.errors import Problem
from gateway.http import idempotency
from gateway.logs import get_logger
from gateway.pipeline.groupcommit import Outcome
from gateway.stopping import cancel_and_wait

log = get_logger(__name__)

Work = Callable[[idempotency.Claim], Awaitable[Outcome]]


class KeyBusy(Exception):
    """A key's lock was not free within the time allowed."""


class KeyLocks:
    """One asyncio lock per key while anyone holds or waits for it (no unbounded growth)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold `key`'s lock; KeyBusy if it is not ours within `timeout` seconds."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            if users:  # someone holds or waits for it (else it is free: no timer to arm)
                try:
                    async with asyncio.timeout(timeout):
                        await lock.acquire()
                except TimeoutError:
                    raise KeyBusy from None
            else:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class KeyGate:
    """Shared by every keyed write path (messages, calls): run `work` once per key.

    Round trips: the claims of concurrent requests are taken by one statement
    (`idempotency.begin_many` through a Coalescer), and one renewer task per gate extends the
    leases of the tries that work for long (none, usually) — no task per request.
    """

    def __init__(
        self,
        db: asyncpg.Pool,
        *,
        lease: float,
        wait: float,
        poll_initial: float = 0.005,
        poll_max: float = 0.1,
    ) -> None:
        self.db = db
        self.lease = lease
        self.wait = wait
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self._locks = KeyLocks()
        self._begin: Coalescer[idempotency.Claim, idempotency.Begun] = Coalescer(
            lambda claims: idempotency.begin_many(self.db, claims, self.lease),
            name="idempotency-begin",
        )
        # The claims this process works under, by owner: when each was taken or last renewed.
        self._held: dict[uuid.UUID, tuple[idempotency.Claim, float]] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop the renewer and the claims on their way (the pipeline's close calls this)."""
        renewer, self._renewer = self._renewer, None
        await cancel_and_wait(renewer)  # bounded, even if its query swallowed the cancel
        await self._begin.aclose()

    async def run(self, claim: idempotency.Claim, work: Work) -> Outcome:
        """The stored answer for `claim`'s key, or `work`'s, run only while owning the key.

        `work` gets the claim with its owner set: it must hand that claim to the transaction
        that stores the answer. An Outcome it returns is stored (or replayed) by then; a
        Problem it raises was stored nowhere, so the key is given back for the next try.
        """
        deadline = asyncio.get_running_loop().time() + self.wait
        mine = idempotency.Claim(  # (dataclasses.replace costs ~4x this)
            claim.tenant_id, claim.key, claim.method, claim.path, claim.digest, uuid.uuid4()
        )
        try:
            async with self._locks.hold(claim.ident, timeout=self.wait):
                stored = await self._wait_for_turn(mine, deadline)
                return stored if stored is not None else await self._own(mine, work)
        except KeyBusy:
            # The first try in this process is still working (and renewing its lease).
            raise idempotency.in_use(claim.key, self.lease) from None

    async def _wait_for_turn(self, mine: idempotency.Claim, deadline: float) -> Outcome | None:
        """None once `mine` owns the key; the replayed answer if the key was answered."""
        loop = asyncio.get_running_loop()
        backoff = self.poll_initial
        while True:
            found = await self._begin.submit(mine)  # a Problem for this claim is raised
            if found is True:
                return None
            if isinstance(found, idempotency.Replay):
                return Outcome.replay(found)
            assert isinstance(found, idempotency.InFlight)
            left = deadline - loop.time()
            if left <= 0:
                raise idempotency.in_use(mine.key, found.lease_left)
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, self.poll_max)

    async def _own(self, mine: idempotency.Claim, work: Work) -> Outcome:
        assert mine.owner is not None
        loop = asyncio.get_running_loop()
        self._held[mine.owner] = (mine, loop.time())
        if self._renewer is None:
            self._renewer = loop.create_task(self._renew(), name="idempotency-leases")
        try:
            return await work(mine)
        except Problem:
            # A refusal that was not stored (validation, pool full, shutting down): the key
            # is free again at once. Anything else may still commit (a timed-out batch) or
            # is an outage: the lease lapses instead, and the commit is fenced by the owner.
            self._held.pop(mine.owner, None)
            await asyncio.shield(self._release(mine))
            raise
        finally:
            self._held.pop(mine.owner, None)

    async def _renew(self) -> None:
        """Every lease/3 s, renew the claims held for lease/6 s or more (so each is renewed
        before half its lease has gone); exits once none is held."""
        loop = asyncio.get_running_loop()
        try:
            while self._held:
                await asyncio.sleep(self.lease / 3)
                now = loop.time()
                due = [c for c, since in self._held.values() if now - since >= self.lease / 6]
                for mine in due:
                    assert mine.owner is not None
                    try:
                        kept = await idempotency.renew(self.db, mine, self.lease)
                    except Exception as exc:
                        log.warning("idempotency lease renewal failed", error=repr(exc))
                        continue
                    if mine.owner in self._held:
                        if kept:
                            self._held[mine.owner] = (mine, loop.time())
                        else:  # answered, or lost to a waiter after a stall: nothing to keep
                            del self._held[mine.owner]
        finally:
            if self._renewer is asyncio.current_task():
                self._renewer = None

    async def _release(self, mine: idempotency.Claim) -> None:
        try:
            await idempotency.release(self.db, mine)
        except Exception as exc:  # the lease lapses instead
            log.warning("idempotency claim release failed", error=repr(exc))
