"""Dispatch under faults: a worker killed mid-send, a failing provider, an exhausted retry budget."""

import asyncio

import pytest

from gateway import queue
from gateway.app import create_app
from gateway.core.actions import OutboundAction
from gateway.pipeline.accept import DISPATCH_QUEUE
from gateway.pipeline.dispatch import MessageDispatcher
from gateway.pipeline.receipts import ReceiptReconciler
from gateway.pipeline.wiring import CHAIN, PROVIDERS
from gateway.providers.contracts import MessagingProvider, SendResult, TransientProviderError
from gateway.providers.health import ProviderHealth
from gateway.providers.sandbox import messaging as sandbox
from gateway.providers.sandbox.messaging import SandboxMessaging
from gateway.resources import RESOURCES
from gateway.settings import ReceiptsSettings, load_settings
from tests.helpers import EXEMPT_TRANSACTIONAL, auth, eventually


class SendsThenHangs(SandboxMessaging):
    """The request reaches the provider, then the worker dies before it hears back."""

    hang = True

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        result = await super()._send(action, attempt_key)
        if self.hang:
            self.hang = False
            await asyncio.Event().wait()
        return result


async def work_until(db, settings, dispatcher, condition) -> None:
    """A dispatch worker of our own runs until `condition` holds, then stops."""
    stopping = asyncio.Event()
    worker = queue.Worker(
        db, settings.database_url(), DISPATCH_QUEUE, dispatcher, lease=5, idle_wait_max=0.2
    )
    running = asyncio.create_task(worker.run(stopping))
    try:
        await eventually(condition)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)


async def test_worker_killed_mid_send_loses_nothing_and_sends_once_per_attempt_key(
    aiohttp_client, settings, make_key, pg_pool
):
    app = create_app(settings, role="api")  # we run the workers ourselves
    client = await aiohttp_client(app)
    token = await make_key("acme")
    msg = await (
        await client.post(
            "/v1/messages",
            json={"to": sandbox.DELIVERS, "body": "hi", "purpose": "transactional"},
            headers=auth(token),
        )
    ).json()
    res, registry = app[RESOURCES], app[PROVIDERS]
    real = registry.messaging("sandbox")
    flaky = SendsThenHangs(real.redis, real.sink, name="sandbox", receipt_delay=0.01)
    registry.add(flaky)
    dispatcher = MessageDispatcher(
        res.db, app[CHAIN], registry, ProviderHealth(res.redis, res.db, settings.providers.breaker)
    )
    key = f"{msg['id']}:1"

    first = queue.Worker(
        res.db, settings.database_url(), DISPATCH_QUEUE, dispatcher, lease=0.5, idle_wait_max=0.2
    )
    killed = asyncio.create_task(first.run(asyncio.Event()))
    await eventually(lambda: flaky.sends_for(key))
    killed.cancel()  # the worker dies mid-send: no code of it runs again
    await asyncio.gather(killed, return_exceptions=True)
    row = await pg_pool.fetchrow("SELECT state, attempts FROM jobs")
    assert (row["state"], row["attempts"]) == ("running", 1)  # still leased to the dead worker

    try:

        async def delivered():
            return await pg_pool.fetchval("SELECT status = 'delivered' FROM messages")

        await work_until(res.db, settings, dispatcher, delivered)
    finally:
        await flaky.close()
    assert await flaky.sends_for(key) == 1, (
        "the retry reused the attempt key; the provider sent once"
    )
    attempts = await pg_pool.fetch(
        "SELECT n, attempt_key, outcome FROM message_attempts ORDER BY n"
    )
    assert [(a["n"], a["attempt_key"], a["outcome"]) for a in attempts] == [(1, key, "accepted")]
    assert await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0


class LosesItsReceipts(SandboxMessaging):
    """The send reaches "the network", then the process that was to apply its receipts dies
    (kill -9 of a worker): they never come."""

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        result = await super()._send(action, attempt_key)
        for task in list(self._tasks):
            task.cancel()
        return result


