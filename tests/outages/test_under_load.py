"""Issue 10, "Shows it works" for items 4-6: PostgreSQL, then Redis, stopped and started again
under a steady stream of messages through the in-process app and the sandbox provider.

- while a dependency is down, requests answer 503 with Retry-After and a stable code: never a
  500, never another status;
- nothing is dead-lettered: jobs wait for our infrastructure without spending their provider
  retry budget (only 2 attempts are allowed here, so any spent attempt would show);
- every message accepted with 201 is delivered afterwards, exactly once (one accepted provider
  attempt, one `message.dispatched`, one usage record);
- the log says each outage once each way, and holds no traceback;
- Redis comes back empty (no persistence): the trunk pool's holders are rebuilt from the live
  calls in PostgreSQL before the first new call is admitted (item 6), and live calls holding
  a permit never exceed the pool's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp.test_utils import TestClient
from structlog.processors import format_exc_info
from structlog.testing import capture_logs
from structlog.typing import EventDict

from gateway.app import create_app
from gateway.providers.sandbox.voice import STAYS_UP
from gateway.resources import RESOURCES
from gateway.tenants.service import create_key, create_tenant
from tests.calls.conftest import call_settings
from tests.calls.test_pool_state_rebuild import LeaseWatcher
from tests.helpers import auth
from tests.outages.conftest import Outage

POOL_SIZE = 4
CODES = {"database_unavailable", "redis_unavailable"}


@dataclass
class Load:
    """Clients sending messages without pause, each request with its own Idempotency-Key."""

    client: TestClient
    token: str
    answers: list[tuple[int, str | None, str | None, str | None]] = field(default_factory=list)
    _keys: itertools.count = field(default_factory=itertools.count)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def sender(self) -> None:
        while not self._stop.is_set():
            resp = await self.client.post(
                "/v1/messages",
                json={"to": "+14155550100", "body": "load", "purpose": "transactional"},
                headers=auth(self.token) | {"Idempotency-Key": f"load-{next(self._keys)}"},
            )
            body = await resp.json()
            code = body.get("code") if resp.status != 201 else None
            self.answers.append(
                (resp.status, code, resp.headers.get("Retry-After"), body.get("id"))
            )
            await asyncio.sleep(0.005)

    def count(self, status: int, code: str | None = None, since: int = 0) -> int:
        return sum(1 for s, c, _, _ in self.answers[since:] if s == status and c == code)

    def accepted(self) -> list[str]:
        return [i for s, _, _, i in self.answers if s == 201 and i is not None]

    def stop(self) -> None:
        self._stop.set()


def keep_traceback(logger: object, method: str, event_dict: EventDict) -> EventDict:
    """Adds the traceback text (`exception`) to a captured entry logged with `exc_info`, which
    stays set: a failure below then shows what was raised, not only that something was."""
    if event_dict.get("exc_info"):
        formatted = format_exc_info(logger, method, dict(event_dict))
        event_dict["exception"] = formatted.get("exception")
    return event_dict


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll `check` every 20 ms; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


async def start(aiohttp_client, outage: Outage) -> tuple[TestClient, str]:
    settings = call_settings(
        outage.database_url,
        outage.redis_url,
        ami_port=None,
        database={"min_size": 1, "max_size": 10, "command_timeout": 5},
        messaging={"max_attempts": 2},
        pools={"sizes": {"api": POOL_SIZE, "campaign": 1, "ivr": 1}},
    )
    client = await aiohttp_client(create_app(settings, role="all"))
    db = client.app[RESOURCES].db
    await create_tenant(db, "acme")
    return client, (await create_key(db, "acme")).token


async def call(client: TestClient, token: str, to: str) -> tuple[int, dict]:
    resp = await client.post(
        "/v1/calls", json={"to": to, "purpose": "transactional"}, headers=auth(token)
    )
    return resp.status, await resp.json()


async def call_status(client: TestClient, token: str, call_id: str) -> str:
    resp = await client.get(f"/v1/calls/{call_id}", headers=auth(token))
    return (await resp.json())["status"] if resp.status == 200 else ""


async def test_outages_under_load_answer_503_lose_nothing_and_send_each_message_once(
    outage, aiohttp_client
):
    client, token = await start(aiohttp_client, outage)
    db = client.app[RESOURCES].db
    monitor = client.app[RESOURCES].outages
    load = Load(client, token)
    # Two live calls hold channels of the 4-channel api pool through both outages.
    live = []
    for _ in range(2):
        status, body = await call(client, token, STAYS_UP)
        assert status == 201, body
        live.append(body["id"])
    for call_id in live:

        async def answered(call_id: str = call_id) -> bool:
            return await call_status(client, token, call_id) == "answered"

        await until(answered, "live call answered", 20)

    with capture_logs(processors=[keep_traceback]) as logs:
        senders = [asyncio.ensure_future(load.sender()) for _ in range(2)]
        try:
            await until(lambda: len(load.accepted()) >= 20, "20 messages accepted", 20)

            await outage.stop_database()
            await until(lambda: load.count(503, "database_unavailable") >= 5, "503 database", 20)
            await outage.start_database()
            mark = len(load.answers)
            await until(lambda: load.count(201, None, since=mark) >= 5, "201 after PG", 30)
            await until(lambda: not monitor.is_down("database"), "PG seen back", 10)

            await outage.stop_redis()
            await until(lambda: load.count(503, "redis_unavailable") >= 5, "503 redis", 20)
            await outage.start_redis()  # empty: the pool's holders are gone from Redis
            watcher = LeaseWatcher(outage.redis_url, set(live))
            watching = asyncio.ensure_future(watcher.run())
            try:
                # The first admissions after the loss: 2 channels left of 4, whatever Redis says.
                answers = await asyncio.gather(*(call(client, token, STAYS_UP) for _ in range(4)))
            finally:
                await watcher.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watching, 5)
            mark = len(load.answers)
            await until(lambda: load.count(201, None, since=mark) >= 5, "201 after Redis", 30)
            await until(lambda: not monitor.is_down("redis"), "Redis seen back", 10)
        finally:
            load.stop()
            await asyncio.gather(*senders)

        accepted = load.accepted()

        async def all_delivered() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[]) AND status = 'delivered'",
                accepted,
            )
            return n == len(accepted)

        await until(all_delivered, f"all {len(accepted)} accepted messages delivered", 40)

    # Logged with a traceback (a 500's "unhandled error", a crashed job handler): shown by any
    # failure below, with the traceback text, so that it says what was raised.
    crashes = [e for e in logs if e.get("exc_info") or e["event"] == "unhandled error"]
    tracebacks = "\n\n".join(
        f"{ {k: v for k, v in e.items() if k != 'exception'} }\n{e.get('exception')}"
        for e in crashes
    )

    # Only 201 or 503 (never 500), every 503 with Retry-After and a stable code.
    others = [a for a in load.answers if a[0] not in (201, 503)]
    assert others == [], f"{others}\n\n{tracebacks}"
    unavailable = [(c, r) for s, c, r, _ in load.answers if s == 503]
    assert {c for c, _ in unavailable} == CODES
    assert all(r is not None and int(r) >= 1 for _, r in unavailable)

    # Nothing dead-lettered; each accepted message went to the provider once.
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'dead'") == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE status = 'dead_lettered'") == 0
    per_message = await db.fetch(
        """
        SELECT m.id,
               (SELECT count(*) FROM message_attempts a
                 WHERE a.message_id = m.id AND a.outcome = 'accepted') AS accepted,
               (SELECT count(*) FROM events e
                 WHERE e.subject = m.id::text AND e.type = 'message.dispatched') AS dispatched,
               (SELECT count(*) FROM usage_records u WHERE u.subject = m.id::text) AS billed
        FROM messages m WHERE m.id = ANY($1::uuid[])
        """,
        accepted,
    )
    assert len(per_message) == len(accepted) == len(set(accepted))
    twice = [
        dict(r) for r in per_message if (r["accepted"], r["dispatched"], r["billed"]) != (1, 1, 1)
    ]
    assert twice == []

    # Pools (item 6): the live calls were holders again before any new call got a channel.
    assert watcher.samples and not watcher.admissions_before_rebuild(), watcher.samples
    assert all(len(s) <= POOL_SIZE for s in watcher.samples)
    statuses = sorted(s for s, _ in answers)
    assert statuses == [201, 201, 429, 429], [b.get("detail") for _, b in answers]
    for call_id in live:
        assert await call_status(client, token, call_id) == "answered"

    # One line each way per outage; no traceback anywhere.
    said = [e["event"] for e in logs if e["event"].endswith(("unavailable", "available again"))]
    assert said == [
        "database unavailable",
        "database available again",
        "redis unavailable",
        "redis available again",
    ], [(e["event"], e.get("error")) for e in logs if e["event"].endswith("unavailable")]
    assert monitor.transitions == [
        ("database", "down"),
        ("database", "up"),
        ("redis", "down"),
        ("redis", "up"),
    ]
    assert crashes == [], tracebacks
