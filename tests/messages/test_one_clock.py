"""One clock (DESIGN.md, principle 12): a deferral computed on the worker's clock is waited
out on the database's, so a worker whose clock is behind PostgreSQL's does not spin.

Before the fix the deferred job's `run_at` was the opening instant on the worker's clock;
the queue compares `run_at` with PostgreSQL's `now()`, which had passed it, so the job was
handed back at once, deferred again, and again: ~1,000 times in 8 s.
"""

from __future__ import annotations

import asyncio

from gateway.pipeline.wiring import CHAIN
from gateway.providers.sandbox import messaging as sandbox
from tests.clock import MovingClock, local_instant_before
from tests.helpers import auth


async def test_a_worker_clock_behind_the_database_defers_once_not_in_a_loop(
    client, token, wait_status, pg_pool
):
    # The chain's (the process's) clock reads 07:59:58 in the recipient's zone, hours behind
    # PostgreSQL's: calling hours open 2 s from now on the process's clock.
    client.app[CHAIN].clock = MovingClock(local_instant_before(7, 59, 58))
    resp = await client.post(
        "/v1/messages",
        json={"to": sandbox.DELIVERS, "body": "Sale today! Reply STOP to opt out."},
        headers=auth(token),
    )
    accepted = await resp.json()
    assert resp.status == 201 and accepted["status"] == "scheduled", accepted
    await asyncio.sleep(1.0)  # the window is still closed on the process's clock
    runs = await pg_pool.fetchval("SELECT count(*) FROM events WHERE type = 'guardrail.defer'")
    assert runs == 1, f"deferred {runs} times in 1 s: the job is spinning"
    done = await wait_status(accepted["id"], "delivered", timeout=10)
    defers = [e for e in done["timeline"] if e["type"] == "guardrail.defer"]
    assert [e["data"]["stage"] for e in defers] == ["accept"], defers