@pytest.mark.parametrize(
    ("to", "final", "error"),
    [
        (sandbox.DELIVERS, "delivered", None),
        (sandbox.UNDELIVERED, "undelivered", "30003"),
        (sandbox.OUT_OF_ORDER, "delivered", None),
    ],
)
async def test_receipts_lost_with_a_worker_are_recovered_by_asking_the_sandbox(
    aiohttp_client, settings, make_key, pg_pool, to, final, error
):
    app = create_app(settings, role="api")  # we run the worker and the reconciler ourselves
    client = await aiohttp_client(app)
    token = await make_key("acme")
    msg = await (
        await client.post(
            "/v1/messages",
            json={"to": to, "body": "hi", "purpose": "transactional"},
            headers=auth(token),
        )
    ).json()
    res, registry = app[RESOURCES], app[PROVIDERS]
    real = registry.messaging("sandbox")
    lossy = LosesItsReceipts(real.redis, real.sink, name="sandbox", receipt_delay=0.01)
    registry.add(lossy)
    dispatcher = MessageDispatcher(
        res.db, app[CHAIN], registry, ProviderHealth(res.redis, res.db, settings.providers.breaker)
    )

    async def handed_on():
        return await pg_pool.fetchval("SELECT provider_message_id IS NOT NULL FROM messages")

    await work_until(res.db, settings, dispatcher, handed_on)
    await asyncio.sleep(0.05)  # longer than the receipts' delay: none is coming
    assert await pg_pool.fetchval("SELECT status FROM messages") == "queued"

    reconciler = ReceiptReconciler(
        res.db, registry, None, ReceiptsSettings(interval=0.1, message_age=0.01)
    )
    await pg_pool.execute("UPDATE messages SET updated_at = now() - interval '1 second'")
    done = await reconciler.run_once()
    await lossy.close()
    assert (done.asked, done.moved) == (1, 1)
    row = await pg_pool.fetchrow("SELECT status, error_code FROM messages WHERE id = $1", msg["id"])
    assert (row["status"], row["error_code"]) == (final, error)
    # A message whose receipts never come is not made up: the sandbox has nothing to say.
    assert await lossy.fetch_status("SB" + "0" * 32) is None


class Switchable(MessagingProvider):
    """A provider whose upstream can be taken down and brought back."""

    channels = frozenset({"sms"})

    def __init__(self, delegate: SandboxMessaging) -> None:
        self.name = "flaky"
        self.delegate = delegate
        self.down = True
        self.calls = 0

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        self.calls += 1
        if self.down:
            raise TransientProviderError("upstream 503", code="503", ambiguous=False)
        return await self.delegate._send(action, attempt_key)


@pytest.fixture
def breaker_settings(database_url, redis_url):
    return load_settings(
        guardrails=EXEMPT_TRANSACTIONAL,
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        providers={
            "sms": {"primary": "flaky", "fallback": "sandbox"},
            "breaker": {
                "window_seconds": 30,
                "min_calls": 3,
                "error_rate_threshold": 0.5,
                "open_seconds": 0.5,
            },
            "sandbox": {"receipt_delay": 0.01},
        },
        messaging={"max_attempts": 10},
    )


async def test_breaker_opens_traffic_moves_to_the_fallback_and_comes_back(
    aiohttp_client, breaker_settings, make_key, pg_pool
):
    app = create_app(breaker_settings, role="all")
    client = await aiohttp_client(app)
    registry = app[PROVIDERS]
    real = registry.messaging("sandbox")
    flaky = Switchable(SandboxMessaging(real.redis, real.sink, name="flaky", receipt_delay=0.01))
    registry.add(flaky)
    token = await make_key("acme")

    ids = []
    for i in range(8):
        resp = await client.post(
            "/v1/messages",
            json={"to": f"+1212555{1000 + i:04d}", "body": f"m{i}", "purpose": "transactional"},
            headers=auth(token),
        )
        ids.append((await resp.json())["id"])

    async def all_delivered():
        return await pg_pool.fetchval(
            "SELECT count(*) FILTER (WHERE status = 'delivered') = 8 FROM messages"
        )

    await eventually(all_delivered, timeout=30)
    rerouted = await pg_pool.fetchval("SELECT count(*) FROM events WHERE type = 'message.rerouted'")
    assert rerouted >= 1
    assert await pg_pool.fetchval("SELECT count(*) FROM messages WHERE provider = 'sandbox'") == 8
    assert flaky.calls < 8 + 3, "once open, the failing provider stops being called"
    transitions = [
        tuple(r)
        for r in await pg_pool.fetch(
            "SELECT from_state, to_state FROM provider_health_events ORDER BY id"
        )
    ]
    assert transitions[0] == ("closed", "open")

    # Recovery: the upstream comes back; after open_seconds trial calls close the breaker again.
    flaky.down = False
    await asyncio.sleep(0.6)

    async def closed():
        return await pg_pool.fetchval(
            "SELECT to_state = 'closed' FROM provider_health_events ORDER BY id DESC LIMIT 1"
        )

    for i in range(10):
        resp = await client.post(
            "/v1/messages",
            json={
                "to": f"+1212555{2000 + i:04d}",
                "body": f"after {i}",
                "purpose": "transactional",
            },
            headers=auth(token),
        )
        after = (await resp.json())["id"]

        async def delivered(message_id=after):
            return await pg_pool.fetchval(
                "SELECT status = 'delivered' FROM messages WHERE id = $1::uuid", message_id
            )

        await eventually(delivered, timeout=15)
        if await closed():
            break
    transitions = [
        tuple(r)
        for r in await pg_pool.fetch(
            "SELECT from_state, to_state FROM provider_health_events ORDER BY id"
        )
    ]
    assert ("open", "half_open") in transitions
    assert transitions[-1] == ("half_open", "closed")
    resp = await client.post(
        "/v1/messages",
        json={"to": "+12125553000", "body": "closed", "purpose": "transactional"},
        headers=auth(token),
    )
    last = (await resp.json())["id"]

    async def delivered_by_flaky():
        return await pg_pool.fetchval(
            "SELECT status = 'delivered' AND provider = 'flaky' FROM messages WHERE id = $1::uuid",
            last,
        )

    await eventually(delivered_by_flaky, timeout=15)


