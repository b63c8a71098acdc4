"""Webhook fan-out (a log-tailing subscriber) and the signed delivery job.

Fan-out reads the event log in seq order from a durable cursor
(`event_cursors.webhooks`). One transaction locks the cursor row, reads the
next batch, inserts one delivery per (matching endpoint, event) — unique, so a
retried batch cannot double up — enqueues a job for each and moves the
cursor. A process that was down resumes where the cursor says; several
processes take turns on the row lock.

Each delivery attempt is one job on the `webhook` queue. Its outcome:

- 2xx: succeeded.
- 408, 429, 5xx, timeout, connection error: retried after
  `retry_base * 2^(n-1)` seconds (±25 %, at most `retry_max_delay`) while the
  delivery is younger than `retry_window`; then dead-lettered.
- any other status (3xx: redirects are not followed; 4xx): dead-lettered at once.

Dead-lettered deliveries keep the last status and response body; the job is
buried in the queue's dead letters (an operator can replay it) and the
delivery can be redelivered through the API. An endpoint that has failed
with no success for `disable_after` seconds is disabled, with a
`webhook_endpoint.disabled` event.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg

from gateway import queue
from gateway.core.ids import new_id
from gateway.events import log
from gateway.events.model import TypeFilter, public_event
from gateway.events.outbox import NewEvent, emit
from gateway.events.sequencer import SEQUENCED_CHANNEL
from gateway.events.wake import follow
from gateway.logs import get_logger
from gateway.settings import WebhookSettings
from gateway.webhooks import repo, signing, ssrf

_log = get_logger(__name__)

QUEUE = "webhook"
CURSOR = "webhooks"
JOB_ATTEMPTS = 5  # per attempt-job: only crashes of the handler itself spend these
RESPONSE_KEEP = 2048
USER_AGENT = "Trunkline-Webhooks/1"


# --- fan-out --------------------------------------------------------------------------

# The events fan-out may deliver: of a tenant with an enabled endpoint created by then.
_ENDPOINT_THEN = """
EXISTS (SELECT 1 FROM webhook_endpoints w
        WHERE w.tenant_id = b.tenant_id AND w.status = 'enabled' AND w.created_at <= b.created_at)
