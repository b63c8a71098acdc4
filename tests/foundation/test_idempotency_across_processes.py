"""Issue 10 item 3: concurrent duplicates of one Idempotency-Key, in one process and across
processes, wait for the first try and replay its answer -- without taking a trunk channel or
a rate-limit token -- and a try that died leaves the key to a waiter after its lease.

The cross-process tests run two real `trunkline run --role api` processes on two ports and
send every other request to each, so both always see the same key at the same time."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from gateway.http import idempotency
from tests.helpers import auth, free_port, wait_ready

CUSTOMER = "+14155550100"
OPEN = {"rate": 10000.0, "burst": 10000}
RATE_LIMITS = {"tenant": OPEN, "api_key": OPEN, "sender": OPEN, "destination": OPEN}


@asynccontextmanager
async def api_processes(env: dict[str, str], logs: Path, n: int = 2) -> AsyncIterator[list[str]]:
    """`n` API processes on ports of their own, sharing this test's PostgreSQL and Redis."""
    procs, bases = [], []
    try:
        for i in range(n):
            port = free_port()
            bases.append(f"http://127.0.0.1:{port}")
            with (logs / f"api-{i}.log").open("wb") as log:  # a pipe left full would stall it
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "gateway.cli", "run", "--role", "api"),
                        env=env | {"TRUNKLINE_HTTP__PORT": str(port)},
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        await asyncio.gather(*(wait_ready(b, timeout=60) for b in bases))
        yield bases
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def post_all(requests: list[tuple[str, str, str, bytes]]) -> list[tuple[int, dict, dict]]:
    """POST every (url, token, key, body) at once; (status, json, headers) each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(url: str, token: str, key: str, raw: bytes) -> tuple[int, dict, dict]:
            headers = auth(token) | {"Idempotency-Key": key, "Content-Type": "application/json"}
            async with session.post(url, data=raw, headers=headers) as resp:
                return resp.status, await resp.json(), dict(resp.headers)

        return await asyncio.gather(*(one(*r) for r in requests))


def env_json(**values: object) -> dict[str, str]:
    return {f"TRUNKLINE_{k.upper()}": json.dumps(v) for k, v in values.items()}


async def test_a_hundred_duplicate_calls_across_two_processes_take_one_channel(
    daemon_env, make_key, pg_pool, tmp_path
):
    # Two channels: one for the call, one for a bystander. Before the fix each in-flight
    # duplicate took a channel while the claim decided, and ~90 of 100 were 429.
    env = daemon_env | env_json(
        pools__sizes={"api": 2, "campaign": 1, "ivr": 1},
        guardrails__rate_limits=RATE_LIMITS,
        guardrails__policy={"exempt_transactional_from_calling_hours": True},
    )
    token, stranger = await make_key("acme"), await make_key("bystander")
    call = json.dumps({"to": CUSTOMER, "purpose": "transactional", "pool": "api"}).encode()
    theirs = json.dumps({"to": "+14155550101", "purpose": "transactional"}).encode()
    async with api_processes(env, tmp_path) as bases:
        dupes = [(f"{bases[i % 2]}/v1/calls", token, "call-42", call) for i in range(100)]
        bystander = (f"{bases[1]}/v1/calls", stranger, "b-1", theirs)
        answers = await post_all([*dupes[:50], bystander, *dupes[50:]])
    other = answers.pop(50)
    assert [a[0] for a in answers] == [201] * 100, sorted(
        {(a[0], a[1].get("code")) for a in answers}
    )
    assert len({a[1]["id"] for a in answers}) == 1
    assert sum(a[2].get("Idempotent-Replayed") == "true" for a in answers) == 99
    assert other[0] == 201, other[1]
    assert await pg_pool.fetchval("SELECT count(*) FROM calls") == 2


async def test_a_hundred_duplicate_messages_across_two_processes_spend_one_token(
    daemon_env, make_key, pg_pool, tmp_path
):
    # Two messages per destination. Before the fix the chain ran once per process, so the
    # duplicates spent both tokens and the next message to that number was 429 rate_limited.
    env = daemon_env | env_json(
        guardrails__rate_limits=RATE_LIMITS | {"destination": {"rate": 0.0001, "burst": 2}},
        guardrails__policy={"exempt_transactional_from_calling_hours": True},
    )
    token = await make_key("acme")
    body = {"to": CUSTOMER, "body": "Your code is 1234", "purpose": "transactional"}
    raw = json.dumps(body).encode()
    async with api_processes(env, tmp_path) as bases:
        answers = await post_all(
            [(f"{bases[i % 2]}/v1/messages", token, "otp-42", raw) for i in range(100)]
        )
        assert [a[0] for a in answers] == [201] * 100, sorted(
            {(a[0], a[1].get("code")) for a in answers}
        )
        assert len({a[1]["id"] for a in answers}) == 1
        assert sum(a[2].get("Idempotent-Replayed") == "true" for a in answers) == 99
        [(status, next_one, _)] = await post_all(
            [
                (
                    f"{bases[0]}/v1/messages",
                    token,
                    "otp-43",
                    json.dumps(body | {"body": "b"}).encode(),
                )
            ]
        )
    assert status == 201, json.dumps(next_one)
    assert await pg_pool.fetchval("SELECT count(*) FROM messages") == 2


async def keyed_client(aiohttp_client, settings, lease: float, wait: float):
    from gateway.app import create_app

    tuned = settings.model_copy(
        update={
            "http": settings.http.model_copy(
                update={"idempotency_lease": lease, "idempotency_wait": wait}
            )
        }
    )
    return await aiohttp_client(create_app(tuned, role="all"))


async def died_holding(pg_pool, key: str, raw: bytes, lease: float) -> None:
    """Leave (acme, key) claimed by a try that then died: what a killed process leaves."""
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    claim = idempotency.Claim(
        tenant_id,
        key,
        "POST",
        "/v1/messages",
        idempotency.request_hash("POST", "/v1/messages", raw),
        owner=uuid.uuid4(),
    )
    assert await idempotency.begin(pg_pool, claim, lease) is True


async def test_a_waiter_takes_over_the_key_of_a_try_that_died_once_its_lease_lapses(
    aiohttp_client, settings, make_key, pg_pool
):
    client = await keyed_client(aiohttp_client, settings, lease=1.0, wait=10.0)
    token = await make_key("acme")
    raw = json.dumps({"to": CUSTOMER, "body": "x", "purpose": "transactional"}).encode()
    started = time.monotonic()  # before the claim: its lease ends >= 1 s after this
    await died_holding(pg_pool, "k-dead", raw, lease=1.0)
    headers = auth(token) | {"Idempotency-Key": "k-dead", "Content-Type": "application/json"}
    first, second = await asyncio.gather(
        client.post("/v1/messages", data=raw, headers=headers),
        client.post("/v1/messages", data=raw, headers=headers),
    )
    assert time.monotonic() - started >= 0.9  # nobody ran while the dead try's lease held
    assert (first.status, second.status) == (201, 201), await first.text()
    assert (await first.json())["id"] == (await second.json())["id"]
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in (first, second)) == 1
    assert await pg_pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_a_waiter_that_outwaits_its_bound_gets_409_in_use_with_retry_after(
    aiohttp_client, settings, make_key, pg_pool
):
    client = await keyed_client(aiohttp_client, settings, lease=5.0, wait=0.3)
    token = await make_key("acme")
    raw = json.dumps({"to": CUSTOMER, "body": "x", "purpose": "transactional"}).encode()
    await died_holding(pg_pool, "k-busy", raw, lease=60.0)
    resp = await client.post(
        "/v1/messages",
        data=raw,
        headers=auth(token) | {"Idempotency-Key": "k-busy", "Content-Type": "application/json"},
    )
    assert resp.status == 409
    assert (await resp.json())["code"] == "idempotency_key_in_use"
    assert 50 <= int(resp.headers["Retry-After"]) <= 60  # when the holder's lease lapses
    assert await pg_pool.fetchval("SELECT count(*) FROM messages") == 0
