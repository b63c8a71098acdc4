"""The webhook node obeys the customer-webhook SSRF guard: a flow cannot make the daemon POST
into its own network (the answer is an error, so the node takes on_error)."""

from __future__ import annotations

from ivr.engine import Webhook
from ivr.webhook import WebhookCaller


async def test_private_targets_are_refused_without_a_request():
    caller = WebhookCaller(allow_private=False)
    try:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/x",
            "http://2130706433/x",
        ):
            answer = await caller.call(Webhook(url, 1.0, {}), "whsec_x")
            assert not answer.ok and answer.error and answer.error.startswith("refused"), (
                url,
                answer,
            )
    finally:
        await caller.aclose()
