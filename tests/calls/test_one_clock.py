"""One clock for calls (issue 10 item 9): a call deferred by calling hours on a worker whose
clock is behind PostgreSQL's waits the deferral out on the database's clock, and dials then —
it is not handed back at once, deferred again, and again."""

from __future__ import annotations

import asyncio

from gateway.pipeline.wiring import CHAIN
from tests.calls.conftest import CUSTOMER, types
from tests.clock import MovingClock, local_instant_before


async def test_a_worker_clock_behind_the_database_defers_a_call_once(voice, client, pg_pool):
    # 07:59:58 in the callee's zone on the chain's (the process's) clock, hours behind
    # PostgreSQL's: calling hours open 2 s from now on the process's clock.
    client.app[CHAIN].clock = MovingClock(local_instant_before(7, 59, 58))
    call = await voice.place(to=CUSTOMER, purpose="marketing")
    assert call["status"] == "scheduled", call
    await asyncio.sleep(1.0)  # still closed on the process's clock
    runs = await pg_pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'guardrail.defer' AND subject = $1", call["id"]
    )
    assert runs == 1, f"deferred {runs} times in 1 s: the job is spinning"
    done = await voice.wait(call["id"], "answered", "completed", timeout=15)
    assert "guardrail.allow" in types(done)
    defers = [e for e in done["timeline"] if e["type"] == "guardrail.defer"]
    assert [e["data"]["stage"] for e in defers] == ["accept"], defers
