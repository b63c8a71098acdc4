"""The provider circuit breaker against real Redis, with short windows so it stays fast.

Two `CircuitBreaker` instances on separate Redis clients stand in for two worker
processes: they must agree on the state and report each transition exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.providers.breaker import (
    AllProvidersOpen,
    BreakerConfig,
    CircuitBreaker,
    Outcome,
    Permit,
    Transition,
    choose,
)
from gateway.redis import create_redis

CONFIG = BreakerConfig(
    window_seconds=1.0,
    buckets=10,
    min_calls=5,
    error_rate_threshold=0.5,
    open_seconds=0.3,
    half_open_max_calls=3,
    half_open_successes_to_close=2,
)
PAST_OPEN = 0.4  # sleep that outlasts CONFIG.open_seconds


class Recorder:
    """An on_transition hook that keeps what it was told."""

    def __init__(self) -> None:
        self.seen: list[Transition] = []

    async def __call__(self, transition: Transition) -> None:
        self.seen.append(transition)

    def moves(self) -> list[tuple[str, str]]:
        return [(t.from_state, t.to_state) for t in self.seen]


@pytest.fixture
async def other_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A second connection pool: the second "process"."""
    client = create_redis(redis_url)
    yield client
    await client.aclose()


def make(
    redis: aioredis.Redis, name: str = "twilio-sms", config: BreakerConfig = CONFIG
) -> tuple[CircuitBreaker, Recorder]:
    hook = Recorder()
    return CircuitBreaker(redis, name, config, on_transition=hook), hook


async def call(breaker: CircuitBreaker, outcome: Outcome, latency_s: float = 0.01) -> bool:
    """One provider call through the breaker; False when the breaker refused it."""
    permit = await breaker.allow()
    if permit is None:
        return False
    await breaker.record(permit, outcome, latency_s)
    return True


async def trip(breaker: CircuitBreaker) -> None:
    for _ in range(CONFIG.min_calls):
        await call(breaker, "failure")
    assert await breaker.state() == "open"


async def test_opens_at_min_calls_not_before(redis_client: aioredis.Redis) -> None:
    breaker, hook = make(redis_client)
    for _ in range(CONFIG.min_calls - 1):
        await call(breaker, "failure")
    snap = await breaker.snapshot()
    assert (snap.state, snap.calls, snap.error_rate) == ("closed", 4, 1.0)
    assert hook.seen == []

    await call(breaker, "failure")
    assert await breaker.state() == "open"
    [opened] = hook.seen
    assert (opened.from_state, opened.to_state, opened.reason) == ("closed", "open", "error_rate")
    assert (opened.errors, opened.calls, opened.error_rate) == (5, 5, 1.0)


async def test_opens_exactly_at_the_error_rate_threshold(redis_client: aioredis.Redis) -> None:
    breaker, _ = make(redis_client)
    for outcome in ("success", "failure", "success", "timeout", "success"):
        await call(breaker, outcome)  # type: ignore[arg-type]
    snap = await breaker.snapshot()
    assert (snap.state, snap.error_rate, snap.failures, snap.timeouts) == ("closed", 0.4, 1, 1)

    await call(breaker, "failure")  # 3 errors of 6 calls = 0.5
    assert await breaker.state() == "open"


async def test_old_outcomes_slide_out_of_the_window(redis_client: aioredis.Redis) -> None:
    config = BreakerConfig(window_seconds=0.5, buckets=5, min_calls=5, open_seconds=0.3)
    breaker, _ = make(redis_client, config=config)
    for _ in range(4):
        await call(breaker, "failure")
    await asyncio.sleep(0.6)
    await call(breaker, "failure")
    snap = await breaker.snapshot()
    assert (snap.state, snap.calls) == ("closed", 1)


async def test_open_refuses_then_half_open_admits_exactly_n_trials(
    redis_client: aioredis.Redis,
) -> None:
    breaker, hook = make(redis_client)
    await trip(breaker)
    assert await breaker.allow() is None
    refused = await breaker.admit()
    assert refused.state == "open" and 0 < refused.retry_after_s <= CONFIG.open_seconds
    assert (await breaker.snapshot()).opened_at is not None

    await asyncio.sleep(PAST_OPEN)
    permits = await asyncio.gather(*(breaker.allow() for _ in range(50)))
    granted = [p for p in permits if p is not None]
    assert len(granted) == CONFIG.half_open_max_calls
    assert all(p.trial for p in granted)
    snap = await breaker.snapshot()
    assert (snap.state, snap.half_open_in_flight) == ("half_open", CONFIG.half_open_max_calls)
    assert hook.moves() == [("closed", "open"), ("open", "half_open")]

    # A finished trial frees its slot for the next one.
    await breaker.record(granted[0], "success")
    assert await breaker.allow() is not None
    assert await breaker.allow() is None


