"""Sandbox voice provider: realistic call progress for deterministic test numbers, no account.

| number          | what happens                                                           |
|-----------------|------------------------------------------------------------------------|
| +1 415 555 0200 | rings, answers, hangs up after `call_duration` (so does any unlisted)  |
| +1 415 555 0201 | busy (486, cause 17)                                                   |
| +1 415 555 0202 | rings, never answers (no_answer, cause 19)                             |
| +1 415 555 0203 | the carrier fails (503, cause 34): another provider may retry it       |
| +1 415 555 0204 | an answering machine answers (AMD says machine when `amd` is on)       |
| +1 415 555 0205 | not found (404, cause 1)                                               |
| +1 415 555 0206 | declined (603, cause 21)                                               |
| +1 415 555 0207 | answers and stays up until hung up                                     |
| +1 415 555 0208 | the provider cannot be reached at originate (nothing was sent)         |

The campaign list profile: any +1 NPA 555 2xyz (any area code) behaves by its last two digits
`yz`, so a generated list (+1 NPA 555 2000 … 2999 per area code) gets a realistic mix:

| yz      | share | what happens                              |
|---------|-------|-------------------------------------------|
| 00 – 54 | 55 %  | answers (as 0200)                         |
| 55 – 69 | 15 %  | rings, never answers (as 0202)            |
| 70 – 79 | 10 %  | busy (as 0201)                            |
| 80 – 91 | 12 %  | an answering machine answers (as 0204)    |
| 92 – 96 |  5 %  | declined, 603 (as 0206: no_answer)        |
| 97 – 99 |  3 %  | the carrier fails, 503 (as 0203)          |

Progress is reported as `CallReport`s through the sink, as a real provider's events would be.
What a hangup or a bridge issued from another process needs to know (is the call up, who is
it bridged with) lives in Redis; the timers run in the process that placed the call.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from gateway.core.actions import OutboundAction
from gateway.logs import get_logger
from gateway.providers.contracts import (
    BridgeResult,
    CallRef,
    CallReport,
    CallSpec,
    OriginateResult,
    SipTarget,
    TransientProviderError,
    VoiceProvider,
)

log = get_logger(__name__)
CallSink = Callable[[CallReport], Awaitable[object]]

ANSWERS = "+14155550200"
BUSY = "+14155550201"
NO_ANSWER = "+14155550202"
CARRIER_FAILS = "+14155550203"
MACHINE = "+14155550204"
NOT_FOUND = "+14155550205"
DECLINES = "+14155550206"
STAYS_UP = "+14155550207"
UNREACHABLE = "+14155550208"

_TTL = 86400
# The campaign list profile (table above): upper bound of yz → the number it behaves as.
LIST_PROFILE: tuple[tuple[int, str], ...] = (
    (54, ANSWERS),
    (69, NO_ANSWER),
    (79, BUSY),
    (91, MACHINE),
    (96, DECLINES),
    (99, CARRIER_FAILS),
)


def behaves_as(number: str) -> str:
    """The test number whose behaviour `number` has (itself unless it is a list number)."""
    if len(number) == 12 and number.startswith("+1") and number[5:9] == "5552":
        yz = int(number[10:12])
        return next(as_ for upper, as_ in LIST_PROFILE if yz <= upper)
    return number


# Place a call once per attempt key: its id, the count of real placements and its scripted end
# together, or nothing (answers the earlier call id when the key was placed already).
_PLACE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2]) end
  return false
end
return redis.call('GET', KEYS[1])
"""


