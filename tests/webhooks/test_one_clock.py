"""One clock for webhook retries (issue 10 item 9): the retry's due time and the retry window
are read from the database's clock, which runs the queue. Before, they came from the process
clock: a worker an hour behind PostgreSQL re-sent a failing delivery at once, again and again,
ignoring the backoff (and its window never ran out)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import gateway.webhooks.deliver
from tests.events.support import emit_events
from tests.webhooks.test_delivery import make_endpoint


class _HourBehind(datetime):
    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return datetime.now(tz) - timedelta(hours=1)


async def test_a_process_clock_behind_the_database_keeps_the_backoff(
    receiver, app_client, make_key, tenant_id, pg_pool, monkeypatch
):
    monkeypatch.setattr(gateway.webhooks.deliver, "datetime", _HourBehind, raising=False)
    client = await app_client(webhooks={"retry_base": 0.5, "retry_max_delay": 0.5})
    token = await make_key("acme")
    await make_endpoint(client, token, receiver.url)
    receiver.default = 500
    await emit_events(pg_pool, await tenant_id("acme"), 1, type_="message.delivered")
    await receiver.wait_for(lambda r: len(r.requests) >= 1)
    await asyncio.sleep(1.2)
    # backoff 0.5 s (±25 %): at most the first try and two retries in 1.2 s
    assert len(receiver.requests) <= 3, f"{len(receiver.requests)} tries in 1.2 s"
