"""Group commit: concurrent writes share transactions; a bad write fails alone."""

import asyncio

import asyncpg
import pytest

from gateway.core.errors import Problem
from gateway.pipeline.groupcommit import GroupCommitter, Outcome


@pytest.fixture
async def probe(pg_pool):
    """A table that records which transaction committed each write."""
    await pg_pool.execute("CREATE TABLE gc_probe (id int PRIMARY KEY, txid bigint NOT NULL)")

    async def persist_many(conn: asyncpg.Connection, ids: list[int]) -> list[Outcome]:
        txid = await conn.fetchval("SELECT txid_current()")
        await conn.execute(
            "INSERT INTO gc_probe SELECT i, $2 FROM unnest($1::int[]) AS i", ids, txid
        )
        return [Outcome(201, {"id": i}) for i in ids]

    committer = GroupCommitter(pg_pool, persist_many, name="probe")
    await committer.start()
    yield committer
    await committer.close()


async def test_concurrent_writes_share_transactions(probe, pg_pool):
    answers = await asyncio.gather(*(probe.submit(i) for i in range(200)))
    assert [a.body["id"] for a in answers] == list(range(200))
    assert await pg_pool.fetchval("SELECT count(*) FROM gc_probe") == 200
    transactions = await pg_pool.fetchval("SELECT count(DISTINCT txid) FROM gc_probe")
    assert transactions <= 20, f"200 concurrent writes took {transactions} transactions"


async def test_a_bad_write_fails_alone_and_its_neighbours_commit(probe, pg_pool):
    await probe.submit(7)
    # 7 again violates the primary key: its batch fails, and is re-run write by write.
    answers = await asyncio.gather(
        *(probe.submit(i) for i in [*range(100, 120), 7, *range(120, 140)]),
        return_exceptions=True,
    )
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], asyncpg.UniqueViolationError)
    assert answers[20] is failed[0]
    assert await pg_pool.fetchval("SELECT count(*) FROM gc_probe") == 41


async def test_a_closed_committer_refuses_with_503_after_committing_what_it_had(probe, pg_pool):
    pending = [asyncio.ensure_future(probe.submit(i)) for i in range(50)]
    await asyncio.sleep(0)  # queued, not yet committed
    await probe.close()
    assert len(await asyncio.gather(*pending)) == 50
    assert await pg_pool.fetchval("SELECT count(*) FROM gc_probe") == 50
    with pytest.raises(Problem) as refused:
        await probe.submit(99)
    assert refused.value.status == 503 and refused.value.code == "unavailable"