class SandboxVoice(VoiceProvider):
    fetches_status = True

    def __init__(
        self,
        redis: aioredis.Redis,
        sink: CallSink,
        *,
        name: str = "sandbox",
        step_delay: float = 0.05,
        call_duration: float = 1.0,
        ring_for: float = 0.2,
        agent_connect_delay: float = 0.0,
        agent_slow_every: int = 0,
    ) -> None:
        self.agent_connect_delay = agent_connect_delay
        self.agent_slow_every = agent_slow_every
        self.name = name
        self.redis = redis
        self.sink = sink
        self.step_delay = step_delay
        self.call_duration = call_duration
        self.ring_for = ring_for
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reporting: set[asyncio.Future[None]] = set()

    def _key(self, *parts: str) -> str:
        return ":".join(("tl:sandbox", self.name, "voice", *parts))

    async def originates_for(self, attempt_key: str) -> int:
        """How many times an attempt key really reached the 'network' (for tests)."""
        return int(await self.redis.get(self._key("sent", attempt_key)) or 0)

    async def _originate(
        self, action: OutboundAction, attempt_key: str, spec: CallSpec
    ) -> OriginateResult:
        to = behaves_as(action.to)
        if to == UNREACHABLE:
            raise TransientProviderError(
                "sandbox voice upstream unreachable", code="upstream_unavailable", ambiguous=False
            )
        call_id = "SV" + secrets.token_hex(16)
        end = self._script_end(to, spec)
        # What the 'network' will say, for fetch_status after a crash. Placed with the call in
        # one script: a worker killed between the two would leave a call that a retry finds
        # placed ("already") but whose end no lookup could ever tell — stuck for good.
        ending = "" if end is None else f"{end[0]}|{time.time() + end[1]}"
        earlier = await self.redis.eval(
            _PLACE,
            3,
            self._key("id", attempt_key),
            self._key("sent", attempt_key),
            self._key("end", attempt_key),
            call_id,
            _TTL,
            ending,
        )
        if earlier is not None:
            return OriginateResult(earlier.decode(), already=True)
        self._spawn(attempt_key, self._progress(to, attempt_key, call_id, spec))
        return OriginateResult(call_id)

    def _script_end(self, to: str, spec: CallSpec) -> tuple[str, float] | None:
        """How and (at the latest) when the call placed to `to` ends; None: it stays up."""
        steps = 4 * self.step_delay + 1.0  # + a second of slack for a loaded process
        if to in (NOT_FOUND, CARRIER_FAILS):
            return "failed", steps
        if to == BUSY:
            return "busy", steps
        if to == DECLINES:
            return "no_answer", steps
        if to == NO_ANSWER:
            return "no_answer", steps + min(self.ring_for, spec.ring_timeout)
        if to == STAYS_UP:
            return None
        return "completed", steps + self.call_duration

    async def fetch_status(self, call: CallRef) -> CallReport | None:
        """The call's end as the 'network' knows it, once its script is over — the way a real
        provider answers a lookup. So a call whose progress task died with its process (kill
        -9 of a worker) still ends, through the receipt reconciler. None while it is live."""
        status, end = await self.redis.mget(
            self._key("status", call.attempt_key), self._key("end", call.attempt_key)
        )
        final = status.decode() if status is not None else None
        if final not in ("completed", "busy", "no_answer", "failed", "canceled"):
            if end is None:
                return None
            scripted, _, ends_at = end.decode().partition("|")
            if time.time() < float(ends_at):
                return None
            answered = final == "answered"
            final = "completed" if answered or scripted == "completed" else scripted
        return CallReport(
            provider=self.name,
            attempt_key=call.attempt_key,
            provider_call_id=call.provider_call_id,
            source="sandbox:fetch",
            raw={"sandbox": True, "fetched": True},
            status=final,
            hangup_cause=16 if final == "completed" else None,
        )

    def _spawn(self, key: str, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks[key] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None
        )

    async def _report(self, attempt_key: str, call_id: str, **fields: object) -> None:
        # Shielded as a whole: a hangup cancels the progress task, possibly between marking
        # the status in Redis and applying the report; the hangup's _finish then sees the call
        # ended and reports nothing, and the call would stay answered forever.
        inner = asyncio.ensure_future(self._report_now(attempt_key, call_id, fields))
        self._reporting.add(inner)  # owned: close() waits for reports still being applied
        inner.add_done_callback(self._reporting.discard)
        await asyncio.shield(inner)

    async def _report_now(self, attempt_key: str, call_id: str, fields: dict[str, object]) -> None:
        status = fields.get("status")
        if status is not None and fields.get("leg", "customer") == "customer":
            await self.redis.set(self._key("status", attempt_key), str(status), ex=_TTL)
        try:
            await self.sink(
                CallReport(
                    provider=self.name,
                    attempt_key=attempt_key,
                    provider_call_id=call_id,
                    source="sandbox",
                    raw={"sandbox": True},
                    **fields,  # type: ignore[arg-type]
                )
            )
        except Exception:
            log.exception("sandbox call report could not be applied", attempt_key=attempt_key)

    async def _progress(self, to: str, key: str, call_id: str, spec: CallSpec) -> None:
        step = self.step_delay
        await asyncio.sleep(step)
        await self._report(key, call_id, status="dialing")
        await asyncio.sleep(step)
        if to == NOT_FOUND:
            await self._end(key, call_id, "failed", 1, 404, "not_found")
            return
        if to == CARRIER_FAILS:
            await self._end(key, call_id, "failed", 34, 503, "congestion", failover=True)
            return
        await self._report(key, call_id, status="ringing")
        await asyncio.sleep(step)
        if to == BUSY:
            await self._end(key, call_id, "busy", 17, 486, "user_busy")
        elif to == DECLINES:
            await self._end(key, call_id, "no_answer", 21, 603, "declined")
        elif to == NO_ANSWER:
            await asyncio.sleep(min(self.ring_for, spec.ring_timeout))
            await self._end(key, call_id, "no_answer", 19, 480, "no_answer")
        else:
            await self._report(key, call_id, status="answered")
            if spec.amd:
                await asyncio.sleep(step)
                machine = to == MACHINE
                await self._report(
                    key,
                    call_id,
                    fact="amd",
                    amd="machine" if machine else "human",
                    amd_detail="sandbox: " + ("MACHINE" if machine else "HUMAN"),
                )
            if to != STAYS_UP:
                await asyncio.sleep(self.call_duration)
                await self._finish(key, call_id, cause=16)

    async def _end(
        self,
        key: str,
        call_id: str,
        status: str,
        cause: int,
        sip: int,
        code: str,
        *,
        failover: bool = False,
    ) -> None:
        await self._report(
            key,
            call_id,
            status=status,
            hangup_cause=cause,
            sip_code=sip,
            # As Asterisk does (03e): a ring timeout's 480 is the cause mapped, not a response.
            sip_code_source="mapped" if sip == 480 else "sip",
            error_code=code,
            failover=failover,
        )

    async def _finish(self, key: str, call_id: str, *, cause: int) -> None:
        """End a call the way it stands: completed if it was answered, else canceled; its
        agent leg and a bridged peer go with it (as in Asterisk, 04)."""
        status = await self.redis.get(self._key("status", key))
        answered = status is not None and status.decode() in ("answered", "completed")
        if status is not None and status.decode() in (
            "completed",
            "busy",
            "no_answer",
            "failed",
            "canceled",
        ):
            return
        final = "completed" if answered else "canceled"
        await self._report(
            key,
            call_id,
            status=final,
            hangup_cause=cause,
            error_code=None if answered else "canceled",
        )
        agent = await self.redis.get(self._key("agent", key))
        if agent is not None:
            await self._report(
                key, agent.decode(), leg="agent", status="completed", hangup_cause=16
            )
        peer = await self.redis.getdel(self._key("peer", key))
        if peer is not None:
            peer_key, peer_id = peer.decode().split("|", 1)
            await self.redis.delete(self._key("peer", peer_key))
            await self._finish(peer_key, peer_id, cause=16)

    async def _hangup(self, call: CallRef) -> None:
        task = self._tasks.pop(call.attempt_key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        await self._finish(call.attempt_key, call.provider_call_id or "", cause=16)

    async def _bridge(self, call: CallRef, target: CallRef | SipTarget) -> BridgeResult:
        key, call_id = call.attempt_key, call.provider_call_id or ""
        if isinstance(target, SipTarget):
            await self.redis.set(self._key("agent", key), target.leg_key, ex=_TTL)
            leg = CallRef(self.name, key, target.leg_key, None, "agent")

            slow = False
            if self.agent_slow_every:
                n = await self.redis.incr(self._key("agent_legs"))
                slow = n % self.agent_slow_every == 0

            async def agent_answers() -> None:
                await self._report(key, target.leg_key, leg="agent", status="dialing")
                await asyncio.sleep(self.step_delay + (self.agent_connect_delay if slow else 0))
                await self._report(key, target.leg_key, leg="agent", status="answered")

            self._spawn(target.leg_key, agent_answers())
            return BridgeResult(joined=False, leg=leg)
        bridge_id = "SB" + secrets.token_hex(8)
        if target.leg == "customer":
            other = target.provider_call_id or ""
            await self.redis.set(self._key("peer", key), f"{target.attempt_key}|{other}", ex=_TTL)
            await self.redis.set(self._key("peer", target.attempt_key), f"{key}|{call_id}", ex=_TTL)
        await self._report(key, call_id, fact="bridged", bridge_id=bridge_id)
        await self._report(
            target.attempt_key,
            target.provider_call_id or "",
            leg=target.leg,
            fact="bridged",
            bridge_id=bridge_id,
        )
        return BridgeResult(joined=True)

    async def say_then_hangup(
        self, call: CallRef, text: str, *, after_greeting: bool = False
    ) -> None:
        """Recorded as played (tests read it back with `said`); then the call ends, as a real
        one does once the message is over — after this returns, as with the other providers,
        so the caller's "when did the provider have it" is not the hang-up's processing."""
        await self.redis.rpush(self._key("said", call.attempt_key), f"{time.time()}|{text}")
        await self.redis.expire(self._key("said", call.attempt_key), _TTL)
        self._spawn(f"{call.attempt_key}:said", self._hangup(call))

    async def said(self, attempt_key: str) -> list[tuple[float, str]]:
        out = []
        for item in await self.redis.lrange(self._key("said", attempt_key), 0, -1):
            at, _, text = item.decode().partition("|")
            out.append((float(at), text))
        return out

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._reporting:  # reports being applied: a moment to finish, then cancelled
            _, pending = await asyncio.wait(set(self._reporting), timeout=2.0)
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
