import asyncio
import time

import pytest

from tests.fakes.smtp_server import SmtpServer
from tests.helpers import EXEMPT_TRANSACTIONAL, auth

PUBLIC = "https://tl.example.com"
WEBHOOK_SECRET = "whsec_email_test"
POSTAL = "Acme Inc., 123 Main St, Springfield, IL 62701"


def email_settings(database_url, redis_url, **overrides):
    from gateway.settings import load_settings

    base = {
        "database": {"url": database_url, "min_size": 1, "max_size": 10},
        "redis": {"url": redis_url},
        "http": {"port": 0, "shutdown_timeout": 5, "public_base_url": PUBLIC},
        "guardrails": EXEMPT_TRANSACTIONAL,
        "providers": {"sandbox": {"receipt_delay": 0.01}},
        "email": {"webhook_secret": WEBHOOK_SECRET},
    }
    for key, value in overrides.items():
        base[key] = base.get(key, {}) | value
    return load_settings(**base)


@pytest.fixture
def settings(database_url, redis_url):
    return email_settings(database_url, redis_url)


@pytest.fixture
def smtp_server():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
async def token(make_key):
    return await make_key("acme")


async def send_email(client, token, **body):
    body.setdefault("channel", "email")
    body.setdefault("purpose", "transactional")
    body.setdefault("subject", "Your receipt")
    if "template" not in body:
        body.setdefault("text", "Thanks for your order.")
    headers = auth(token) | body.pop("headers", {})
    return await client.post("/v1/messages", json=body, headers=headers)


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
            await asyncio.sleep(0.03)
        raise AssertionError(
            f"message {message_id} stayed {body.get('status')!r}, wanted {statuses}: {body}"
        )

    return wait
