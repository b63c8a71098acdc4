"""Issue 10 item 5: a provider's answer outlives the breaker. The provider accepted the message;
recording the outcome in the breaker (Redis) then fails because Redis just went away. The
answer must be stored anyway: raising would retry the attempt later, and with Redis restarted
empty the provider's idempotency record may be gone too — a second send."""

from __future__ import annotations

import asyncio

from gateway import queue
from gateway.app import create_app
from gateway.core.actions import OutboundAction
from gateway.pipeline.accept import DISPATCH_QUEUE
from gateway.pipeline.dispatch import MessageDispatcher
from gateway.pipeline.wiring import CHAIN, PROVIDERS
from gateway.providers.contracts import SendResult
from gateway.providers.health import ProviderHealth
from gateway.providers.sandbox.messaging import DELIVERS, SandboxMessaging
from gateway.resources import RESOURCES
from gateway.tenants.service import create_key, create_tenant
from tests.calls.conftest import call_settings
from tests.helpers import auth, eventually
from tests.outages.conftest import Outage


class AnswersOnceRedisIsGone(SandboxMessaging):
    """Sends (the sandbox records it in Redis), then answers only after the test stopped Redis."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sending = asyncio.Event()
        self.answer = asyncio.Event()

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        result = await super()._send(action, attempt_key)
        self.sending.set()
        await asyncio.wait_for(self.answer.wait(), 30)
        return result


async def test_the_providers_answer_is_stored_when_the_breaker_cannot_record_it(
    outage: Outage, aiohttp_client
):
    settings = call_settings(outage.database_url, outage.redis_url, ami_port=None)
    app = create_app(settings, role="api")  # the test runs the dispatch worker itself
    client = await aiohttp_client(app)
    res, registry = app[RESOURCES], app[PROVIDERS]
    await create_tenant(res.db, "acme")
    token = (await create_key(res.db, "acme")).token
    resp = await client.post(
        "/v1/messages",
        json={"to": DELIVERS, "body": "hi", "purpose": "transactional"},
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    message_id = (await resp.json())["id"]
    real = registry.messaging("sandbox")
    provider = AnswersOnceRedisIsGone(real.redis, real.sink, name="sandbox", receipt_delay=0.01)
    registry.add(provider)
    dispatcher = MessageDispatcher(
        res.db, app[CHAIN], registry, ProviderHealth(res.redis, res.db, settings.providers.breaker)
    )
    worker = queue.Worker(
        res.db, settings.database_url(), DISPATCH_QUEUE, dispatcher, outages=res.outages
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        await asyncio.wait_for(provider.sending.wait(), 20)
        await outage.stop_redis()
        provider.answer.set()

        async def stored() -> bool:
            return (
                await res.db.fetchval(
                    "SELECT count(*) FROM message_attempts"
                    " WHERE message_id = $1::uuid AND outcome = 'accepted'",
                    message_id,
                )
                == 1
            )

        await eventually(stored, timeout=10)  # while Redis is still down
        assert await res.db.fetchval(
            "SELECT provider_message_id IS NOT NULL FROM messages WHERE id = $1::uuid", message_id
        )
        await outage.start_redis()

        async def delivered() -> bool:
            status = await res.db.fetchval(
                "SELECT status FROM messages WHERE id = $1::uuid", message_id
            )
            return status == "delivered"

        await eventually(delivered, timeout=20)
        assert (
            await res.db.fetchval(
                "SELECT count(*) FROM message_attempts WHERE message_id = $1::uuid", message_id
            )
            == 1
        )
    finally:
        stopping.set()
        await asyncio.wait_for(running, 20)
