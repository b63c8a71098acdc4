"""A workflow's steps: what is checked when it is stored, and how a run reads them.

Stored steps are the validated JSON (model_dump by alias), so the engine reads plain dicts.
A send's fields may hold `{{variables}}`: at definition time a field whose value holds a
placeholder is checked only once rendered (at run start, with the run's variables), every
other field is checked now — a typo in `purpose` is a 422 naming the step, not a failed run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from campaigns.model import parse_duration
from gateway.calls.schemas import PlaceCall
from gateway.core.errors import ValidationFailed
from gateway.messages.schemas import SendMessage
from gateway.messages.templates import PLACEHOLDER, render
from gateway.workflows.schemas import KINDS, WorkflowIn

END = "end"
NEXT = "next"


def kind(step: dict[str, Any]) -> str:
    return next(k for k in KINDS if k in step)


def step_problem(index: int, step: dict[str, Any], detail: str, **extra: Any) -> ValidationFailed:
    label = f"steps[{index}]" + (f" ({step['id']})" if step.get("id") else "")
    return ValidationFailed(
        f"{label} {kind(step)}: {detail}",
        code=extra.pop("code", "workflow_invalid_step"),
        step=index,
        step_id=step.get("id"),
        **extra,
    )


def is_call(spec: dict[str, Any]) -> bool:
    return spec.get("channel") == "call"


def send_model(spec: dict[str, Any]) -> tuple[type[BaseModel], dict[str, Any]]:
    """The request model a send step is (a call or a message) and its fields for it."""
    if is_call(spec):
        return PlaceCall, {k: v for k, v in spec.items() if k != "channel"}
    return SendMessage, spec


def _templated(data: Any, loc: tuple[int | str, ...]) -> bool:
    """Does the value at `loc` (or one around it) still hold a {{placeholder}}?"""
    node = data
    for part in loc:
        if isinstance(node, str):
            break
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(node, str) and PLACEHOLDER.search(node) is not None


def _sample(data: dict[str, Any]) -> dict[str, Any]:
    """The fields with every {{placeholder}} filled by a value of the right shape, so that the
    model's own cross-field checks (body or template, …) run before the variables are known."""
    address = "ana@example.com" if data.get("channel") == "email" else "+14155550100"
    out: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, str) and PLACEHOLDER.search(value):
            value = address if name in ("to", "from") else PLACEHOLDER.sub("x", value)
        out[name] = value
    return out


def check_send(index: int, step: dict[str, Any], spec: dict[str, Any], *, final: bool) -> None:
    """Validate a send step's fields; `final` (rendered): placeholders are no excuse."""
    model, data = send_model(spec)
    try:
        model.model_validate(data if final else _sample(data))
    except ValidationError as exc:
        errors = [
            e
            for e in exc.errors(include_url=False)
            if final or not _templated(data, tuple(e["loc"]))
        ]
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first["loc"]) or "send"
            raise step_problem(index, step, f"{where}: {first['msg']}") from None


def wait_seconds(spec: dict[str, Any]) -> float:
    return parse_duration(spec.get("duration") or spec.get("timeout") or "0s")


def validate(body: WorkflowIn) -> list[dict[str, Any]]:
    """The steps as stored, or a 422 naming the first step that is wrong."""
    steps = [s.model_dump(by_alias=True, exclude_none=True) for s in body.steps]
    ids: dict[str, int] = {}
    for i, step in enumerate(steps):
        if "id" in step:
            if step["id"] in (END, NEXT) or step["id"] in ids:
                raise step_problem(i, step, f"the id {step['id']!r} is taken")
            ids[step["id"]] = i
    sent: set[str] = set()  # kinds of send seen so far: "message", "call"
    for i, step in enumerate(steps):
        k = kind(step)
        if k == "send":
            check_send(i, step, step["send"], final=False)
            sent.add("call" if is_call(step["send"]) else "message")
        elif k == "wait":
            spec = step["wait"]
            if spec.get("duration") and spec.get("timeout"):
                raise step_problem(i, step, "give duration or timeout, not both")
            if not (spec.get("duration") or spec.get("timeout")):
                raise step_problem(
                    i, step, "every wait has a duration (with until: its timeout), e.g. '1d'"
                )
            until = spec.get("until")
            if until is not None and until.split(".")[0] not in sent:
                what = "call" if until.startswith("call.") else "message"
                raise step_problem(i, step, f"until {until!r} needs an earlier {what} send step")
        elif k == "branch":
            for label in ("then", "else"):
                target(steps, ids, i, step["branch"].get(label, NEXT), label)
    return steps


def target(
    steps: list[dict[str, Any]], ids: dict[str, int] | None, index: int, to: Any, label: str
) -> int:
    """The index a branch goes to (len(steps) = the end); forward only, so a run always ends."""
    if ids is None:
        ids = {s["id"]: n for n, s in enumerate(steps) if "id" in s}
    if to == END:
        return len(steps)
    if to == NEXT:
        return index + 1
    if isinstance(to, int) and not isinstance(to, bool):
        n = to
    elif isinstance(to, str) and to in ids:
        n = ids[to]
    else:
        raise step_problem(index, steps[index], f"{label}: no step {to!r}")
    if not index < n <= len(steps):
        raise step_problem(index, steps[index], f"{label}: {to!r} is not a later step")
    return n


def render_value(value: Any, variables: dict[str, Any], name: str) -> Any:
    """Every string inside `value` with the run's variables substituted (the template renderer
    of messages: plain text, nothing evaluated)."""
    if isinstance(value, str):
        return render(name, value, variables)
    if isinstance(value, dict):
        return {k: render_value(v, variables, name) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, variables, name) for v in value]
    return value


def check_run(steps: list[dict[str, Any]], variables: dict[str, Any]) -> None:
    """Render every send with the run's variables before the run starts: a missing variable
    or a bad number is a 422 naming the step, not a run that fails halfway."""
    for i, step in enumerate(steps):
        k = kind(step)
        if k not in ("send", "webhook"):
            continue
        try:
            rendered = render_value(step[k], variables, f"steps[{i}]")
        except ValidationFailed as exc:
            raise step_problem(i, step, exc.detail, code=exc.code, **exc.extra) from None
        if k == "send":
            check_send(i, step, rendered, final=True)


def condition_holds(cond: Any, context: dict[str, Any], variables: dict[str, Any]) -> bool:
    """A branch's `if`: an outcome name (of the latest send or wait), or a variable test."""
    if isinstance(cond, str):
        return context.get("last_outcome") == cond
    name = cond["variable"]
    if cond.get("exists") is not None:
        return (name in variables) == cond["exists"]
    value = variables.get(name)
    if "in" in cond:
        return value in cond["in"]
    return value == cond.get("equals")
