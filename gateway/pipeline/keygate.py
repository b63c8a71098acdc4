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
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

import asyncpg

from gateway.core.errors import Problem
from gateway.http import idempotency
from gateway.logs import get_logger
from gateway.pipeline.groupcommit import Outcome

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
            try:
                async with asyncio.timeout(timeout):
                    await lock.acquire()
            except TimeoutError:
                raise KeyBusy from None
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
    """Shared by every keyed write path (messages, calls): run `work` once per key."""

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

    async def run(self, claim: idempotency.Claim, work: Work) -> Outcome:
        """The stored answer for `claim`'s key, or `work`'s, run only while owning the key.

        `work` gets the claim with its owner set: it must hand that claim to the transaction
        that stores the answer. An Outcome it returns is stored (or replayed) by then; a
        Problem it raises was stored nowhere, so the key is given back for the next try.
        """
        deadline = asyncio.get_running_loop().time() + self.wait
        mine = dataclasses.replace(claim, owner=uuid.uuid4())
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
            found = await idempotency.begin(self.db, mine, self.lease)
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
        renewer = asyncio.create_task(self._renew(mine), name="idempotency-lease")
        try:
            return await work(mine)
        except Problem:
            # A refusal that was not stored (validation, pool full, shutting down): the key
            # is free again at once. Anything else may still commit (a timed-out batch) or
            # is an outage: the lease lapses instead, and the commit is fenced by the owner.
            renewer.cancel()
            await asyncio.shield(self._release(mine))
            raise
        finally:
            renewer.cancel()

    async def _renew(self, mine: idempotency.Claim) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                if not await idempotency.renew(self.db, mine, self.lease):
                    return  # answered, or lost to a waiter after a stall: nothing to keep
            except Exception as exc:
                log.warning("idempotency lease renewal failed", error=repr(exc))

    async def _release(self, mine: idempotency.Claim) -> None:
        try:
            await idempotency.release(self.db, mine)
        except Exception as exc:  # the lease lapses instead
            log.warning("idempotency claim release failed", error=repr(exc))
