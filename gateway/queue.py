"""The durable work queue in PostgreSQL.

Jobs are claimed with `FOR UPDATE SKIP LOCKED` under a lease, so any number
of worker processes share a queue and a worker killed mid-job loses nothing:
its lease runs out and the job is claimed again. A worker renews the leases of
every job in hand with one statement each lease/3, and a queue's owner may have
the claim read what its handler needs with each job (`Attach`): no read again. Workers sleep on
LISTEN/NOTIFY (sent once the enqueueing transaction has committed)
and otherwise only until the next scheduled retry or lease expiry, never in a
busy loop. Failures are retried with exponential backoff and full jitter until
the job's retry budget is spent; then it is `dead`, with its last error, for
an operator to inspect and replay. Our own outage — PostgreSQL or Redis
unreachable (gateway/outage.py) — is not the job's failure: the job is put back
after a short, capped wait without spending its budget (principle 11).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.db import defer_wake
from gateway.logs import bind, get_logger
from gateway.outage import Dependency, OutageMonitor, unavailable

if TYPE_CHECKING:
    from gateway.ops.counters import SharedCounters

log = get_logger(__name__)
NOTIFY_CHANNEL = "trunkline_jobs"


class RetryableError(Exception):
    """A transient failure: the job is retried with backoff while its budget lasts."""


class PermanentError(Exception):
    """A failure retrying cannot fix: the job goes straight to dead."""


class Reschedule(Exception):
    """Run the job again at `until` without spending its retry budget (e.g. calling hours).

    One clock (DESIGN.md, principle 12): the queue compares `run_at` with the database's
    `now()`, so an `until` computed on another clock (the process's, or one a test injects)
    must come with `now`, the instant of that same clock it was computed at. The job is then
    due `until - now` after the database's `now()`: a worker whose clock is behind the
    database's is not handed back, at once and again and again, a job it will only defer
    again. Without `now`, `until` must be on the database's clock (e.g. read from a row).
    """

    def __init__(self, until: datetime, reason: str, *, now: datetime | None = None) -> None:
        super().__init__(reason)
        self.until = until
        self.delay: float | None = None if now is None else (until - now).total_seconds()


@dataclass(frozen=True)
class Job:
    id: int
    queue: str
    tenant_id: uuid.UUID | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    trace_id: str | None
    # What the queue's owner asked the claim to read with the job (see `Attach`): its row,
    # read in the claim's statement, so the handler does not read it again.
    attached: asyncpg.Record | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_row(cls, row: asyncpg.Record, prefix: str = "") -> Job:
        """A job from its row; `prefix` "job_": a claim row with attached columns (Attach),
        kept on the job as `attached`."""
        return cls(
            row[f"{prefix}id"],
            row[f"{prefix}queue"],
            row[f"{prefix}tenant_id"],
            row[f"{prefix}payload"],
            row[f"{prefix}attempts"],
            row[f"{prefix}max_attempts"],
            row[f"{prefix}trace_id"],
            row if prefix else None,
        )


@dataclass(frozen=True)
class Attach:
    """Rows a queue's owner wants read in the claim's own statement, one per claimed job:
    `select` is a select list and `joins` the joins that produce it from `claimed` (the
    claimed jobs' rows: id, queue, tenant_id, payload, …). The job's own columns come back
    prefixed `job_`, so the attached columns keep their names (`Job.attached`)."""

    select: str
    joins: str


@dataclass(frozen=True)
class NewJob:
    queue: str
    payload: dict[str, Any]
    tenant_id: uuid.UUID | None = None
    trace_id: str | None = None
    max_attempts: int = 8
    run_at: datetime | None = None  # on the database's clock
    # Or: due this many seconds after the database's now() — for a time computed on another
    # clock (the guardrails' deferral), so that the queue's clock decides only the wait.
    run_after: float | None = None


_INSERT_JOBS = """
    INSERT INTO jobs (queue, tenant_id, payload, max_attempts, trace_id, run_at)
    SELECT q, t, p, m, tr,
           coalesce(r, now() + make_interval(secs => greatest(d, 0)), now())
    FROM unnest($1::text[], $2::uuid[], $3::jsonb[], $4::int[], $5::text[], $6::timestamptz[],
                $7::float8[])
         WITH ORDINALITY AS u(q, t, p, m, tr, r, d, ord)
    ORDER BY ord
    RETURNING id
"""
_ENQUEUE = f"WITH job AS ({_INSERT_JOBS}) SELECT array_agg(id ORDER BY id) FROM job"
_ENQUEUE_AND_NOTIFY = f"""
WITH job AS ({_INSERT_JOBS}),
wake AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', q) FROM (SELECT DISTINCT unnest($1::text[]) AS q) qs
)
SELECT (SELECT array_agg(id ORDER BY id) FROM job) WHERE (SELECT count(*) FROM wake) >= 0
"""


async def enqueue_many(conn: asyncpg.Connection, jobs: list[NewJob]) -> list[int]:
    """Add jobs inside the caller's transaction with one statement; they become visible
    on commit, and each queue's workers are woken once then. Ids in the given order."""
    if not jobs:
        return []
    queues = {j.queue for j in jobs}
    deferred = all([defer_wake(conn, NOTIFY_CHANNEL, q) for q in sorted(queues)])
    ids = await conn.fetchval(
        _ENQUEUE if deferred else _ENQUEUE_AND_NOTIFY,
        [j.queue for j in jobs],
        [j.tenant_id for j in jobs],
        [j.payload for j in jobs],
        [j.max_attempts for j in jobs],
        [j.trace_id for j in jobs],
        [j.run_at for j in jobs],
        [j.run_after for j in jobs],
    )
    return list(ids)


async def enqueue(
    conn: asyncpg.Connection,
    queue: str,
    payload: dict[str, Any],
    *,
    tenant_id: uuid.UUID | None = None,
    trace_id: str | None = None,
    max_attempts: int = 8,
    run_at: datetime | None = None,
    run_after: float | None = None,
) -> int:
    """Add one job inside the caller's transaction (see enqueue_many and NewJob)."""
    job = NewJob(queue, payload, tenant_id, trace_id, max_attempts, run_at, run_after)
    return (await enqueue_many(conn, [job]))[0]


def backoff_seconds(attempt: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter (spreads retries of many jobs that failed together)."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


_CLAIMED = """
WITH done AS (DELETE FROM jobs WHERE id = ANY($5::bigint[]) AND locked_by = $3),
claimed AS (
    UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_by = $3,
                    locked_until = now() + make_interval(secs => $4), updated_at = now()
    WHERE id IN (
        SELECT id FROM jobs
        WHERE queue = $1 AND id <> ALL($5::bigint[]) AND (
            (state = 'ready' AND run_at <= now()) OR (state = 'running' AND locked_until < now()))
        ORDER BY run_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING id, queue, tenant_id, payload, attempts, max_attempts, trace_id)
"""
_CLAIM = _CLAIMED + "SELECT * FROM claimed"


def _claim_attached(attach: Attach) -> str:
    return f"""{_CLAIMED}
SELECT claimed.id AS job_id, claimed.queue AS job_queue, claimed.tenant_id AS job_tenant_id,
       claimed.payload AS job_payload, claimed.attempts AS job_attempts,
       claimed.max_attempts AS job_max_attempts, claimed.trace_id AS job_trace_id,
       {attach.select}
FROM claimed {attach.joins}
"""


_NEXT_WAKE = """
SELECT least(
    (SELECT min(run_at) FROM jobs WHERE queue = $1 AND state = 'ready'),
    (SELECT min(locked_until) FROM jobs WHERE queue = $1 AND state = 'running')) - now()
"""


async def claim(
    db: asyncpg.Pool | asyncpg.Connection,
    queue: str,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    completed: list[int] | None = None,
    attach: Attach | None = None,
) -> list[Job]:
    """Claim up to `limit` due jobs; in the same statement, delete the `completed` ones
    (this worker's finished jobs), so a busy worker spends one commit per claim, not two,
    and read what `attach` asks for with each job."""
    sql = _CLAIM if attach is None else _claim_attached(attach)
    rows = await db.fetch(sql, queue, limit, worker_id, lease, completed or [])
    if attach is None:
        return [Job.from_row(r) for r in rows]
    return [Job.from_row(r, "job_") for r in rows]


async def complete(db: asyncpg.Pool | asyncpg.Connection, job: Job, worker_id: str) -> bool:
    """Delete a finished job; False if the lease was lost and another worker owns it now."""
    status = await db.execute(
        "DELETE FROM jobs WHERE id = $1 AND locked_by = $2", job.id, worker_id
    )
    return status == "DELETE 1"


async def retry_later(
    db: asyncpg.Pool | asyncpg.Connection, job: Job, worker_id: str, error: str, delay: float
) -> None:
    await db.execute(
        """
        UPDATE jobs SET state = 'ready', run_at = now() + make_interval(secs => $3), last_error = $4,
                        locked_by = NULL, locked_until = NULL, updated_at = now()
        WHERE id = $1 AND locked_by = $2
        """,
        job.id,
        worker_id,
        delay,
        error[:2000],
    )


async def reschedule(
    db: asyncpg.Pool | asyncpg.Connection,
    job: Job,
    worker_id: str,
    until: datetime,
    reason: str,
    *,
    delay: float | None = None,
) -> None:
    """Put a job back, due at `until` (database clock) or, given `delay`, that many seconds
    after the database's now() (see `Reschedule`)."""
    await db.execute(
        """
        UPDATE jobs SET state = 'ready',
                        run_at = CASE WHEN $5::float8 IS NULL THEN $3
                                      ELSE now() + make_interval(secs => greatest($5::float8, 0)) END,
                        attempts = greatest(attempts - 1, 0), last_error = $4,
                        locked_by = NULL, locked_until = NULL, updated_at = now()
        WHERE id = $1 AND locked_by = $2
        """,
        job.id,
        worker_id,
        until,
        f"rescheduled: {reason}"[:2000],
        delay,
    )


async def bury(
    db: asyncpg.Pool | asyncpg.Connection, job: Job, worker_id: str | None, error: str
) -> None:
    await db.execute(
        """
        UPDATE jobs SET state = 'dead', last_error = $3, dead_at = now(),
                        locked_by = NULL, locked_until = NULL, updated_at = now()
        WHERE id = $1 AND ($2::text IS NULL OR locked_by = $2)
        """,
        job.id,
        worker_id,
        error[:2000],
    )


async def extend_lease(db: asyncpg.Pool, job: Job, worker_id: str, lease: float) -> bool:
    return job.id in await extend_leases(db, [job.id], worker_id, lease)


async def extend_leases(
    db: asyncpg.Pool | asyncpg.Connection, job_ids: list[int], worker_id: str, lease: float
) -> set[int]:
    """Renew the leases of these running jobs with one statement; the ids still ours."""
    rows = await db.fetch(
        """
        UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
        WHERE id = ANY($1::bigint[]) AND locked_by = $2 RETURNING id
        """,
        job_ids,
        worker_id,
        lease,
    )
    return {r["id"] for r in rows}


async def list_dead(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant_id: uuid.UUID | None,
    *,
    limit: int = 100,
    before_id: int | None = None,
    queue_name: str | None = None,
) -> list[asyncpg.Record]:
    """A tenant's dead jobs by id, newest first; `tenant_id=None` (the operator's CLI): every
    tenant's, and jobs of no tenant."""
    return await db.fetch(
        """
        SELECT id, queue, tenant_id, payload, attempts, max_attempts, last_error, trace_id,
               created_at, dead_at
        FROM jobs WHERE state = 'dead' AND ($1::uuid IS NULL OR tenant_id = $1)
          AND ($3::bigint IS NULL OR id < $3) AND ($4::text IS NULL OR queue = $4)
        ORDER BY id DESC LIMIT $2
        """,
        tenant_id,
        limit,
        before_id,
        queue_name,
    )


async def replay_dead(
    conn: asyncpg.Connection, tenant_id: uuid.UUID | None, job_id: int
) -> asyncpg.Record | None:
    """Put a dead job back in its queue with a fresh retry budget (`tenant_id=None`: the
    operator's CLI, whichever tenant it belongs to)."""
    row = await conn.fetchrow(
        """
        UPDATE jobs SET state = 'ready', attempts = 0, run_at = now(), dead_at = NULL, updated_at = now()
        WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND state = 'dead'
        RETURNING id, queue, payload, trace_id
        """,
        job_id,
        tenant_id,
    )
    if row is not None and not defer_wake(conn, NOTIFY_CHANNEL, row["queue"]):
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, row["queue"])
    return row


async def postpone(
    db: asyncpg.Pool | asyncpg.Connection, job: Job, worker_id: str, delay: float, reason: str
) -> None:
    """Put a job back, due in `delay` seconds, giving back the attempt its claim counted:
    it waited for our infrastructure, it did not fail."""
    await db.execute(
        """
        UPDATE jobs SET state = 'ready', run_at = now() + make_interval(secs => $3),
                        attempts = greatest(attempts - 1, 0), last_error = $4,
                        locked_by = NULL, locked_until = NULL, updated_at = now()
        WHERE id = $1 AND locked_by = $2
        """,
        job.id,
        worker_id,
        delay,
        reason[:2000],
    )


Handler = Callable[[Job], Awaitable[None]]
DeadHook = Callable[[Job, str], Awaitable[None]]
# Records a job's final failure in the transaction that buries it: the owner's row and the
# dead letter change together, so no crash leaves one without the other.
BuryHook = Callable[[asyncpg.Connection, Job, str], Awaitable[None]]


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Worker:
    """Runs one queue's jobs with bounded concurrency until `stopping` is set.

    `on_dead` lets the owner of the work record the final failure (e.g. mark
    the message failed) when the retry budget is spent; `on_bury` does it in the
    transaction that buries the job (use it when the record must never lag the burial).
    """

    db: asyncpg.Pool
    database_url: str
    queue: str
    handler: Handler
    concurrency: int = 8
    lease: float = 30.0
    idle_wait_max: float = 5.0
    on_dead: DeadHook | None = None
    on_bury: BuryHook | None = None
    worker_id: str = ""
    # While PostgreSQL or Redis is unreachable jobs wait, at most this long between tries,
    # without spending their retry budget; `outages` (the process's monitor) lets a worker
    # skip the handler while an outage is known, and log it once instead of per job.
    outage_wait_max: float = 5.0
    outages: OutageMonitor | None = None
    # trunkline_job_attempts_total / trunkline_job_retries_total, summed across processes
    counters: SharedCounters | None = None
    # Rows the claim reads with each job (Job.attached): the handler need not read them again.
    attach: Attach | None = None

    def __post_init__(self) -> None:
        self.worker_id = self.worker_id or worker_identity()
        self._outage_streak = 0  # consecutive jobs that met an outage: the wait grows with it
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._running: set[asyncio.Task[None]] = set()
        # The jobs in hand whose leases the renewal loop keeps (one statement per interval
        # for all of them, not a timer and a statement per job).
        self._leased: set[int] = set()
        # Finished jobs not yet deleted: the next claim deletes them. Until then a crash
        # only re-runs them after their lease, as a crash just after the handler always could.
        self._completed: list[int] = []

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload == self.queue:
            self._wake.set()

    async def _listen(self) -> asyncpg.Connection:
        listener = await asyncpg.connect(self.database_url)
        await listener.add_listener(NOTIFY_CHANNEL, self._notified)
        return listener

    async def run(self, stopping: asyncio.Event) -> None:
        listener = await self._listen()
        renewal = asyncio.create_task(self._renew_leases(), name=f"leases:{self.queue}")
        try:
            while not stopping.is_set():
                if listener.is_closed():  # PostgreSQL restarted: listen on a new connection
                    listener = await self._listen()
                self._wake.clear()
                free = self.concurrency - len(self._running)
                jobs = await self._claim(free) if free or self._completed else []
                for job in jobs:
                    await self._slots.acquire()
                    task = asyncio.create_task(
                        self._execute(job), name=f"job:{self.queue}:{job.id}"
                    )
                    self._running.add(task)
                    task.add_done_callback(self._finished)
                if jobs and len(jobs) == free:
                    continue  # there may be more ready work
                await self._idle(stopping, busy=len(self._running) == self.concurrency)
        except asyncio.CancelledError:
            for task in self._running:  # killed: jobs in hand stop too (their leases will lapse)
                task.cancel()
            raise
        finally:
            try:
                # Let jobs in hand finish; if the supervisor's deadline cancels us, gather cancels them.
                if self._running:
                    await asyncio.gather(*self._running, return_exceptions=True)
                if self._completed:
                    await self._claim(0)
            finally:
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
                await listener.close()

    async def _claim(self, limit: int) -> list[Job]:
        done, self._completed = self._completed, []
        try:
            return await claim(
                self.db,
                self.queue,
                self.worker_id,
                limit=limit,
                lease=self.lease,
                completed=done,
                attach=self.attach,
            )
        except BaseException:
            self._completed[:0] = done  # still ours to delete
            raise

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()
        self._wake.set()

    async def _idle(self, stopping: asyncio.Event, *, busy: bool) -> None:
        """Sleep until notified, a slot frees, the next scheduled job is due, or stopping.
        With every slot busy only a freed slot matters: no need to ask when work is due."""
        timeout = self.idle_wait_max
        delay = None if busy else await self.db.fetchval(_NEXT_WAKE, self.queue)
        if delay is not None:
            timeout = max(0.0, min(timeout, delay.total_seconds()))
        stop_wait = asyncio.create_task(stopping.wait())
        wake_wait = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                {stop_wait, wake_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop_wait.cancel()
            wake_wait.cancel()

    async def _renew_leases(self) -> None:
        """Every lease/3 seconds, renew the leases of every job in hand with one statement.
        A job whose lease was lost (another worker owns it now) is no longer renewed; with
        PostgreSQL away, the next beat tries again (the leases may still hold)."""
        while True:
            await asyncio.sleep(self.lease / 3)
            held = list(self._leased)
            if not held:
                continue
            try:
                kept = await extend_leases(self.db, held, self.worker_id, self.lease)
            except Exception as exc:
                if self._outage(exc) is None:
                    log.exception("could not extend the leases of running jobs", jobs=len(held))
                continue
            for job_id in held:
                if job_id not in kept and job_id in self._leased:
                    self._leased.discard(job_id)
                    log.warning("lost the lease of a running job", job_id=job_id)

    async def _execute(self, job: Job) -> None:
        bind(job_id=job.id, queue=job.queue, trace_id=job.trace_id)
        self._leased.add(job.id)
        try:
            if job.attempts > job.max_attempts:
                await self._dead(
                    job, "retry budget exhausted (the job was reclaimed after its lease expired)"
                )
                return
            ran = False
            try:
                await self._known_outage()
                ran = True
                await self.handler(job)
            except Reschedule as exc:
                self._count(job, "rescheduled")
                await reschedule(self.db, job, self.worker_id, exc.until, str(exc), delay=exc.delay)
            except PermanentError as exc:
                self._count(job, "dead")
                await self._dead(job, f"permanent: {exc}")
            except Exception as exc:
                dependency = self._outage(exc)
                if dependency is not None:
                    if ran:  # the handler met it: an attempt that is given back, not spent
                        self._count(job, "outage")
                    await self._wait_out(job, dependency, exc)
                    return
                reason = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, RetryableError):
                    log.exception("job handler crashed", job_id=job.id)
                if job.attempts >= job.max_attempts:
                    self._count(job, "dead")
                    await self._dead(job, reason)
                else:
                    self._count(job, "retry")
                    delay = backoff_seconds(job.attempts)
                    log.info(
                        "job will be retried",
                        job_id=job.id,
                        attempt=job.attempts,
                        in_s=round(delay, 2),
                        error=reason,
                    )
                    await retry_later(self.db, job, self.worker_id, reason, delay)
            else:
                self._count(job, "ok")
                self._completed.append(job.id)  # deleted by the next claim (see run)
                self._outage_streak = 0
        finally:
            self._leased.discard(job.id)

    def _count(self, job: Job, outcome: str) -> None:
        if self.counters is not None:
            self.counters.inc("trunkline_job_attempts_total", queue=job.queue, outcome=outcome)
            if outcome == "retry":
                self.counters.inc("trunkline_job_retries_total", queue=job.queue)

    def _outage(self, exc: BaseException) -> Dependency | None:
        """The dependency `exc` says is unreachable (recorded by the monitor), or None."""
        return self.outages.check(exc) if self.outages is not None else unavailable(exc)

    async def _known_outage(self) -> None:
        """Skip the handler while the monitor knows a dependency is down: running it would
        only meet the outage again, after writing events and attempts for nothing."""
        if self.outages is not None:
            for dependency in self.outages.down():
                raise self.outages.problem(dependency)

    async def _wait_out(self, job: Job, dependency: Dependency, exc: Exception) -> None:
        """Our outage is not the job's failure: put it back, due after a capped backoff with
        jitter, without spending an attempt. With PostgreSQL itself away, retry the write
        until it lands or the lease has run out (the lease then brings the job back)."""
        self._outage_streak += 1
        wait = min(self.outage_wait_max, 0.25 * 2 ** min(self._outage_streak, 16))
        delay = wait * random.uniform(0.5, 1.0)
        reason = f"waiting: {dependency} unavailable ({type(exc).__name__}: {exc})"
        give_up = time.monotonic() + self.lease
        while True:
            try:
                await postpone(self.db, job, self.worker_id, delay, reason)
                return
            except Exception as again:
                if self._outage(again) is None:
                    log.exception("could not put back a job that met an outage", job_id=job.id)
                    return
            if time.monotonic() > give_up:
                log.warning("job left to its lease: PostgreSQL stayed away", job_id=job.id)
                return
            if self.outages is not None:
                await self.outages.wait_up("database", timeout=1.0)
            await asyncio.sleep(0.1)  # a pool with stale connections fails once per connection

    async def _dead(self, job: Job, reason: str) -> None:
        log.warning("job is dead", job_id=job.id, error=reason)
        async with self.db.acquire() as conn, conn.transaction():
            await bury(conn, job, self.worker_id, reason)
            if self.on_bury is not None:
                await self.on_bury(conn, job, reason)
        if self.on_dead is not None:
            await self.on_dead(job, reason)
