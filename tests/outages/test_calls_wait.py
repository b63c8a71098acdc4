"""Issue 10 item 5, the call side: a call whose dispatch meets our Redis outage waits for it
and is dialled afterwards; it is not failed `retries_exhausted` with nothing sent."""

from __future__ import annotations

import asyncio
import time

from gateway.app import create_app
from gateway.calls.service import CALL_DISPATCH_QUEUE
from gateway.resources import RESOURCES
from gateway.tenants.service import create_key, create_tenant
from tests.calls.conftest import call_settings
from tests.helpers import auth
from tests.outages.conftest import Outage


async def until(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


async def test_a_call_whose_dispatch_meets_a_redis_outage_is_dialled_after_it(
    outage: Outage, aiohttp_client
):
    settings = call_settings(
        outage.database_url,
        outage.redis_url,
        ami_port=None,
        calls={"max_attempts": 1},  # one spent attempt and the call would be failed
    )
    api = await aiohttp_client(create_app(settings, role="api"))
    db = api.app[RESOURCES].db
    await create_tenant(db, "acme")
    token = (await create_key(db, "acme")).token
    resp = await api.post(
        "/v1/calls",
        json={"to": "+14155550200", "purpose": "transactional"},
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    # No worker runs yet; keep the job from being due until Redis is down.
    await db.execute(
        "UPDATE jobs SET run_at = now() + interval '1 hour' WHERE queue = $1", CALL_DISPATCH_QUEUE
    )
    worker = await aiohttp_client(create_app(settings, role="worker"))
    await outage.stop_redis()
    await db.execute("UPDATE jobs SET run_at = now() WHERE queue = $1", CALL_DISPATCH_QUEUE)

    async def waited_for_redis() -> bool:
        row = await db.fetchrow(
            "SELECT attempts, last_error FROM jobs WHERE queue = $1", CALL_DISPATCH_QUEUE
        )
        return row is not None and (row["last_error"] or "").startswith("waiting: redis")

    await until(waited_for_redis, "the dispatch job waits for Redis", 20)

    async def call_row() -> dict:
        row = await db.fetchrow("SELECT status, error_code FROM calls WHERE id = $1::uuid", call_id)
        return dict(row)

    assert (await call_row())["status"] == "queued"
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'dead'") == 0

    await outage.start_redis()

    async def completed() -> bool:
        return (await call_row())["status"] == "completed"

    await until(completed, "the call is dialled and completes after the outage", 30)
    assert (await call_row())["error_code"] is None
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'dead'") == 0
    await worker.close()
