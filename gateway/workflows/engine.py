"""The workflow engine: a job on the `workflows` queue takes a run's steps until it waits or ends.

Each step is taken under the run's row lock, in one transaction that also records its
outcome and moves the run on — so a cancel (which takes the same lock) lands between steps,
never in one, and once answered nothing more is sent.

Sends go through the one pipeline (`MessagePipeline.accept`, `CallPipeline.accept`: routing,
guardrails, idempotency) exactly as POST /v1/messages and /v1/calls do, with the run's trace
id and the Idempotency-Key `workflow:<run id>:<step>`. A worker killed mid-step loses its
transaction; the job's lease runs out and another worker takes the step again under the same
key, which replays the first answer: one message or call per step, whatever crashed when.
A guardrail refusal is an outcome (`refused`, with its code) that branches can read.

Webhook steps POST a signed body (Trunkline-Signature, as customer webhooks are signed, with
the workflow's secret) and are retried with the job; a receiver dedupes on the
Idempotency-Key header (the same per step), since a crash after the POST posts it again.

A run takes the steps of the workflow version it started on (`workflow_runs.workflow_version`;
versions are immutable rows), so editing or archiving a workflow never changes a run under way.

Waits record what they wait for and until when, on the engine's injected clock (tests move
it a day on); the event subscriber and the timer (gateway/workflows/follow.py) end them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from gateway import queue
from gateway.calls.schemas import PlaceCall
from gateway.core.errors import Problem, ValidationFailed
from gateway.logs import get_logger
from gateway.messages.schemas import SendMessage
from gateway.pipeline.accept import MessagePipeline
from gateway.pipeline.calls import CallPipeline
from gateway.pipeline.groupcommit import Outcome
from gateway.settings import WebhookSettings
from gateway.tenants.service import Principal
from gateway.webhooks import signing, ssrf
from gateway.workflows import definition, repo, runs, waits

log = get_logger(__name__)
CURSOR = "workflows"  # the event subscriber's cursor (follow.py)
USER_AGENT = "Trunkline-Workflows/1"


def step_key(run_id: uuid.UUID, step: int) -> str:
    """The Idempotency-Key of one step's send: the same on every try, by any worker."""
    return f"workflow:{run_id}:{step}"


@dataclass
class StepResult:
    outcome: str
    detail: dict[str, Any]
    context: dict[str, Any]


