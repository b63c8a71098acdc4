"""Dispatch in shared batches (issue 14): many jobs share each database step, and each
message is still decided, sent, failed and recorded on its own."""

import asyncio
import uuid

import asyncpg

from gateway import queue
from gateway.app import create_app
from gateway.batching import Coalescer
from gateway.messages.service import apply_report, apply_reports
from gateway.pipeline.accept import DISPATCH_QUEUE
from gateway.pipeline.dispatch import MessageDispatcher
from gateway.pipeline.wiring import CHAIN, PROVIDERS
from gateway.providers.contracts import StatusReport
from gateway.providers.health import ProviderHealth
from gateway.providers.sandbox import messaging as sandbox
from gateway.resources import RESOURCES
from tests.helpers import auth, eventually
from tests.messages.test_receipts import new_message


async def test_a_batch_of_sends_is_decided_sent_and_recorded_message_by_message(
    aiohttp_client, settings, make_key, pg_pool
):
    app = create_app(settings, role="api")  # the test runs the worker: every job waits for it
    client = await aiohttp_client(app)
    token = await make_key("acme")
    plain = [f"+1212555{2000 + i:04d}" for i in range(10)]
    blocked = "+12125553999"  # added to DNC after its accept: refused at dispatch
    ids: dict[str, str] = {}
    for to in [*plain, blocked, sandbox.FAILS_PERMANENTLY, sandbox.FAILS_TWICE]:
        resp = await client.post(
            "/v1/messages",
            json={"to": to, "body": "Your code is 1234", "purpose": "transactional"},
            headers=auth(token),
        )
        assert resp.status == 201, await resp.text()
        ids[to] = (await resp.json())["id"]
    resp = await client.post(
        "/v1/dnc", json={"number": blocked, "source": "internal"}, headers=auth(token)
    )
    assert resp.status in (200, 201), await resp.text()

    res = app[RESOURCES]
    dispatcher = MessageDispatcher(
        res.db,
        app[CHAIN],
        app[PROVIDERS],
        ProviderHealth(res.redis, res.db, settings.providers.breaker),
    )
    loads: list[int] = []
    load_many = dispatcher._loads.run

    async def counted(batch):  # how many jobs each shared load served
        loads.append(len(batch))
        return await load_many(batch)

    dispatcher._loads.run = counted
    stopping = asyncio.Event()
    worker = queue.Worker(
        res.db, settings.database_url(), DISPATCH_QUEUE, dispatcher, idle_wait_max=0.2
    )
    running = asyncio.create_task(worker.run(stopping))
    try:

        async def settled():
            rows = await pg_pool.fetch("SELECT status FROM messages")
            return all(r["status"] in ("delivered", "failed", "rejected") for r in rows)

        await eventually(settled, timeout=20)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
        await dispatcher.aclose()
    assert max(loads) > 1, f"the jobs in flight shared their loads: {loads}"

    async def status(to):
        return await pg_pool.fetchval("SELECT status FROM messages WHERE id = $1", ids[to])

    async def outcomes(to):
        rows = await pg_pool.fetch(
            "SELECT outcome, attempt_key FROM message_attempts WHERE message_id = $1 ORDER BY n",
            ids[to],
        )
        return [(r["outcome"], r["attempt_key"]) for r in rows]

    async def types(to):
        rows = await pg_pool.fetch(
            "SELECT type, data FROM events WHERE subject = $1 ORDER BY id", ids[to]
        )
        return [r["type"] for r in rows], rows

    for to in plain:
        assert await status(to) == "delivered"
        assert await outcomes(to) == [("accepted", f"{ids[to]}:1")]
        seen, _ = await types(to)
        order = [
            "message.attempt_started",
            "message.dispatched",
            "message.sent",
            "message.delivered",
        ]
        assert [t for t in seen if t in order] == order, seen
    usage = await pg_pool.fetch("SELECT subject, quantity FROM usage_records")
    assert sorted(u["subject"] for u in usage) == sorted(
        [ids[to] for to in plain] + [ids[sandbox.FAILS_TWICE]]
    )  # what reached a provider, once each

    assert await status(blocked) == "rejected"
    assert await outcomes(blocked) == []  # the chain refused before any attempt
    seen, rows = await types(blocked)
    deny = [r for r in rows if r["type"] == "guardrail.deny"]
    assert deny and deny[-1]["data"]["stage"] == "dispatch", seen

    assert await status(sandbox.FAILS_PERMANENTLY) == "failed"
    assert [o for o, _ in await outcomes(sandbox.FAILS_PERMANENTLY)] == ["permanent_error"]

    assert await status(sandbox.FAILS_TWICE) == "delivered"
    assert [o for o, _ in await outcomes(sandbox.FAILS_TWICE)] == [
        "transient_error",
        "transient_error",
        "accepted",
    ]
    assert await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_receipts_applied_in_one_batch_end_as_they_would_one_by_one(pg_pool):
    tenant_id = await pg_pool.fetchval(
        "INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'batch-' || substr(md5(random()::text), 1, 8)) RETURNING id"
    )
    alone_id, alone_ref = await new_message(pg_pool, tenant_id)
    batch_id, batch_ref = await new_message(pg_pool, tenant_id)
    story = ["delivered", "sent", "delivered", "queued", "sent", "undelivered"]
    one_by_one = [await apply_report(pg_pool, StatusReport("sandbox", alone_ref, s)) for s in story]
    orphan = f"SB{uuid.uuid4().hex}"
    together = await apply_reports(
        pg_pool,
        [StatusReport("sandbox", batch_ref, s) for s in story]
        + [StatusReport("sandbox", orphan, "sent")],
    )
    assert together == [*one_by_one, None]  # the last: no message has that id yet: parked

    async def timeline(message_id):
        rows = await pg_pool.fetch(
            "SELECT type, data FROM events WHERE subject = $1 ORDER BY id", str(message_id)
        )
        return [(r["type"], r["data"].get("reported"), r["data"].get("current")) for r in rows]

    assert await timeline(batch_id) == await timeline(alone_id)
    statuses = await pg_pool.fetch(
        "SELECT status FROM messages WHERE id = ANY($1::uuid[])", [alone_id, batch_id]
    )
    assert {r["status"] for r in statuses} == {"delivered"}
    parked = await pg_pool.fetchval(
        "SELECT status FROM orphan_receipts WHERE provider_message_id = $1", orphan
    )
    assert parked == "sent"


async def test_a_poison_item_answers_its_own_error_and_its_batch_mates_their_results():
    calls: list[list[str]] = []

    async def run(items: list[str]) -> list[str]:
        calls.append(items)
        if "poison" in items:
            raise asyncpg.exceptions.UniqueViolationError("duplicate key")
        return [item.upper() for item in items]

    batcher: Coalescer[str, str] = Coalescer(run, name="test")
    answers = await asyncio.gather(
        *(batcher.submit(x) for x in ["a", "poison", "b", "c"]), return_exceptions=True
    )
    assert answers[0] == "A" and answers[2:] == ["B", "C"]
    assert isinstance(answers[1], asyncpg.exceptions.UniqueViolationError)
    assert calls[0] == ["a", "poison", "b", "c"]  # one call for the four, then one by one
    assert sorted(map(tuple, calls[1:])) == [("a",), ("b",), ("c",), ("poison",)]
    await batcher.aclose()
