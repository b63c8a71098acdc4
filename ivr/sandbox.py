"""The sandbox transport: runs a flow with scripted caller inputs and returns the transcript.

The caller's inputs are consumed by the nodes that wait for the caller: a gather takes the
next input as its DTMF entry ("" is silence: the gather's timeout), a record takes it as a
recording ("" records nothing). When the script runs out while a node waits for the caller,
the caller hangs up (`inputs_exhausted`). Webhook nodes really POST (signed, SSRF-guarded, with
their timeout); a transfer is evaluated by the guardrail chain like any outbound call but not
dialled — a refusal takes the fallback branch exactly as it would on a live call.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ivr.engine import (
    CallerHangup,
    Digits,
    Input,
    NoInput,
    Recorded,
    Session,
    Transfer,
    TransferVerdict,
    Webhook,
)
from ivr.runner import FlowRunner, Stepped

T = TypeVar("T")
MAX_ROUNDS = 1000  # steps per simulation: a webhook answering `next` in a ring stops here


async def simulate(
    runner: FlowRunner,
    row: Any,
    *,
    caller: str,
    called: str | None,
    inputs: list[str],
    transport: str = "simulate",
) -> tuple[Session, int]:
    """Run the flow to its end; returns the final session and how many inputs were left."""
    script = list(inputs)
    stepped = await runner.start(row, caller=caller, called=called, transport=transport)
    for _ in range(MAX_ROUNDS):
        session = stepped.session
        if session.ended is not None:
            return session, len(script)
        stepped = await _answer(runner, stepped, script)
    final = await runner.feed(stepped.session, CallerHangup("simulation_step_limit"))
    return final.session, len(script)


async def _answer(runner: FlowRunner, stepped: Stepped, script: list[str]) -> Stepped:
    session = stepped.session
    waiting = session.waiting
    if waiting == "webhook":
        cmd = _last(stepped, Webhook)
        return await runner.feed(session, await runner.call_webhook(session, cmd))
    if waiting == "transfer":
        cmd_t = _last(stepped, Transfer)
        refused, ticket, _cleared = await runner.place_transfer(session, cmd_t, "sandbox")
        if refused is not None:
            return await runner.feed(session, refused)
        assert ticket is not None and runner.transfers is not None
        # cleared at accept and dispatch; a simulation stops there: the leg is not dialled
        await runner.transfers.finish(ticket, "canceled", "simulated: cleared, not dialled")
        verdict = TransferVerdict("transferred", "simulate: cleared, not dialled", ticket.call_id)
        return await runner.feed(session, verdict)
    if not script:
        return await runner.feed(session, CallerHangup("inputs_exhausted"))
    raw = script.pop(0)
    event: Input
    if waiting == "record":
        n = len(session.recordings) + 1
        event = (
            NoInput()
            if raw == ""
            else Recorded(f"sandbox://recordings/{session.id}/{n}", float(len(raw)))
        )
    else:
        event = NoInput() if raw == "" else Digits(raw)
    return await runner.feed(session, event)


def _last(stepped: Stepped, kind: type[T]) -> T:
    for cmd in reversed(stepped.commands):
        if isinstance(cmd, kind):
            return cmd
    raise RuntimeError(f"the session waits for a {kind.__name__} it was never given")