"""


async def fanout_step(pool: asyncpg.Pool, batch: int) -> int:
    """Turn the next batch of logged events into deliveries; returns events consumed."""
    async with pool.acquire() as conn, conn.transaction():
        cursor = await log.lock_cursor(conn, CURSOR)
        # Only the events of tenants with an endpoint that existed then are read whole.
        span, last, rows = await log.global_candidates(conn, cursor, batch, _ENDPOINT_THEN)
        if not span:
            return 0
        endpoints = []
        if rows:
            endpoints = await repo.enabled_endpoints(conn, list({r["tenant_id"] for r in rows}))
        by_tenant: dict[uuid.UUID, list[tuple[asyncpg.Record, TypeFilter]]] = defaultdict(list)
        for ep in endpoints:
            by_tenant[ep["tenant_id"]].append((ep, TypeFilter.parse(list(ep["event_types"]))))
        new = []
        for row in rows:
            for ep, types in by_tenant.get(row["tenant_id"], ()):
                # An endpoint gets what happened after it was created, never history.
                if ep["created_at"] <= row["created_at"] and types.matches(row["type"]):
                    new.append(
                        (
                            new_id(),
                            row["tenant_id"],
                            ep["id"],
                            row["seq"],
                            row["type"],
                            row["trace_id"],
                            public_event(row),
                        )
                    )
        deliveries = await repo.insert_deliveries(conn, new)
        job_ids = await queue.enqueue_many(
            conn,
            [
                queue.NewJob(
                    QUEUE,
                    {"delivery_id": str(d["id"])},
                    tenant_id=d["tenant_id"],
                    trace_id=d["trace_id"],
                    max_attempts=JOB_ATTEMPTS,
                )
                for d in deliveries
            ],
        )
        await repo.set_delivery_jobs(conn, [d["id"] for d in deliveries], job_ids)
        await conn.execute(
            "UPDATE event_cursors SET seq = $2, updated_at = now() WHERE name = $1",
            CURSOR,
            last,
        )
        return span


class Fanout:
    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        *,
        batch: int = 500,
        interval: float = 5.0,
        settle: float = 0.0,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.batch = batch
        self.interval = interval
        self.settle = settle

    async def run(self, stopping: asyncio.Event) -> None:
        await follow(
            self.database_url,
            SEQUENCED_CHANNEL,
            lambda: fanout_step(self.pool, self.batch),
            stopping,
            batch=self.batch,
            interval=self.interval,
            settle=self.settle,
        )


# --- delivery -------------------------------------------------------------------------


@asynccontextmanager
async def http_session(cfg: WebhookSettings) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(
        resolver=ssrf.resolver_for(cfg.allow_private_targets),
        limit=cfg.concurrency * 2,
        ttl_dns_cache=60,
    )
    timeout = aiohttp.ClientTimeout(total=cfg.timeout, connect=min(cfg.timeout, 5.0))
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}
    ) as session:
        yield session


def retry_delay(cfg: WebhookSettings, attempts: int) -> float:
    base = min(cfg.retry_max_delay, cfg.retry_base * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.75, 1.25)


def _refused(exc: BaseException) -> ssrf.TargetRefused | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssrf.TargetRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Outcome:
    __slots__ = ("error", "response", "retryable", "status", "succeeded")

    def __init__(
        self,
        *,
        succeeded: bool = False,
        retryable: bool = False,
        status: int | None = None,
        response: str | None = None,
        error: str | None = None,
    ) -> None:
        self.succeeded = succeeded
        self.retryable = retryable
        self.status = status
        self.response = response
        self.error = error


class Deliverer:
    def __init__(
        self, pool: asyncpg.Pool, cfg: WebhookSettings, session: aiohttp.ClientSession
    ) -> None:
        self.pool = pool
        self.cfg = cfg
        self.session = session

    async def handle(self, job: queue.Job) -> None:
        delivery_id = uuid.UUID(job.payload["delivery_id"])
        async with self.pool.acquire() as conn:
            d = await repo.delivery_for_attempt(conn, delivery_id)
        if d is None or d["job_id"] != job.id or d["status"] == "succeeded":
            return  # deleted with its endpoint, superseded by a redelivery, or already done
        if d["endpoint_status"] != "enabled":
            await repo.mark_failed(self.pool, delivery_id, "the endpoint is disabled")
            return
        outcome = await self.attempt(d, d["attempts"] + 1)
        async with self.pool.acquire() as conn, conn.transaction():
            current = await repo.delivery_for_attempt(conn, delivery_id)
            if current is None or current["job_id"] != job.id:
                return
            if outcome.succeeded:
                await repo.record_attempt(
                    conn,
                    delivery_id,
                    status="succeeded",
                    status_code=outcome.status,
                    response=outcome.response,
                    error=None,
                )
                await repo.endpoint_succeeded(conn, d["endpoint_id"])
                return
            disabled = await repo.endpoint_failed(
                conn,
                d["endpoint_id"],
                self.cfg.disable_after,
                f"failing continuously for {self.cfg.disable_after:g}s",
            )
            if disabled:
                await emit(
                    conn,
                    NewEvent(
                        d["tenant_id"],
                        "webhook_endpoint.disabled",
                        str(d["endpoint_id"]),
                        d["trace_id"],
                        {
                            "endpoint_id": str(d["endpoint_id"]),
                            "url": d["url"],
                            "reason": "failing continuously",
                            "disable_after_s": self.cfg.disable_after,
                            "last_status_code": outcome.status,
                            "last_error": outcome.error,
                        },
                    ),
                )
            attempts = current["attempts"] + 1
            delay = retry_delay(self.cfg, attempts)
            # One clock (DESIGN.md, principle 12): the window started on the database's clock
            # and the queue runs the retry on it, so both times are read from it.
            elapsed, run_at = await conn.fetchrow(
                "SELECT extract(epoch FROM now() - $1::timestamptz)::float8, "
                "now() + make_interval(secs => $2)",
                current["window_started"],
                delay,
            )
            if outcome.retryable and not disabled and elapsed + delay <= self.cfg.retry_window:
                next_job = await queue.enqueue(
                    conn,
                    QUEUE,
                    {"delivery_id": str(delivery_id)},
                    tenant_id=d["tenant_id"],
                    trace_id=d["trace_id"],
                    max_attempts=JOB_ATTEMPTS,
                    run_at=run_at,
                )
                await repo.record_attempt(
                    conn,
                    delivery_id,
                    status="pending",
                    status_code=outcome.status,
                    response=outcome.response,
                    error=outcome.error,
                    next_attempt_at=run_at,
                    job_id=next_job,
                )
                return
            if disabled:
                why = "the endpoint was disabled"
            elif outcome.retryable:
                why = f"still failing after the {self.cfg.retry_window:g}s retry window"
            else:
                why = "not retryable"
            detail = f"{why}: {outcome.error or f'HTTP {outcome.status}'}"
            await repo.record_attempt(
                conn,
                delivery_id,
                status="failed",
                status_code=outcome.status,
                response=outcome.response,
                error=detail,
            )
        raise queue.PermanentError(detail)

    async def attempt(self, d: asyncpg.Record, n: int) -> Outcome:
        body = json.dumps(d["payload"], separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            signing.HEADER: signing.sign(d["secret"], body),
            "Trunkline-Event-Id": str(d["event_seq"]),
            "Trunkline-Event-Type": d["event_type"],
            "Trunkline-Delivery-Id": str(d["id"]),
            "Trunkline-Delivery-Attempt": str(n),
        }
        trace = d["trace_id"]
        if trace:
            headers["X-Trace-Id"] = trace
            if len(trace) == 32:
                headers["traceparent"] = f"00-{trace}-{secrets.token_hex(8)}-01"
        started = time.perf_counter()
        try:
            ssrf.check_literal_host(d["url"], allow_private=self.cfg.allow_private_targets)
            async with self.session.post(
                d["url"], data=body, headers=headers, allow_redirects=False
            ) as resp:
                text = (await resp.content.read(RESPONSE_KEEP)).decode("utf-8", "replace")
                status = resp.status
        except ssrf.TargetRefused as exc:
            return Outcome(error=f"refused target: {exc}")
        except TimeoutError:
            return Outcome(retryable=True, error=f"timed out after {self.cfg.timeout:g}s")
        except aiohttp.ClientError as exc:
            refused = _refused(exc)
            if refused is not None:
                return Outcome(error=f"refused target: {refused}")
            return Outcome(retryable=True, error=f"{type(exc).__name__}: {exc}"[:500])
        except OSError as exc:
            return Outcome(retryable=True, error=f"{type(exc).__name__}: {exc}"[:500])
        _log.info(
            "webhook attempt",
            delivery_id=str(d["id"]),
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if 200 <= status < 300:
            return Outcome(succeeded=True, status=status, response=text)
        retryable = status in (408, 429) or status >= 500
        return Outcome(retryable=retryable, status=status, response=text, error=f"HTTP {status}")

    async def on_dead(self, job: queue.Job, reason: str) -> None:
        """The handler itself kept crashing: record it on the delivery."""
        try:
            await repo.mark_failed(self.pool, uuid.UUID(job.payload["delivery_id"]), reason)
        except (KeyError, ValueError):
            pass
