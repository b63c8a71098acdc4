"""The outbound path for calls: accept → guardrails → pool → dispatch → provider → tracking.

Accept (API): one transaction holds the idempotency claim, the call row, the guardrail verdict
event, the acceptance event and the dispatch job (shared with the other accepts in flight:
see groupcommit.py). The channel is taken from the trunk pool
first (``try_acquire``, holder = call id): a full pool answers 429 ``pool_exhausted`` with
Retry-After and nothing is stored, so the same Idempotency-Key may simply retry.

Dispatch (worker): the guardrail chain runs again (the world changes between accept and dial),
the permit is (re)acquired — the dispatch of a campaign call waits for a channel, fairly, up to
``calls.pool_wait`` — and the attempt row with its key is committed *before* the provider is
asked. Then providers are tried in order:

- the provider took the call: done; its progress comes as reports (``CallService``);
- it failed before doing anything (not connected, refused, 5xx, breaker open): the next
  provider is tried at once (failover);
- it may have acted (timeout, connection lost after the request): the attempt stays open and
  the job is retried *on the same provider under the same key* — never elsewhere, which could
  ring the person twice;
- it refused for good (bad number, no caller id): the call fails.

Control (worker): hangup, bridge two calls, connect the answered call to its AI agent (create
the agent session, dial its SIP URI, bridge when it answers), and the deadlines of an answered
call (max_duration, amd_timeout: jobs with a run_at, committed with the answer). Each is a
queued job, so an API process never needs the AMI connection and a worker that dies mid-action
loses nothing.
"""

from gateway.pipeline.calls.accept import CallPipeline, CallPlan
from gateway.pipeline.calls.control import CallController
from gateway.pipeline.calls.dispatch import CallDispatcher
from gateway.pipeline.calls.route import CallRoute, PoolFull, call_ref, route_call, sip_host
from gateway.pipeline.calls.runtime import VOICE, VoiceRuntime, call_tasks

__all__ = [
    "VOICE",
    "CallController",
    "CallDispatcher",
    "CallPipeline",
    "CallPlan",
    "CallRoute",
    "PoolFull",
    "VoiceRuntime",
    "call_ref",
    "call_tasks",
    "route_call",
    "sip_host",
]
