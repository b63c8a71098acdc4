import asyncio
import time

import pytest

from tests.helpers import EXEMPT_TRANSACTIONAL, auth


@pytest.fixture
def settings(database_url, redis_url):
    from gateway.settings import load_settings

    return load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
        guardrails=EXEMPT_TRANSACTIONAL,
    )


@pytest.fixture
async def token(make_key):
    return await make_key("acme")


@pytest.fixture
def wait_status(client, token):
    """Poll GET /v1/messages/{id} until its status is one of `statuses` (bounded)."""

    async def wait(message_id: str, *statuses: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            resp = await client.get(f"/v1/messages/{message_id}", headers=auth(token))
            body = await resp.json()
            if body.get("status") in statuses:
                return body
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"message {message_id} stayed {body.get('status')!r}, wanted {statuses}: {body}"
        )

    return wait