async def test_trial_successes_close_with_a_fresh_window(redis_client: aioredis.Redis) -> None:
    breaker, hook = make(redis_client)
    await trip(breaker)
    await asyncio.sleep(PAST_OPEN)
    first, second = await breaker.allow(), await breaker.allow()
    assert first is not None and second is not None
    await breaker.record(first, "success")
    assert await breaker.state() == "half_open"
    await breaker.record(second, "success")

    snap = await breaker.snapshot()
    assert (snap.state, snap.calls, snap.opened_at) == ("closed", 0, None)
    assert hook.seen[-1].reason == "trial_successes"
    permit = await breaker.allow()
    assert permit is not None and not permit.trial


@pytest.mark.parametrize(
    ("outcome", "reason"), [("failure", "trial_failure"), ("timeout", "trial_timeout")]
)
async def test_a_trial_error_reopens(
    redis_client: aioredis.Redis, outcome: Outcome, reason: str
) -> None:
    breaker, hook = make(redis_client)
    await trip(breaker)
    first_opened = (await breaker.snapshot()).opened_at
    await asyncio.sleep(PAST_OPEN)
    good, bad = await breaker.allow(), await breaker.allow()
    assert good is not None and bad is not None
    await breaker.record(good, "success")
    await breaker.record(bad, outcome)

    snap = await breaker.snapshot()
    assert snap.state == "open" and snap.opened_at is not None and first_opened is not None
    assert snap.opened_at > first_opened
    assert await breaker.allow() is None
    assert hook.seen[-1].reason == reason and hook.moves()[-1] == ("half_open", "open")


async def test_outcomes_of_calls_started_before_a_transition_are_ignored(
    redis_client: aioredis.Redis,
) -> None:
    breaker, _ = make(redis_client)
    late = await breaker.allow()
    assert late is not None
    await trip(breaker)
    await asyncio.sleep(PAST_OPEN)
    assert await breaker.state() == "half_open"

    assert await breaker.record(late, "failure") is False  # must not re-open
    assert await breaker.record(late, "success") is False  # nor count as a trial success
    snap = await breaker.snapshot()
    assert (snap.state, snap.half_open_successes) == ("half_open", 0)


async def test_a_dead_trial_frees_its_slot_when_the_lease_ends(
    redis_client: aioredis.Redis,
) -> None:
    config = BreakerConfig(
        window_seconds=1.0,
        min_calls=5,
        open_seconds=0.3,
        half_open_max_calls=1,
        trial_lease_seconds=0.15,
    )
    breaker, _ = make(redis_client, config=config)
    await trip(breaker)
    await asyncio.sleep(PAST_OPEN)
    assert await breaker.allow() is not None  # its worker "dies" and never records
    assert await breaker.allow() is None
    await asyncio.sleep(0.25)
    assert await breaker.allow() is not None


async def test_two_processes_agree_and_report_each_transition_once(
    redis_client: aioredis.Redis, other_client: aioredis.Redis
) -> None:
    a, hook_a = make(redis_client)
    b, hook_b = make(other_client)

    await asyncio.gather(*(call(x, "failure") for x in (a, b) for _ in range(10)))
    assert await a.state() == await b.state() == "open"

    await asyncio.sleep(PAST_OPEN)
    admitted = await asyncio.gather(*(x.allow() for x in (a, b) for _ in range(25)))
    trials = [p for p in admitted if p is not None]
    assert len(trials) == CONFIG.half_open_max_calls
    assert await a.state() == await b.state() == "half_open"

    # Each "process" reports the outcome of its own trials.
    owners = {id(p): x for x, ps in ((a, admitted[:25]), (b, admitted[25:])) for p in ps}
    await asyncio.gather(*(owners[id(p)].record(p, "success") for p in trials))
    assert await a.state() == await b.state() == "closed"

    both = sorted(hook_a.seen + hook_b.seen, key=lambda t: t.at)
    assert [(t.from_state, t.to_state) for t in both] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_slow_calls_count_as_errors_when_configured(redis_client: aioredis.Redis) -> None:
    lenient, _ = make(redis_client, "lenient")
    for _ in range(CONFIG.min_calls):
        await call(lenient, "success", latency_s=2.0)
    snap = await lenient.snapshot()
    assert (snap.state, snap.slow_calls, snap.avg_latency_s) == ("closed", 0, 2.0)

    strict_config = BreakerConfig(
        window_seconds=1.0,
        min_calls=5,
        open_seconds=0.3,
        half_open_max_calls=1,
        slow_call_seconds=0.05,
    )
    strict, hook = make(redis_client, "strict", strict_config)
    for _ in range(CONFIG.min_calls - 1):
        await call(strict, "success", latency_s=0.2)
    permit = await strict.allow()
    assert permit is not None
    await asyncio.sleep(0.06)
    await strict.record(permit, "success")  # latency defaults to the time since allow()
    snap = await strict.snapshot()
    assert (snap.state, snap.slow_calls, snap.failures, snap.errors) == ("open", 5, 0, 5)

    await asyncio.sleep(PAST_OPEN)
    trial = await strict.allow()
    assert trial is not None
    await strict.record(trial, "success", latency_s=0.2)
    assert await strict.state() == "open"
    assert hook.seen[-1].reason == "trial_slow"


