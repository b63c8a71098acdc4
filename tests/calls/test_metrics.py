"""/metrics: every operational family appears, and each moves when its cause happens.

Runs with an Asterisk (the AMI simulator) configured beside the sandbox voice provider, so the
AMI families have something to report; calls go to the sandbox.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid

import pytest
import redis.asyncio as aioredis

from tests.helpers import auth

FAMILIES = [
    "trunkline_queue_depth",
    "trunkline_queue_oldest_due_seconds",
    "trunkline_queue_retrying_jobs",
    "trunkline_job_attempts_total",
    "trunkline_job_retries_total",
    "trunkline_dead_letters",
    "trunkline_webhook_deliveries",
    "trunkline_webhook_delivery_lag_seconds",
    "trunkline_breaker_state",
    "trunkline_pool_in_use",
    "trunkline_pool_size",
    "trunkline_pool_waiting",
    "trunkline_sse_clients",
    "trunkline_event_log_head",
    "trunkline_event_log_unsequenced",
    "trunkline_event_fanout_lag_events",
    "trunkline_ami_connected",
    "trunkline_ami_tracker_leader",
    "trunkline_guardrail_verdicts_total",
    "trunkline_scrape_ok",
]
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


@pytest.fixture
def overrides():
    # The log-tailing subscribers' safety timers are slowed down so that an event whose
    # wake-up was lost stays visibly behind for a moment (test_subscriber_lag_moves).
    return {
        "providers": {"voice": {"primary": "sandbox"}},
        "events": {"subscriber_interval": 2.0, "hub_resync_interval": 2.0},
    }


async def scrape(client) -> dict[tuple[str, frozenset], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples = {}
    for line in (await resp.text()).splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def until(client, name: str, predicate, timeout: float = 10.0, **labels: str) -> float:
    """Scrape until the sample satisfies `predicate` (the figures are read live)."""
    deadline = time.monotonic() + timeout
    while True:
        got = value(await scrape(client), name, **labels)
        if got is not None and predicate(got):
            return got
        assert time.monotonic() < deadline, f"{name}{labels} stayed {got}"
        await asyncio.sleep(0.05)


async def test_every_family_appears_and_its_source_answered(client, voice):
    text = await (await client.get("/metrics")).text()
    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    samples = await scrape(client)
    for family in ("queues", "events", "webhooks", "counters", "breakers", "pools", "process"):
        assert value(samples, "trunkline_scrape_ok", family=family) == 1.0, family


async def test_queue_and_dead_letter_figures_move(client, voice, pg_pool):
    samples = await scrape(client)
    assert value(samples, "trunkline_queue_depth", queue="mq", state="due") is None
    await pg_pool.execute(
        """
        INSERT INTO jobs (queue, payload, max_attempts, attempts, run_at, state, dead_at) VALUES
          ('mq', '{}', 5, 0, now() - interval '90 seconds', 'ready', NULL),
          ('mq', '{}', 5, 2, now() + interval '1 hour', 'ready', NULL),
          ('mq', '{}', 3, 3, now(), 'dead', now())
        """
    )
    samples = await scrape(client)
    assert value(samples, "trunkline_queue_depth", queue="mq", state="due") == 1
    assert value(samples, "trunkline_queue_depth", queue="mq", state="scheduled") == 1
    assert value(samples, "trunkline_queue_oldest_due_seconds", queue="mq") >= 90
    assert value(samples, "trunkline_queue_retrying_jobs", queue="mq") == 1
    assert value(samples, "trunkline_dead_letters", queue="mq") == 1


async def test_webhook_breaker_and_event_log_figures_move(client, voice, pg_pool, redis_url):
    token = voice.token
    head = value(await scrape(client), "trunkline_event_log_head")
    # an event: a DNC entry is added (dnc.added), sequenced by the worker
    resp = await client.post("/v1/dnc", json={"number": "+12125550100"}, headers=auth(token))
    assert resp.status == 201
    await until(client, "trunkline_event_log_head", lambda v: v > head)

    tenant = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    endpoint = uuid.uuid4()
    await pg_pool.execute(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, secret) "
        "VALUES ($1, $2, 'https://93.184.215.14/h', 's')",
        endpoint,
        tenant,
    )
    await pg_pool.execute(
        """
        INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_seq, event_type, payload,
                                        status, created_at)
        VALUES (gen_random_uuid(), $1, $2, 1, 'x.y', '{}', 'pending', now() - interval '40 s'),
               (gen_random_uuid(), $1, $2, 2, 'x.y', '{}', 'failed', now())
        """,
        tenant,
        endpoint,
    )
    samples = await scrape(client)
    kw = {"endpoint_status": "enabled"}
    assert value(samples, "trunkline_webhook_deliveries", status="pending", **kw) == 1
    assert value(samples, "trunkline_webhook_deliveries", status="failed", **kw) == 1
    assert value(samples, "trunkline_webhook_delivery_lag_seconds", **kw) >= 40

    closed = {"provider": "sandbox", "state": "closed"}
    assert value(samples, "trunkline_breaker_state", **closed) == 1
    r = aioredis.Redis.from_url(redis_url)
    await r.hset("tl:breaker:{sandbox}:state", mapping={"state": "open", "opened_at": "1"})
    await r.aclose()
    samples = await scrape(client)
    assert value(samples, "trunkline_breaker_state", provider="sandbox", state="open") == 1
    assert value(samples, "trunkline_breaker_state", **closed) == 0


async def test_pool_sse_ami_and_guardrail_figures_move(client, voice, ami):
    api = {"trunk": "main", "pool": "api"}
    samples = await scrape(client)
    trunk = next(dict(k[1])["trunk"] for k in samples if k[0] == "trunkline_pool_size")
    api["trunk"] = trunk
    assert value(samples, "trunkline_pool_size", **api) == 4
    assert value(samples, "trunkline_pool_in_use", **api) == 0
    assert value(samples, "trunkline_ami_connected", asterisk="main") == 1
    assert value(samples, "trunkline_ami_tracker_leader", asterisk="main") == 1
    allow = {"verdict": "allow", "check": "none", "rule": "none", "stage": "accept"}
    before = value(samples, "trunkline_guardrail_verdicts_total", **allow) or 0

    call = await voice.place(to="+14155550207", purpose="transactional")  # stays up
    await until(client, "trunkline_pool_in_use", lambda v: v == 1, **api)
    assert value(await scrape(client), "trunkline_guardrail_verdicts_total", **allow) > before
    await voice.post(f"/v1/calls/{call['id']}/hangup")
    await until(client, "trunkline_pool_in_use", lambda v: v == 0, **api)

    # a denial is counted under the rule that made it
    await client.post("/v1/dnc", json={"number": "+14155550150"}, headers=auth(voice.token))
    resp = await client.post(
        "/v1/calls",
        json={"to": "+14155550150", "purpose": "transactional"},
        headers=auth(voice.token),
    )
    assert resp.status == 422
    deny = {"verdict": "deny", "check": "suppression", "rule": "dnc.internal.tenant"}
    assert (
        value(await scrape(client), "trunkline_guardrail_verdicts_total", stage="accept", **deny)
        == 1
    )

    # an SSE client is counted while its stream is open
    assert value(await scrape(client), "trunkline_sse_clients") == 0
    stream = await client.get(
        "/v1/events", headers=auth(voice.token) | {"Accept": "text/event-stream"}
    )
    assert stream.status == 200
    await until(client, "trunkline_sse_clients", lambda v: v == 1)
    stream.close()
    await until(client, "trunkline_sse_clients", lambda v: v == 0)

    await ami.drop_connections()
    await ami.refuse_connections()
    await until(client, "trunkline_ami_connected", lambda v: v == 0, asterisk="main")


async def test_attempts_and_retries_are_counters_that_only_grow(client, voice):
    """+1 415 555 0102 fails transiently twice, then is delivered: three attempts of the
    dispatch job, two of them retries. The counters keep them after the job is gone."""
    dispatch = {"queue": "dispatch"}
    seen: list[tuple[float, float]] = []

    async def counts() -> tuple[float, float, float]:
        samples = await scrape(client)
        ok = value(samples, "trunkline_job_attempts_total", outcome="ok", **dispatch) or 0
        retry = value(samples, "trunkline_job_attempts_total", outcome="retry", **dispatch) or 0
        retries = value(samples, "trunkline_job_retries_total", **dispatch) or 0
        seen.append((ok + retry, retries))
        return ok, retry, retries

    ok0, retry0, retries0 = await counts()
    resp = await client.post(
        "/v1/messages",
        json={"to": "+14155550102", "body": "Your code is 1234", "purpose": "transactional"},
        headers=auth(voice.token),
    )
    assert resp.status == 201, await resp.text()
    deadline = time.monotonic() + 20
    while (await counts())[0] < ok0 + 1:
        assert time.monotonic() < deadline, seen[-1]
        await asyncio.sleep(0.1)
    ok, retry, retries = await counts()
    assert (ok - ok0, retry - retry0, retries - retries0) == (1, 2, 2)
    assert all(a <= b for a, b in itertools.pairwise(seen)), seen  # never down


async def test_counters_are_the_deployments_whichever_process_is_scraped(
    client, voice, settings, aiohttp_client
):
    """A verdict made in another process shows on this one's /metrics: the counters are
    summed in Redis, not kept per process."""
    from gateway.app import create_app

    other = await aiohttp_client(create_app(settings, role="api"))
    try:
        deny = {"verdict": "deny", "check": "suppression", "rule": "dnc.internal.tenant"}
        before = value(await scrape(client), "trunkline_guardrail_verdicts_total", **deny,
                       stage="accept") or 0  # fmt: skip
        headers = auth(voice.token)
        await other.post("/v1/dnc", json={"number": "+14155550151"}, headers=headers)
        resp = await other.post(
            "/v1/calls", json={"to": "+14155550151", "purpose": "transactional"}, headers=headers
        )
        assert resp.status == 422
        await until(
            client, "trunkline_guardrail_verdicts_total", lambda v: v == before + 1,
            stage="accept", **deny,
        )  # fmt: skip
        assert (
            value(await scrape(other), "trunkline_guardrail_verdicts_total", stage="accept",
                  **deny) == before + 1
        )  # fmt: skip
    finally:
        await other.close()


async def test_subscriber_lag_moves(client, voice, pg_pool):
    """An event whose wake-up was lost (sequenced without the NOTIFY and the pub/sub message
    the sequencer sends) leaves the /v1/stats subscriber and the SSE hub one event behind
    until their safety timers look at the log again. (The hub starts with its first client.)"""
    stream = await client.get(
        "/v1/events", headers=auth(voice.token) | {"Accept": "text/event-stream"}
    )
    assert stream.status == 200
    for subscriber in ("stats", "sse"):
        await until(client, "trunkline_event_fanout_lag_events", lambda v: v == 0,
                    subscriber=subscriber)  # fmt: skip
    tenant = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    await pg_pool.execute(
        "INSERT INTO events (tenant_id, type, subject, seq) "
        "VALUES ($1, 'message.sent', 'lost-wakeup', nextval('event_seq'))",
        tenant,
    )
    for subscriber in ("stats", "sse"):
        await until(client, "trunkline_event_fanout_lag_events", lambda v: v == 1,
                    subscriber=subscriber, timeout=1.5)  # fmt: skip
    for subscriber in ("stats", "sse"):
        await until(client, "trunkline_event_fanout_lag_events", lambda v: v == 0,
                    subscriber=subscriber)  # fmt: skip
    stream.close()


async def test_the_grafana_dashboard_uses_only_exported_metrics(client, voice):
    import json
    import pathlib

    dashboard = json.loads(
        (pathlib.Path(__file__).parents[2] / "config" / "grafana-trunkline.json").read_text()
    )
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"trunkline_\w+", target["expr"])
    }
    assert set(FAMILIES) <= used  # a panel for every operational family
    await client.get("/healthz")  # a request, so that the HTTP families have a sample
    text = await (await client.get("/metrics")).text()
    missing = [name for name in sorted(used) if f"# TYPE {name} " not in text]
    assert not missing, missing