@dataclass
class WorkflowEngine:
    db: asyncpg.Pool
    messages: MessagePipeline | None
    calls: CallPipeline | None
    clock: Callable[[], datetime]
    webhooks: WebhookSettings
    session: aiohttp.ClientSession | None = None

    async def handle(self, job: queue.Job) -> None:
        """Take the run's steps until it waits, ends or is canceled."""
        run_id = runs.run_id_of(job.payload["run_id"])
        for _ in range(1000):  # steps only go forward (definition.target): a run ends
            if not await self.step(run_id, last_try=job.attempts >= job.max_attempts):
                return
        raise queue.RetryableError("too many steps in one job")

    async def on_bury(self, conn: asyncpg.Connection, job: queue.Job, reason: str) -> None:
        """The run's job spent its retries: the run fails (in the burying transaction)."""
        run = await repo.get_run(conn, runs.run_id_of(job.payload["run_id"]), lock=True)
        if run is not None and run["status"] == "running":
            await runs.fail(conn, run, f"the step could not be taken: {reason}")

    async def step(self, run_id: uuid.UUID, *, last_try: bool = False) -> bool:
        """Take the run's current step; True if the run should go on at once."""
        async with self.db.acquire() as conn, conn.transaction():
            run = await repo.get_run(conn, run_id, lock=True)
            if run is None or run["status"] != "running":
                return False
            # The version the run started on: an edit since then does not change its steps.
            workflow = await repo.get_version(conn, run["workflow_id"], run["workflow_version"])
            assert workflow is not None
            steps: list[dict[str, Any]] = workflow["steps"]
            i = run["step"]
            if i >= len(steps):
                await runs.complete(conn, run, i)
                return False
            step = steps[i]
            kind = definition.kind(step)
            if await repo.start_step(conn, run_id, i, kind):
                await runs.emit_started(conn, run, i, kind)
            context = dict(run["context"])
            try:
                if kind == "send":
                    result = await self._run_send(conn, run, i, step["send"], context)
                elif kind == "webhook":
                    result = await self._webhook(run, workflow, i, step["webhook"], last_try)
                    context |= {"last_outcome": result.outcome}
                    result.context = context
                elif kind == "branch":
                    return await self._branch(conn, run, steps, i, step["branch"], context)
                else:
                    return await self._wait(conn, run, step["wait"], context)
            except ValidationFailed as exc:
                await runs.fail(conn, run, exc.detail, kind=kind, code=exc.code)
                return False
            moved = await runs.finish_step(
                conn,
                run,
                kind,
                result.outcome,
                result.detail,
                next_step=i + 1,
                context=result.context,
            )
            return moved["status"] == "running"

    # -- send -------------------------------------------------------------------------------

    async def _run_send(
        self,
        conn: asyncpg.Connection,
        run: asyncpg.Record,
        i: int,
        spec: dict[str, Any],
        context: dict[str, Any],
    ) -> StepResult:
        rendered = definition.render_value(spec, run["variables"], f"steps[{i}]")
        model, data = definition.send_model(rendered)
        req = model.model_validate(data)  # checked when the run started: cannot fail here
        key = step_key(run["id"], i)
        digest = hashlib.sha256(json.dumps(rendered, sort_keys=True).encode()).digest()
        now = await conn.fetchval("SELECT now()")  # the send's start, for replies after it
        try:
            if isinstance(req, PlaceCall):
                outcome = await self._call(run, req, i, key, digest)
                kind, ref = "call", "call_id"
            else:
                assert isinstance(req, SendMessage)
                outcome = await self._message(conn, run, req, i, key, digest)
                kind, ref = "message", "message_id"
        except Problem as exc:  # stored nowhere: the key is free for the next try
            if exc.status in (409, 429) or exc.status >= 500:  # key in flight, pool full, 503
                raise queue.RetryableError(f"{exc.code}: {exc.detail}") from exc
            raise ValidationFailed(exc.detail, code=exc.code) from exc  # retrying cannot help
        body = outcome.body if isinstance(outcome.body, dict) else {}
        subject = body.get("id") or body.get(ref)
        if 200 <= outcome.status < 300:  # 201: stored, the send or dial follows
            result = "scheduled" if body.get("status") == "scheduled" else "accepted"
            detail = {ref: subject, "status": body.get("status")}
        elif outcome.status in (422, 429) and body.get("title") == "Refused by a guardrail":
            result = "refused"
            detail = {ref: subject, "code": body.get("code"), "reason": body.get("detail")}
        elif outcome.status in (409,) or outcome.status >= 500:
            raise queue.RetryableError(f"send answered {outcome.status}: {body.get('code')}")
        else:
            raise ValidationFailed(
                f"the send was refused: {body.get('detail')}", code=str(body.get("code"))
            )
        send = {
            "kind": kind,
            "id": str(subject) if subject else None,
            "to": rendered.get("to"),
            "outcome": result,
            "at": now.isoformat(),
            "step": i,
        }
        context = context | {"send": send, "last_outcome": result}
        if outcome.replayed:
            detail["replayed"] = True  # a retried step: the first try's send, not a new one
        return StepResult(result, detail, context)

    async def _message(
        self,
        conn: asyncpg.Connection,
        run: asyncpg.Record,
        req: SendMessage,
        step: int,
        key: str,
        digest: bytes,
    ) -> Outcome:
        if self.messages is None:
            raise queue.RetryableError("no message pipeline in this process")
        name = await repo.tenant_name(conn, run["tenant_id"])
        principal = Principal(run["tenant_id"], name, f"workflow:{run['workflow_id']}", ("*",))
        req = req.model_copy(update={"metadata": _metadata(run, step, req.metadata)})
        return await self.messages.accept(
            principal, req, trace_id=run["trace_id"], idempotency_key=key, request_digest=digest
        )

    async def _call(
        self, run: asyncpg.Record, req: PlaceCall, step: int, key: str, digest: bytes
    ) -> Outcome:
        if self.calls is None:
            raise queue.RetryableError("no call pipeline in this process")
        req = req.model_copy(update={"metadata": _metadata(run, step, req.metadata)})
        return await self.calls.accept(
            run["tenant_id"],
            None,
            req,
            trace_id=run["trace_id"],
            idempotency_key=key,
            request_digest=digest,
            wait_for_pool=True,
        )

    # -- wait -------------------------------------------------------------------------------

    async def _wait(
        self,
        conn: asyncpg.Connection,
        run: asyncpg.Record,
        spec: dict[str, Any],
        context: dict[str, Any],
    ) -> bool:
        seconds = definition.wait_seconds(spec)
        until = spec.get("until")
        wake_at = self.clock() + timedelta(seconds=seconds)
        if until is None:
            await runs.begin_wait(conn, run, until=None, subject=None, since=None, wake_at=wake_at)
            return False
        await repo.lock_cursor(conn, CURSOR, share=True)  # see waits.py: no missed event
        subject = waits.subject_for(until, context)
        if subject is None:  # refused, or no such send: nothing can answer it
            last = (context.get("send") or {}).get("outcome", "nothing_sent")
            await runs.end_wait(conn, run, last, {"reason": "nothing was sent to wait on"})
            return False
        done = await waits.already(conn, run, until, subject)
        if done is not None:
            await runs.end_wait(conn, run, *done)
            return False
        since = datetime.fromisoformat(context["send"]["at"])
        await runs.begin_wait(conn, run, until=until, subject=subject, since=since, wake_at=wake_at)
        return False

    # -- branch -----------------------------------------------------------------------------

    async def _branch(
        self,
        conn: asyncpg.Connection,
        run: asyncpg.Record,
        steps: list[dict[str, Any]],
        i: int,
        spec: dict[str, Any],
        context: dict[str, Any],
    ) -> bool:
        taken = definition.condition_holds(spec["if"], context, run["variables"])
        label = "then" if taken else "else"
        to = definition.target(steps, None, i, spec.get(label, definition.NEXT), label)
        moved = await runs.finish_step(
            conn, run, "branch", label, {"to": to}, next_step=to, context=context
        )
        return moved["status"] == "running"

    # -- webhook ----------------------------------------------------------------------------

    async def _webhook(
        self,
        run: asyncpg.Record,
        workflow: asyncpg.Record,
        i: int,
        spec: dict[str, Any],
        last_try: bool,
    ) -> StepResult:
        extra = definition.render_value(spec.get("body") or {}, run["variables"], f"steps[{i}]")
        payload = {
            "type": "workflow.webhook",
            "run_id": str(run["id"]),
            "workflow_id": str(run["workflow_id"]),
            "workflow": workflow["name"],
            "step": i,
            "trace_id": run["trace_id"],
            "variables": run["variables"],
            "last_outcome": run["context"].get("last_outcome"),
            "data": extra,
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            signing.HEADER: signing.sign(workflow["webhook_secret"], body),
            "Idempotency-Key": step_key(run["id"], i),
            "X-Trace-Id": run["trace_id"],
            "traceparent": f"00-{run['trace_id']}-{secrets.token_hex(8)}-01",
        }
        url = spec["url"]
        status: int | None = None
        try:
            if self.session is None:
                raise RuntimeError("no HTTP session in this process")
            ssrf.check_literal_host(url, allow_private=self.webhooks.allow_private_targets)
            async with self.session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
        except ssrf.TargetRefused as exc:
            return StepResult("failed", {"url": url, "error": f"refused target: {exc}"}, {})
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            if not last_try:
                raise queue.RetryableError(error) from exc
            return StepResult("failed", {"url": url, "error": error}, {})
        if 200 <= status < 300:
            return StepResult("delivered", {"url": url, "status_code": status}, {})
        if (status in (408, 429) or status >= 500) and not last_try:
            raise queue.RetryableError(f"webhook answered HTTP {status}")
        return StepResult("failed", {"url": url, "status_code": status}, {})


def _metadata(run: asyncpg.Record, step: int, given: dict[str, str]) -> dict[str, str]:
    """The message's or call's metadata names the run and step that sent it (and keeps the
    step's own)."""
    return {
        **given,
        "workflow_id": str(run["workflow_id"]),
        "workflow_run_id": str(run["id"]),
        "workflow_step": str(step),
    }