async def test_retry_budget_exhausted_goes_to_dead_letters_and_can_be_replayed(
    aiohttp_client, database_url, redis_url, make_key, pg_pool
):
    s = load_settings(
        guardrails=EXEMPT_TRANSACTIONAL,
        database={"url": database_url},
        redis={"url": redis_url},
        messaging={"max_attempts": 2},
        providers={"sandbox": {"receipt_delay": 0.01}},
    )
    client = await aiohttp_client(create_app(s, role="all"))
    token = await make_key("acme")
    msg = await (
        await client.post(
            "/v1/messages",
            json={"to": sandbox.ALWAYS_TRANSIENT, "body": "x", "purpose": "transactional"},
            headers=auth(token),
        )
    ).json()

    async def dead():
        resp = await client.get("/v1/dead-letters", headers=auth(token))
        items = (await resp.json())["data"]
        return items if items else None

    items = await eventually(dead, timeout=20)
    assert items[0]["payload"] == {"message_id": msg["id"]}
    assert items[0]["attempts"] == 2 and "upstream unavailable" in items[0]["last_error"]
    detail = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
    # Issue 10 item 5: it said `queued`, as if still on its way.
    assert detail["status"] == "dead_lettered" and detail["error_code"] == "retries_exhausted"
    dead_event = next(e for e in detail["timeline"] if e["type"] == "message.dead_lettered")
    assert dead_event["data"]["attempts"] == 2 and dead_event["data"]["job_id"] == items[0]["id"]

    other = await make_key("someone-else")
    assert (
        await client.post(f"/v1/dead-letters/{items[0]['id']}/replay", headers=auth(other))
    ).status == 404
    resp = await client.post(f"/v1/dead-letters/{items[0]['id']}/replay", headers=auth(token))
    assert resp.status == 202

    async def requeued():
        body = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
        kinds = [e["type"] for e in body["timeline"]]
        return body if "message.requeued" in kinds else None

    detail = await eventually(requeued, timeout=20)
    event = next(e for e in detail["timeline"] if e["type"] == "message.requeued")
    assert event["data"] == {"job_id": items[0]["id"], "reason": "dead_letter_replayed"}

    async def failed_again():
        return await pg_pool.fetchval("SELECT count(*) >= 4 FROM message_attempts")

    await eventually(failed_again, timeout=20)

    async def dead_again():
        body = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
        return body if body["status"] == "dead_lettered" else None

    detail = await eventually(dead_again, timeout=20)
    kinds = [e["type"] for e in detail["timeline"]]
    # The replay put it back to `queued` (the one move back, an operator's), then it died again.
    assert kinds.count("message.dead_lettered") == 2 and kinds.count("message.requeued") == 1
    assert kinds.index("message.requeued") < len(kinds) - 1 - kinds[::-1].index(
        "message.dead_lettered"
    )
