"""A circuit breaker per provider, shared by every worker process through Redis.

Principle 9: when a provider fails, traffic shifts to its fallback. Workers are many
processes, so the breaker's state cannot live in memory: each decision is one Lua
script that reads and changes the state atomically, on the Redis server's clock
(`TIME`), so processes with skewed clocks still agree on when a breaker re-opens.

States: closed (calls counted in a sliding window of time buckets; opens when the
window holds at least `min_calls` calls and the error rate reaches the threshold),
open (every `allow()` is refused until `open_seconds` pass), half-open (at most
`half_open_max_calls` trial permits at a time, each a lease so a worker killed
mid-trial frees its slot; `half_open_successes_to_close` successes close it, one
error re-opens it).

Every transition bumps a generation number. A permit carries the generation it was
issued in, and an outcome recorded with another generation's permit (a call that
started before the breaker opened and ends after) changes nothing: late results
must not open a fresh window or decide a trial they were not part of.

Redis layout (the `{name}` braces are a cluster hash tag, so all three keys share
a slot as a multi-key script requires):

  tl:breaker:{name}:state   HASH state, gen, opened_at (ms), hs (half-open successes)
  tl:breaker:{name}:window  HASH "<bucket>:<field>" -> count; bucket = server ms // bucket_ms;
                            field n calls, e errors, f failures, t timeouts, s slow, l latency ms
                            (PEXPIREs when idle; stale buckets are pruned on write)
  tl:breaker:{name}:trials  ZSET trial permit id -> lease expiry (ms)

Each script reports the transitions *it* caused, so exactly one caller across all
processes fires `on_transition` for each.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis.asyncio as aioredis

from gateway.logs import get_logger
from gateway.redis import EncodableT, LuaScript

log = get_logger(__name__)

State = Literal["closed", "open", "half_open"]
Outcome = Literal["success", "failure", "timeout"]

_OUTCOME_CODES: dict[str, str] = {"success": "s", "failure": "f", "timeout": "t"}

# --- Lua ------------------------------------------------------------------------------

_PRELUDE = """
local skey, wkey, tkey = KEYS[1], KEYS[2], KEYS[3]
local window_ms = tonumber(ARGV[1])
local bucket_ms = tonumber(ARGV[2])
local min_calls = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local open_ms = tonumber(ARGV[5])
local trial_max = tonumber(ARGV[6])
local to_close = tonumber(ARGV[7])
local lease_ms = tonumber(ARGV[8])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local st = redis.call('HMGET', skey, 'state', 'gen', 'opened_at', 'hs')
local state = st[1] or 'closed'
local gen = tonumber(st[2]) or 0
local opened_at = tonumber(st[3]) or 0
local hs = tonumber(st[4]) or 0
local out = {}

