"""The PostgreSQL work queue: every job runs, finished jobs are deleted by the next claim
(while the worker runs, not only at shutdown), and failures are retried then buried."""

import asyncio
from collections import Counter

from gateway import queue
from tests.helpers import eventually


async def enqueue(pg_pool, n: int, name: str = "work") -> None:
    async with pg_pool.acquire() as conn, conn.transaction():
        await queue.enqueue_many(conn, [queue.NewJob(name, {"n": i}) for i in range(n)])


async def test_every_job_runs_once_and_finished_jobs_are_deleted_while_running(
    pg_pool, database_url
):
    seen: Counter[int] = Counter()

    async def handler(job: queue.Job) -> None:
        await asyncio.sleep(0.001)
        seen[job.payload["n"]] += 1

    worker = queue.Worker(pg_pool, database_url, "work", handler, concurrency=8)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        await enqueue(pg_pool, 300)

        async def drained() -> bool:
            return await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0

        await eventually(drained)  # deleted by claims, the worker still running
        assert not running.done()
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
    assert seen == Counter(range(300))


async def test_jobs_finished_at_shutdown_are_deleted_before_the_worker_stops(pg_pool, database_url):
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(job: queue.Job) -> None:
        started.set()
        await release.wait()

    worker = queue.Worker(pg_pool, database_url, "work", handler, concurrency=4)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    await enqueue(pg_pool, 4)
    await asyncio.wait_for(started.wait(), 10)
    stopping.set()
    release.set()
    await asyncio.wait_for(running, 10)
    assert await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_a_failing_job_is_retried_then_buried_with_its_error(
    pg_pool, database_url, monkeypatch
):
    monkeypatch.setattr(queue, "backoff_seconds", lambda attempt, **_: 0.0)  # retry at once

    async def handler(job: queue.Job) -> None:
        raise queue.RetryableError(f"try {job.attempts}")

    dead: list[str] = []

    async def on_dead(job: queue.Job, reason: str) -> None:
        dead.append(reason)

    worker = queue.Worker(
        pg_pool, database_url, "work", handler, idle_wait_max=0.05, on_dead=on_dead
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        async with pg_pool.acquire() as conn, conn.transaction():
            await queue.enqueue(conn, "work", {"n": 1}, max_attempts=2)

        async def buried() -> bool:
            return bool(dead)

        await eventually(buried)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
    row = await pg_pool.fetchrow("SELECT state, attempts, last_error FROM jobs")
    assert (row["state"], row["attempts"]) == ("dead", 2)
    assert "try 2" in row["last_error"]


async def test_a_claim_reads_what_the_owner_attaches_with_each_job(pg_pool, database_url):
    """`Attach`: the claim's own statement reads a row per job (here: the payload's number
    squared and the job's attempt), so a handler need not read it again."""
    seen: dict[int, tuple[int, int]] = {}

    async def handler(job: queue.Job) -> None:
        assert job.attached is not None
        seen[job.payload["n"]] = (job.attached["square"], job.attached["job_attempts"])

    attach = queue.Attach(
        select="sq.square",
        joins="CROSS JOIN LATERAL (SELECT (claimed.payload->>'n')::int ^ 2 AS square) sq",
    )
    worker = queue.Worker(pg_pool, database_url, "work", handler, concurrency=8, attach=attach)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        await enqueue(pg_pool, 50)

        async def drained() -> bool:
            return await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0

        await eventually(drained)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
    assert seen == {n: (n * n, 1) for n in range(50)}


async def test_one_statement_renews_the_leases_of_every_job_in_hand(pg_pool, database_url):
    """The worker renews the leases of the jobs it runs (one statement per lease/3), so a
    job that runs longer than its lease is not claimed again meanwhile."""
    release = asyncio.Event()
    runs: Counter[int] = Counter()

    async def handler(job: queue.Job) -> None:
        runs[job.payload["n"]] += 1
        await release.wait()

    worker = queue.Worker(pg_pool, database_url, "work", handler, concurrency=8, lease=0.6)
    other = queue.Worker(
        pg_pool, database_url, "work", handler, concurrency=8, lease=0.6, idle_wait_max=0.1
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        await enqueue(pg_pool, 5)

        async def all_started() -> bool:
            return sum(runs.values()) == 5

        await eventually(all_started)
        rival = asyncio.create_task(other.run(stopping))  # would take any lapsed lease
        await asyncio.sleep(2.0)  # more than three leases
        assert runs == Counter(range(5)), "a job in hand was claimed again"
        release.set()

        async def drained() -> bool:
            return await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0

        await eventually(drained)
    finally:
        release.set()
        stopping.set()
        await asyncio.wait_for(running, 10)
        await asyncio.wait_for(rival, 10)
