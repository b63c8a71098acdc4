"""Counters of the whole deployment, summed in Redis: job attempts and retries, guardrail
verdicts by rule.

A counter a process keeps in memory is only that process's, and a scrape that reaches one
process (behind a load balancer, or after a restart) would see a part that jumps about.
So each process adds its increments in memory (a dict update on the hot path) and flushes
them every `interval` seconds — and before answering a scrape — as one pipelined
HINCRBYFLOAT per family into `tl:metrics:<family>`. /metrics of any process then shows the
same totals, which only ever grow: aggregate them with max(), like the other shared
families. Increments that could not be flushed (Redis away) are kept and flushed later.
Redis is not rebuilt from PostgreSQL for these: a Redis that restarts empty starts them
again from 0, which Prometheus's rate() and increase() read as a counter reset.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import redis.asyncio as aioredis

from gateway.http.metrics import Labels
from gateway.logs import get_logger
from gateway.outage import OutageMonitor
from gateway.stopping import cancel_and_wait

log = get_logger(__name__)

# family -> help (the label names are said in the help; label values are open)
FAMILIES = {
    "trunkline_job_attempts_total": "Job attempts a worker ran, by queue and outcome (ok, "
    "retry: failed and scheduled again, dead: failed its last attempt, rescheduled: the "
    "handler asked to run later, outage: our PostgreSQL/Redis was away, not spent)",
    "trunkline_job_retries_total": "Failed job attempts scheduled for another try, by queue",
    "trunkline_guardrail_verdicts_total": "Guardrail decisions by verdict (allow, deny, "
    "defer), the check and rule that decided (none for an allow) and stage (accept, dispatch)",
}
_TIMEOUT = 2.0


def _key(family: str) -> str:
    return f"tl:metrics:{family}"


class SharedCounters:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        interval: float = 1.0,
        outages: OutageMonitor | None = None,
    ) -> None:
        self.redis = redis
        self.interval = interval
        self.outages = outages
        self._pending: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def inc(self, family: str, amount: float = 1.0, **labels: str) -> None:
        assert family in FAMILIES, family
        self._pending[family][tuple(sorted(labels.items()))] += amount

    async def flush(self) -> None:
        """Add what this process counted since the last flush to the shared totals."""
        async with self._flushing:
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
            if not pending:
                return
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for family, samples in pending.items():
                        for labels, amount in samples.items():
                            pipe.hincrbyfloat(_key(family), json.dumps(labels), amount)
                    async with asyncio.timeout(_TIMEOUT):
                        await pipe.execute()
            except BaseException:
                for family, samples in pending.items():  # kept for the next flush
                    for labels, amount in samples.items():
                        self._pending[family][labels] += amount
                raise

    async def read(self) -> dict[str, dict[Labels, float]]:
        """The deployment's totals, this process's latest increments included."""
        await self.flush()
        async with self.redis.pipeline(transaction=False) as pipe:
            for family in FAMILIES:
                pipe.hgetall(_key(family))
            async with asyncio.timeout(_TIMEOUT):
                rows = await pipe.execute()
        out: dict[str, dict[Labels, float]] = {}
        for family, row in zip(FAMILIES, rows, strict=True):
            out[family] = {
                tuple(tuple(pair) for pair in json.loads(k)): float(v) for k, v in row.items()
            }
        return out

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shared-counters")

    async def close(self) -> None:
        """Stop flushing on a timer, then flush what is left (bounded: Redis may be away, and
        the timer's task may have swallowed a cancel in a redis-py call: gateway/stopping.py)."""
        self._closing = True
        await cancel_and_wait(self._task)
        try:
            async with asyncio.timeout(_TIMEOUT):
                await self.flush()
        except Exception as exc:
            log.warning("counters not flushed on the way out", error=repr(exc))

    async def _run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:
                if self.outages is None or self.outages.check(exc) is None:
                    log.warning("counters not flushed; kept for the next try", error=repr(exc))