-- Move to `to`, remembering that this call caused it: {from, to, reason, errors, calls, at}.
local function transition(to, reason, errors, calls)
  out[#out + 1] = {state, to, reason, errors, calls, now}
  state = to
  gen = gen + 1
  hs = 0
  redis.call('DEL', tkey)
  if to == 'open' then
    opened_at = now
  elseif to == 'closed' then
    opened_at = 0
    redis.call('DEL', wkey)
  end
  redis.call('HSET', skey, 'state', state, 'gen', gen, 'opened_at', opened_at, 'hs', hs)
end

-- Sum the live buckets of the window, deleting the ones that slid out of it.
local function window()
  local oldest = math.floor(now / bucket_ms) - math.ceil(window_ms / bucket_ms) + 1
  local sum = {n = 0, e = 0, f = 0, t = 0, s = 0, l = 0}
  local stale = {}
  local flat = redis.call('HGETALL', wkey)
  for i = 1, #flat, 2 do
    local b, k = string.match(flat[i], '^(%d+):(%a)$')
    if b == nil or tonumber(b) < oldest then
      stale[#stale + 1] = flat[i]
    elseif sum[k] ~= nil then
      sum[k] = sum[k] + tonumber(flat[i + 1])
    end
  end
  if #stale > 0 then redis.call('HDEL', wkey, unpack(stale)) end
  return sum
end

-- Apply what time alone changes: open -> half-open, expired trial leases.
local function settle()
  if state == 'open' and now >= opened_at + open_ms then
    transition('half_open', 'open_elapsed', 0, 0)
  end
  if state == 'half_open' then
    redis.call('ZREMRANGEBYSCORE', tkey, '-inf', now)
  end
end

-- Milliseconds until allow() may succeed again (0 when it may now).
local function retry_ms()
  if state == 'open' then return math.max(0, opened_at + open_ms - now) end
  if state == 'half_open' and redis.call('ZCARD', tkey) >= trial_max then
    local first = redis.call('ZRANGE', tkey, 0, 0, 'WITHSCORES')[2]
    if first then return math.max(1, math.min(open_ms, tonumber(first) - now)) end
  end
  return 0
end

settle()
"""

# One admission: {granted: 0 none | 1 normal | 2 trial, gen, state, retry_ms}
_ALLOW_FN = """
local function allow(id)
  if state == 'closed' then return {1, gen, state, 0} end
  if state == 'half_open' and redis.call('ZCARD', tkey) < trial_max then
    redis.call('ZADD', tkey, now + lease_ms, id)
    redis.call('PEXPIRE', tkey, lease_ms)
    return {2, gen, state, 0}
  end
  return {0, gen, state, retry_ms()}
end
"""

# ARGV[9] trial permit id -> {granted, gen, state, retry_ms, out}
_ALLOW = (
    _PRELUDE
    + _ALLOW_FN
    + """
local a = allow(ARGV[9])
return {a[1], a[2], a[3], a[4], out}
"""
)

# ARGV[9] a prefix, ARGV[10] n: n admissions decided one after another, the i-th (from 1)
# with trial permit id prefix .. i -> {{granted, gen, state, retry_ms}..., out}
_ALLOW_MANY = (
    _PRELUDE
    + _ALLOW_FN
    + """
local answers = {}
for i = 1, tonumber(ARGV[10]) do answers[i] = allow(ARGV[9] .. i) end
return {answers, out}
"""
)

# One outcome: permit gen, trial 0/1, permit id, outcome code s/f/t, counts as error 0/1,
# slow 0/1, latency ms -> counted 0/1
_RECORD_FN = """
local function record(pgen, trial, id, code, err, slow, lat)
  if trial then redis.call('ZREM', tkey, id) end
  if pgen ~= gen then return 0 end
  if state == 'closed' then
    local b = tostring(math.floor(now / bucket_ms)) .. ':'
    redis.call('HINCRBY', wkey, b .. 'n', 1)
    if err then redis.call('HINCRBY', wkey, b .. 'e', 1) end
    if code ~= 's' then redis.call('HINCRBY', wkey, b .. code, 1) end
    if slow then redis.call('HINCRBY', wkey, b .. 's', 1) end
    redis.call('HINCRBY', wkey, b .. 'l', lat)
    redis.call('PEXPIRE', wkey, window_ms + bucket_ms)
    local w = window()
    if w.n >= min_calls and w.e / w.n >= threshold then
      transition('open', 'error_rate', w.e, w.n)
    end
  elseif state == 'half_open' then
    if err then
      local why = 'trial_failure'
      if code == 't' then why = 'trial_timeout' elseif code == 's' then why = 'trial_slow' end
      transition('open', why, 1, hs + 1)
    else
      hs = hs + 1
      if hs >= to_close then
        transition('closed', 'trial_successes', 0, hs)
      else
        redis.call('HSET', skey, 'hs', hs)
      end
    end
  end
  return 1
end

local function record_at(i)
  return record(tonumber(ARGV[i]), ARGV[i + 1] == '1', ARGV[i + 2], ARGV[i + 3],
                ARGV[i + 4] == '1', ARGV[i + 5] == '1', tonumber(ARGV[i + 6]))
end
"""

# ARGV[9..15] one outcome (as _RECORD_FN) -> {counted 0/1, out}
_RECORD = (
    _PRELUDE
    + _RECORD_FN
    + """
return {record_at(9), out}
"""
)

# ARGV[9] the outcomes packed as text, each as _RECORD_FN's 7 arguments joined by ',' and
# ended by ';' (one argument, not 7 per outcome: the client's packing cost), applied one after
# another -> {{counted...}, out}
_RECORD_MANY = (
    _PRELUDE
    + _RECORD_FN
    + """
local counted = {}
local each = '([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*);'
for pgen, trial, id, code, err, slow, lat in string.gmatch(ARGV[9], each) do
  counted[#counted + 1] = record(tonumber(pgen), trial == '1', id, code, err == '1',
                                 slow == '1', tonumber(lat))
end
return {counted, out}
"""
)

# -> {state, gen, opened_at, hs, in_flight, retry_ms, n, e, f, t, s, l, out}
_SNAPSHOT = (
    _PRELUDE
    + """
local w = window()
return {state, gen, opened_at, hs, redis.call('ZCARD', tkey), retry_ms(),
        w.n, w.e, w.f, w.t, w.s, w.l, out}
"""
)

allow_script = LuaScript(_ALLOW, name="breaker_allow")
allow_many_script = LuaScript(_ALLOW_MANY, name="breaker_allow_many")
record_script = LuaScript(_RECORD, name="breaker_record")
record_many_script = LuaScript(_RECORD_MANY, name="breaker_record_many")
snapshot_script = LuaScript(_SNAPSHOT, name="breaker_snapshot")

# --- Python side ----------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds; every process sharing a breaker name should use the same ones.

    They travel with each script call, so a changed config takes effect on the next
    call without migrating anything in Redis.
    """

    window_seconds: float = 30.0
    buckets: int = 10  # window granularity: outcomes age out one bucket at a time
    min_calls: int = 20  # below this, a few unlucky calls must not open the breaker
    error_rate_threshold: float = 0.5
    open_seconds: float = 30.0
    half_open_max_calls: int = 2  # concurrent trials; each is a real customer call
    half_open_successes_to_close: int = 3
    slow_call_seconds: float | None = None  # None: latency never counts as an error
    trial_lease_seconds: float = 60.0  # a worker killed mid-trial frees its slot after this

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.open_seconds <= 0 or self.trial_lease_seconds <= 0:
            raise ValueError("window_seconds, open_seconds and trial_lease_seconds must be > 0")
        if self.buckets < 1 or self.min_calls < 1:
            raise ValueError("buckets and min_calls must be >= 1")
        if not 0 < self.error_rate_threshold <= 1:
            raise ValueError("error_rate_threshold must be in (0, 1]")
        if self.half_open_max_calls < 1 or self.half_open_successes_to_close < 1:
            raise ValueError("half_open_max_calls and half_open_successes_to_close must be >= 1")
        if self.slow_call_seconds is not None and self.slow_call_seconds <= 0:
            raise ValueError("slow_call_seconds must be > 0 or None")

    def argv(self) -> list[EncodableT]:
        window_ms = _ms(self.window_seconds)
        return [
            window_ms,
            max(1, window_ms // self.buckets),
            self.min_calls,
            repr(float(self.error_rate_threshold)),
            _ms(self.open_seconds),
            self.half_open_max_calls,
            self.half_open_successes_to_close,
            _ms(self.trial_lease_seconds),
        ]


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one provider call; hand it back to `record` with the outcome."""

    breaker: str
    id: str
    generation: int  # the breaker generation it was issued in; others' outcomes are ignored
    trial: bool  # a half-open probe, holding one of the limited trial slots
    issued_at: float  # time.monotonic(), for the default latency


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, reported by exactly one of the callers across all processes."""

    breaker: str
    from_state: State
    to_state: State
    # error_rate, open_elapsed, trial_failure, trial_timeout, trial_slow or trial_successes
    reason: str
    error_rate: float | None  # errors / calls behind the decision; None when time alone decided
    errors: int
    calls: int
    at: datetime  # Redis server time


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an operator or a health endpoint wants to see about one breaker."""

    name: str
    state: State
    error_rate: float | None  # over the live window; None with no calls in it
    calls: int
    errors: int
    failures: int
    timeouts: int
    slow_calls: int
    avg_latency_s: float | None
    opened_at: datetime | None
    retry_after_s: float  # 0 when allow() may succeed now
    half_open_in_flight: int
    half_open_successes: int
    generation: int


@dataclass(frozen=True, slots=True)
class Admission:
    """allow()'s answer with the detail routing needs: the state and when to retry."""

    permit: Permit | None
    state: State
    retry_after_s: float


class AllProvidersOpen(Exception):
    """Every candidate provider refused; retry the work after `retry_after_s`, don't drop it."""

    def __init__(self, states: dict[str, State], retry_after_s: float) -> None:
        self.states = states
        self.retry_after_s = retry_after_s
        shown = ", ".join(f"{name}={state}" for name, state in states.items())
        super().__init__(f"all providers refuse calls ({shown}); retry after {retry_after_s:.3f}s")


TransitionHook = Callable[[Transition], Awaitable[None]]


class CircuitBreaker:
    """One provider's breaker; any number of instances in any processes share it by name."""

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        config: BreakerConfig | None = None,
        on_transition: TransitionHook | None = None,
    ) -> None:
        if not name or "{" in name or "}" in name:
            raise ValueError(f"breaker name must be non-empty without braces: {name!r}")
        self.redis = redis
        self.name = name
        self.config = config or BreakerConfig()
        self.on_transition = on_transition
        base = f"tl:breaker:{{{name}}}"
        self.keys = (f"{base}:state", f"{base}:window", f"{base}:trials")

    async def allow(self) -> Permit | None:
        """A permit to call the provider, or None: it is open, use the fallback."""
        return (await self.admit()).permit

    async def admit(self) -> Admission:
        """Like `allow`, also saying the state and how long until a permit may be granted."""
        permit_id = uuid.uuid4().hex
        raw = await allow_script(self.redis, self.keys, [*self.config.argv(), permit_id])
        return await self._admission(permit_id, raw)

    async def admit_many(self, n: int) -> list[Admission]:
        """`n` admissions in one round trip, decided one by one as `n` calls of `admit`. Their
        permit ids share one random prefix (`<uuid4 hex>:<i>`): unique like `admit`'s, with one
        uuid4 and two arguments for the batch instead of one each."""
        prefix = uuid.uuid4().hex + ":"
        answers, out = await allow_many_script(
            self.redis, self.keys, [*self.config.argv(), prefix, n]
        )
        await self._report(out)
        return [self._permit(f"{prefix}{i}", *a) for i, a in enumerate(answers, 1)]

    async def _admission(self, permit_id: str, raw: list[Any]) -> Admission:
        granted, gen, state, retry, out = raw
        await self._report(out)
        return self._permit(permit_id, granted, gen, state, retry)

    def _permit(self, permit_id: str, granted: Any, gen: Any, state: Any, retry: Any) -> Admission:
        permit = None
        if granted:
            permit = Permit(self.name, permit_id, int(gen), granted == 2, time.monotonic())
        return Admission(permit, _text(state), int(retry) / 1000)  # type: ignore[arg-type]

    async def record(
        self, permit: Permit, outcome: Outcome, latency_s: float | None = None
    ) -> bool:
        """Report a call's outcome; False when it was ignored (issued before a transition).

        `latency_s` defaults to the time since the permit was issued. With
        `slow_call_seconds` set, a slower call counts as an error even if it succeeded.
        """
        counted, out = await record_script(
            self.redis,
            self.keys,
            [*self.config.argv(), *self._outcome_args(permit, outcome, latency_s)],
        )
        await self._report(out)
        return bool(counted)

    async def record_many(self, outcomes: list[tuple[Permit, Outcome, float | None]]) -> list[bool]:
        """Several `record`s in one round trip, applied one by one in this order."""
        packed = "".join(
            ",".join(map(str, self._outcome_args(permit, outcome, latency_s))) + ";"
            for permit, outcome, latency_s in outcomes
        )
        counted, out = await record_many_script(
            self.redis, self.keys, [*self.config.argv(), packed]
        )
        await self._report(out)
        return [bool(c) for c in counted]

    def _outcome_args(
        self, permit: Permit, outcome: Outcome, latency_s: float | None
    ) -> list[EncodableT]:
        if permit.breaker != self.name:
            raise ValueError(f"permit of breaker {permit.breaker!r} recorded on {self.name!r}")
        code = _OUTCOME_CODES[outcome]
        if latency_s is None:
            latency_s = time.monotonic() - permit.issued_at
        limit = self.config.slow_call_seconds
        slow = limit is not None and latency_s >= limit
        error = outcome != "success" or slow
        return [
            permit.generation,
            int(permit.trial),
            permit.id,
            code,
            int(error),
            int(slow),
            max(0, round(latency_s * 1000)),
        ]

    async def state(self) -> State:
        return (await self.snapshot()).state

    async def snapshot(self) -> Snapshot:
        """Current state and window figures (applies an elapsed open period, like allow())."""
        raw = await snapshot_script(self.redis, self.keys, self.config.argv())
        state, gen, opened_at, hs, in_flight, retry, n, e, f, t, s, lat, out = raw
        await self._report(out)
        n = int(n)
        return Snapshot(
            name=self.name,
            state=_text(state),  # type: ignore[arg-type]
            error_rate=int(e) / n if n else None,
            calls=n,
            errors=int(e),
            failures=int(f),
            timeouts=int(t),
            slow_calls=int(s),
            avg_latency_s=int(lat) / n / 1000 if n else None,
            opened_at=_at(int(opened_at)) if int(opened_at) else None,
            retry_after_s=int(retry) / 1000,
            half_open_in_flight=int(in_flight),
            half_open_successes=int(hs),
            generation=int(gen),
        )

    async def _report(self, out: list[list[Any]]) -> None:
        """Announce the transitions this call caused; nobody else will."""
        for from_state, to_state, reason, errors, calls, at in out:
            errors, calls = int(errors), int(calls)
            transition = Transition(
                breaker=self.name,
                from_state=_text(from_state),  # type: ignore[arg-type]
                to_state=_text(to_state),  # type: ignore[arg-type]
                reason=_text(reason),
                error_rate=errors / calls if calls else None,
                errors=errors,
                calls=calls,
                at=_at(int(at)),
            )
            log.info(
                "breaker_transition",
                breaker=self.name,
                from_state=transition.from_state,
                to_state=transition.to_state,
                reason=transition.reason,
                error_rate=transition.error_rate,
            )
            if self.on_transition is None:
                continue
            try:
                await self.on_transition(transition)
            except Exception:
                # The state already changed in Redis; failing the caller's call would not
                # undo it, and routing must keep working.
                log.exception("breaker_transition_hook_failed", breaker=self.name)


Admit = Callable[[CircuitBreaker], Awaitable[Admission]]


async def choose(
    primary: CircuitBreaker, fallback: CircuitBreaker | None = None, *, admit: Admit | None = None
) -> tuple[CircuitBreaker, Permit]:
    """The breaker (provider) to call and its permit: the primary while it admits calls.

    Raises AllProvidersOpen, with the soonest time either may admit a call again, so the
    caller reschedules the work instead of dropping it. `admit` asks a breaker (default:
    its `admit()`; a dispatcher may share one round trip among its calls in flight).
    """
    ask = admit or (lambda breaker: breaker.admit())
    first = await ask(primary)
    if first.permit is not None:
        return primary, first.permit
    states = {primary.name: first.state}
    retry = first.retry_after_s
    if fallback is not None:
        second = await ask(fallback)
        if second.permit is not None:
            return fallback, second.permit
        states[fallback.name] = second.state
        retry = min(retry, second.retry_after_s)
    raise AllProvidersOpen(states, retry)