async def test_choose_routes_around_an_open_primary_and_back(
    redis_client: aioredis.Redis,
) -> None:
    primary, _ = make(redis_client, "twilio-sms")
    fallback, _ = make(redis_client, "sandbox-sms")

    which, _permit = await choose(primary, fallback)
    assert which is primary

    await trip(primary)
    which, permit = await choose(primary, fallback)
    assert which is fallback
    await fallback.record(permit, "success")

    await asyncio.sleep(PAST_OPEN)
    trials: list[Permit] = []
    for _ in range(CONFIG.half_open_successes_to_close):
        which, permit = await choose(primary, fallback)
        assert which is primary and permit.trial
        trials.append(permit)
    for permit in trials:
        await primary.record(permit, "success")

    which, permit = await choose(primary, fallback)
    assert which is primary and not permit.trial


async def test_choose_raises_with_retry_after_when_all_are_open(
    redis_client: aioredis.Redis,
) -> None:
    primary, _ = make(redis_client, "twilio-voice")
    fallback, _ = make(redis_client, "asterisk")
    await trip(primary)
    with pytest.raises(AllProvidersOpen) as alone:
        await choose(primary)
    assert alone.value.states == {"twilio-voice": "open"}

    await trip(fallback)
    with pytest.raises(AllProvidersOpen) as both:
        await choose(primary, fallback)
    assert both.value.states == {"twilio-voice": "open", "asterisk": "open"}
    assert 0 < both.value.retry_after_s <= CONFIG.open_seconds


async def test_a_failing_hook_does_not_break_the_caller(redis_client: aioredis.Redis) -> None:
    async def broken(_: Transition) -> None:
        raise RuntimeError("event store down")

    # A long open period: rendering the logged traceback can take longer than CONFIG's.
    config = BreakerConfig(window_seconds=1.0, min_calls=5, open_seconds=30.0)
    breaker = CircuitBreaker(redis_client, "twilio-sms", config, on_transition=broken)
    await trip(breaker)
    assert await breaker.allow() is None


async def test_keys_are_namespaced_per_breaker(redis_client: aioredis.Redis) -> None:
    breaker, _ = make(redis_client, "ultravox")
    await trip(breaker)
    await asyncio.sleep(PAST_OPEN)
    assert await breaker.allow() is not None
    keys = sorted(k.decode() for k in await redis_client.keys("*"))
    assert keys == [
        "tl:breaker:{ultravox}:state",
        "tl:breaker:{ultravox}:trials",
        "tl:breaker:{ultravox}:window",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"error_rate_threshold": 0.0},
        {"error_rate_threshold": 1.5},
        {"min_calls": 0},
        {"open_seconds": 0},
        {"half_open_max_calls": 0},
        {"slow_call_seconds": 0},
    ],
)
def test_nonsense_config_is_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a{b", "a}b"])
async def test_names_that_would_break_the_hash_tag_are_rejected(
    redis_client: aioredis.Redis, name: str
) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(redis_client, name)


async def test_many_at_once_decide_as_one_by_one(redis_client: aioredis.Redis) -> None:
    """admit_many/record_many (a dispatcher's sends in flight, one round trip) decide each
    call in order exactly as the same calls made one by one."""
    alone, alone_seen = make(redis_client, "alone")
    batch, batch_seen = make(redis_client, "batch")
    outcomes: list[Outcome] = ["success", "failure", "success", "failure", "timeout", "failure"]

    permits = [await alone.allow() for _ in outcomes]
    counted = [await alone.record(p, o, 0.01) for p, o in zip(permits, outcomes, strict=True) if p]
    admitted = await batch.admit_many(len(outcomes))
    batch_counted = await batch.record_many(
        [(a.permit, o, 0.01) for a, o in zip(admitted, outcomes, strict=True) if a.permit]
    )
    # the 5th outcome reaches min_calls at a 60 % error rate and opens the breaker; the 6th
    # permit was issued before that, so its outcome is ignored
    assert counted == batch_counted == [True] * 5 + [False]
    assert alone_seen.moves() == batch_seen.moves() == [("closed", "open")]
    a, b = await alone.snapshot(), await batch.snapshot()
    assert (a.state, a.calls, a.errors) == (b.state, b.calls, b.errors)

    await asyncio.sleep(PAST_OPEN)  # half-open: exactly half_open_max_calls trials
    trials = await batch.admit_many(5)
    granted = [t.permit for t in trials if t.permit is not None]
    assert len(granted) == CONFIG.half_open_max_calls and all(p.trial for p in granted)
    assert [t.state for t in trials] == ["half_open"] * 5
    assert all(t.retry_after_s > 0 for t in trials if t.permit is None)
    await batch.record_many([(p, "success", 0.01) for p in granted if p is not None])
    assert (await batch.snapshot()).state == "closed"
    assert batch_seen.moves()[-2:] == [("open", "half_open"), ("half_open", "closed")]
