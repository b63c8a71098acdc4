"""The one guardrail chain every outbound action passes, at accept time and again at dispatch.

Checks run in order; the first verdict that is not Allow decides. Every
decision carries the event that records it (which rule, and the inputs that
decided it), for the caller to write in the same transaction as the state
change. Only an Allow yields a `ClearedAction`.

The clock is the chain's `clock` (tests inject a fixed one); `CheckContext.memo`
lets the checks of one evaluation share what they fetched, so the database is
asked once per evaluation however many checks need it (guardrails/checks.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.core.actions import OutboundAction, Stage
from gateway.events.outbox import NewEvent
from guardrails.cleared import ClearedAction, _mint
from guardrails.verdicts import Allow, Defer, Deny, Verdict

if TYPE_CHECKING:
    from guardrails.policy import GuardrailPolicy

WhenClosed = Literal["deny", "defer"]
_STOPS = (Deny, Defer)  # the verdicts that end an evaluation
_STAGES = ("accept", "dispatch")  # where a check's `prepare` runs unless it says otherwise


@dataclass(frozen=True)
class CheckContext:
    stage: Stage
    now: datetime
    when_closed: WhenClosed = "defer"
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    conn: Any = None  # the caller's database connection, if it holds one (see evaluate)


class Check(Protocol):
    name: str

    async def __call__(self, action: OutboundAction, ctx: CheckContext) -> Verdict: ...


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str | None
    event: NewEvent
    at: datetime | None = None  # the chain's clock when it decided (a Defer's `until` is on it)
    # What an Allow clears, (action, stage): sealed into `cleared` when that is first asked for.
    clears: tuple[OutboundAction, str] | None = field(default=None, repr=False)

    @cached_property
    def cleared(self) -> ClearedAction | None:
        """An Allow's clearance, sealed on first use: accept decides but sends nothing, so it
        never pays for the seal (a repr of the action and an HMAC, ~2 % of an accept's CPU), and
        a dispatcher gets one issued when it is about to send."""
        return _mint(*self.clears) if self.clears is not None else None

    @property
    def allowed(self) -> bool:
        return isinstance(self.verdict, Allow)

    def defer_delay(self) -> float | None:
        """Seconds from the decision to a Defer's `until`, measured on the one clock that
        computed both: what the queue should wait, on its own clock (DESIGN.md, principle 12)."""
        if not isinstance(self.verdict, Defer) or self.at is None:
            return None
        return (self.verdict.until - self.at).total_seconds()


def _verdict_event(
    action: OutboundAction, ctx: CheckContext, verdict: Verdict, checked: list[str]
) -> NewEvent:
    data: dict[str, Any] = {
        "stage": ctx.stage,
        "checks": checked,
        "action": {
            "channel": action.channel,
            "to": action.to,
            "from": action.from_,
            "purpose": action.purpose,
            "key_id": action.key_id,
        },
        "inputs": verdict.inputs,
    }
    if isinstance(verdict, Allow):
        kind = "allow"
    elif isinstance(verdict, Deny):
        kind = "deny"
        data |= {"code": str(verdict.code), "reason": verdict.reason, "rule": verdict.rule}
    else:
        kind = "defer"
        data |= {"until": verdict.until.isoformat(), "reason": verdict.reason, "rule": verdict.rule}
    return NewEvent(action.tenant_id, f"guardrail.{kind}", action.subject, action.trace_id, data)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class GuardrailChain:
    checks: Sequence[Check] = field(default_factory=list)
    clock: Callable[[], datetime] = _utcnow
    policy: GuardrailPolicy | None = None  # what the checks were built from (GET /v1/limits)
    # Told of every decision with its stage (the daemon counts verdicts by rule for /metrics);
    # an observer must be quick and must not raise: it runs on the path of every action.
    observers: list[Callable[[Decision, str], None]] = field(default_factory=list)

    async def evaluate(
        self,
        action: OutboundAction,
        *,
        stage: Stage,
        now: datetime | None = None,
        when_closed: WhenClosed = "defer",
        conn: Any = None,
    ) -> Decision:
        """Run the checks in order; the first Deny or Defer decides.

        A caller that holds a pooled connection (e.g. inside its transaction) must pass it as
        `conn`: the checks then query on it instead of taking a second connection from the same
        pool, which under load would wait forever on connections held by callers like itself.

        Checks may also have `prepare(action, ctx)`, awaited for all of them concurrently before
        the checks run in order (so the database query and the Redis call overlap), and
        `release(action, ctx)`, awaited when the decision is a Deny or an error — to give back
        what `prepare` took (rate-limit tokens): a refused action costs nothing. A check whose
        `prepare` has work at some stages only names them in `prepare_stages`. A check with
        `prepare` may also have `start(action, ctx) -> bool`, called first and synchronously:
        True means its request is already sent, and its `prepare` only collects the reply.
        """
        ctx = CheckContext(stage=stage, now=now or self.clock(), when_closed=when_closed, conn=conn)
        checked: list[str] = []
        inputs: dict[str, Any] = {}
        try:
            await self._prepare(action, ctx)
            for check in self.checks:
                checked.append(check.name)
                verdict = await check(action, ctx)
                if isinstance(verdict, _STOPS):
                    if isinstance(verdict, Deny):
                        await self._release(action, ctx)
                    return self._observed(
                        Decision(
                            verdict,
                            check.name,
                            _verdict_event(action, ctx, verdict, checked),
                            at=ctx.now,
                        ),
                        stage,
                    )
                inputs[check.name] = verdict.inputs
        except BaseException:
            await asyncio.shield(self._release(action, ctx))
            raise
        allow = Allow(inputs=inputs)
        return self._observed(
            Decision(
                allow,
                None,
                _verdict_event(action, ctx, allow, checked),
                at=ctx.now,
                clears=(action, stage),
            ),
            stage,
        )

    def _observed(self, decision: Decision, stage: str) -> Decision:
        for observe in self.observers:
            observe(decision, stage)
        return decision

    async def _prepare(self, action: OutboundAction, ctx: CheckContext) -> None:
        # A check whose `start` sent its request already only collects the reply in `prepare`:
        # that is awaited last, with no task, while the other requests are on their way too.
        steps, collect = [], []
        for check in self.checks:
            prepare = getattr(check, "prepare", None)
            if prepare is None or ctx.stage not in getattr(check, "prepare_stages", _STAGES):
                continue  # (a prepare that has nothing to do at this stage gets no task)
            start = getattr(check, "start", None)
            (collect if start is not None and start(action, ctx) else steps).append(prepare)
        await self._run_together(steps, action, ctx)
        for prepare in collect:
            await prepare(action, ctx)

    @staticmethod
    async def _run_together(
        steps: list[Callable[[OutboundAction, CheckContext], Awaitable[None]]],
        action: OutboundAction,
        ctx: CheckContext,
    ) -> None:
        if len(steps) <= 1:
            for step in steps:
                await step(action, ctx)
            return
        # all but the first run as tasks, the first in this task: one task fewer to schedule
        others = [asyncio.ensure_future(p(action, ctx)) for p in steps[1:]]
        try:
            await steps[0](action, ctx)
        except BaseException:
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            raise
        for result in await asyncio.gather(*others, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    async def _release(self, action: OutboundAction, ctx: CheckContext) -> None:
        for check in self.checks:
            release = getattr(check, "release", None)
            if release is not None:
                await release(action, ctx)

    async def aclose(self) -> None:
        """Give back what the checks hold between evaluations: the rate-limit check's Redis
        connection and the suppression query's pool connection (both are also given up on
        their own: see guardrails/resp.py and guardrails/lease.py)."""
        for check in self.checks:
            close = getattr(check, "aclose", None)
            if close is not None:
                await close()
