"""Runs end to end: send → wait for a reply or a day (on the injected clock) → follow-up; a
reply stops the reminder; a DNC-listed number is refused by the chain and the run branches;
a cancelled run sends nothing more; the timeline and the workflow.* events tell it all."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.events.sse import SSEStream, sse_headers
from tests.helpers import eventually
from tests.workflows.conftest import CUSTOMER

REMINDER = [
    {
        "send": {
            "channel": "sms",
            "to": "{{to}}",
            "body": "Thanks for your call, {{name}}.",
            "purpose": "transactional",
        }
    },
    {"wait": {"until": "message.inbound", "timeout": "1d"}},
    {"branch": {"if": "replied", "then": "end"}},
    {
        "id": "reminder",
        "send": {
            "channel": "sms",
            "to": "{{to}}",
            "body": "Still there, {{name}}?",
            "purpose": "transactional",
        },
    },
]


async def test_no_reply_in_a_day_sends_the_reminder(flows):
    wf = await flows.define(REMINDER)
    run = await flows.start(wf["id"], to=CUSTOMER, name="Ana")
    waiting = await flows.status(run["id"], "waiting")
    assert waiting["waiting"]["until"] == "message.inbound"
    [first] = await flows.sent(run["id"])
    assert first["body"] == "Thanks for your call, Ana."
    assert first["trace_id"] == run["trace_id"]  # the run's trace id on every step

    flows.clock.advance(hours=23)  # not yet
    await asyncio.sleep(0.5)  # the timer looks every 0.1 s
    assert (await flows.run(run["id"]))["status"] == "waiting"
    assert len(await flows.sent(run["id"])) == 1

    flows.clock.advance(hours=1, seconds=1)
    done = await flows.status(run["id"], "completed")
    first, reminder = await flows.sent(run["id"])
    assert reminder["body"] == "Still there, Ana?"
    assert reminder["trace_id"] == run["trace_id"]
    outcomes = [(s["kind"], s["outcome"]) for s in done["timeline"]]
    assert outcomes == [
        ("send", "accepted"),
        ("wait", "timed_out"),
        ("branch", "else"),
        ("send", "accepted"),
    ]
    assert done["timeline"][3]["id"] == "reminder"
    assert done["timeline"][0]["detail"]["message_id"] == str(first["id"])


async def test_a_reply_stops_the_reminder(flows):
    wf = await flows.define(REMINDER)
    run = await flows.start(wf["id"], to=CUSTOMER, name="Ana")
    await flows.status(run["id"], "waiting")
    await flows.reply("yes, thanks")
    done = await flows.status(run["id"], "completed")
    outcomes = [(s["kind"], s["outcome"]) for s in done["timeline"]]
    assert outcomes == [("send", "accepted"), ("wait", "replied"), ("branch", "then")]
    flows.clock.advance(days=2)  # the deadline passes: nothing more happens
    await asyncio.sleep(0.5)  # the timer looks every 0.1 s
    assert len(await flows.sent(run["id"])) == 1


async def test_a_reply_before_the_wait_begins_counts(flows):
    """The reply lands between the send and the wait (the table check, not only the log)."""
    wf = await flows.define([REMINDER[0], {"wait": {"duration": "0s"}}, *REMINDER[1:]])
    run = await flows.start(wf["id"], to=CUSTOMER, name="Ana")
    await flows.until(run["id"], lambda r: len(r["timeline"]) >= 1)
    await flows.reply("hi")
    done = await flows.status(run["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]][-2:] == ["replied", "then"]


async def test_dnc_number_is_refused_and_the_run_takes_its_branch(flows):
    blocked = "+12125550111"
    await flows.post("/v1/dnc", {"number": blocked}, 201)
    wf = await flows.define(
        [
            {"send": {"channel": "sms", "to": "{{to}}", "body": "Hi", "purpose": "marketing"}},
            {"branch": {"if": "refused", "then": "tell-crm"}},
            {"send": {"channel": "sms", "to": "{{to}}", "body": "Again", "purpose": "marketing"}},
            {
                "id": "tell-crm",
                "send": {
                    "channel": "sms",
                    "to": CUSTOMER,
                    "body": "{{to}} is on a DNC list",
                    "purpose": "transactional",
                },
            },
        ]
    )
    run = await flows.start(wf["id"], to=blocked)
    done = await flows.status(run["id"], "completed")
    first = done["timeline"][0]
    assert first["outcome"] == "refused" and first["detail"]["code"] == "dnc_listed"
    assert [s["step"] for s in done["timeline"]] == [0, 1, 3]
    assert done["timeline"][1]["outcome"] == "then"
    sent = await flows.sent(run["id"])
    assert (sent[0]["to_number"], sent[0]["status"]) == (blocked, "rejected")
    assert sent[1]["body"] == f"{blocked} is on a DNC list"
    assert len(sent) == 2


async def test_cancel_stops_a_waiting_run(flows):
    wf = await flows.define(REMINDER)
    run = await flows.start(wf["id"], to=CUSTOMER, name="Ana")
    await flows.status(run["id"], "waiting")
    canceled = await flows.post(f"/v1/workflow-runs/{run['id']}/cancel", {}, 200)
    assert canceled["status"] == "canceled" and canceled["ended_at"]
    again = await flows.post(f"/v1/workflow-runs/{run['id']}/cancel", {}, 200)
    assert again["status"] == "canceled"
    flows.clock.advance(days=2)
    await flows.reply("too late")
    assert (await flows.run(run["id"]))["status"] == "canceled"
    assert len(await flows.sent(run["id"])) == 1


async def test_workflow_events_reach_the_log_sse_and_webhook_endpoints(flows, aiohttp_server):
    got: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", hook)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}/events"
    await flows.post("/v1/webhook-endpoints", {"url": url, "event_types": ["workflow.*"]}, 201)
    resp = await flows.client.get("/v1/events?types=workflow.*", headers=sse_headers(flows.token))
    assert resp.status == 200
    stream = SSEStream(resp)
    wf = await flows.define([REMINDER[0]])
    run = await flows.start(wf["id"], to=CUSTOMER, name="Ana")
    await flows.status(run["id"], "completed")
    want = [
        "workflow.run.started",
        "workflow.step.started",
        "workflow.step.completed",
        "workflow.run.completed",
    ]

    async def page() -> list[dict]:
        out = await flows.get("/v1/events/page?types=workflow.*")
        return out["data"] if len(out["data"]) == len(want) else []

    events = await eventually(page)
    assert [e["type"] for e in events] == want
    streamed = [await stream.next() for _ in want]
    await stream.close()
    assert [(f.event, f.json["id"]) for f in streamed if f] == [
        (e["type"], e["id"]) for e in events
    ]
    assert {e["subject"] for e in events} == {run["id"]}
    assert {e["trace_id"] for e in events} == {run["trace_id"]}
    assert events[2]["data"]["outcome"] == "accepted"
    await eventually(lambda: _enough(got, len(want)))
    assert sorted(e["type"] for e in got) == sorted(want)
    trace = await flows.get(f"/v1/traces/{run['trace_id']}")
    assert len(trace["messages"]) == 1


async def _enough(got: list, n: int) -> bool:
    return len(got) >= n


async def test_once_a_cancel_has_answered_nothing_more_is_sent(flows):
    """Cancel a run in the middle of its sends: the step being taken finishes (the cancel
    waits for the run's lock), and after the answer no message is added."""
    texts = [
        {"send": {"channel": "sms", "to": "{{to}}", "body": f"{n}", "purpose": "transactional"}}
        for n in range(20)
    ]
    wf = await flows.define(texts)
    run = await flows.start(wf["id"], to=CUSTOMER)
    await flows.until(run["id"], lambda r: len(r["timeline"]) >= 2)
    canceled = await flows.post(f"/v1/workflow-runs/{run['id']}/cancel", {}, 200)
    assert canceled["status"] == "canceled"
    at_cancel = len(await flows.sent(run["id"]))
    assert at_cancel < len(texts)
    await asyncio.sleep(0.5)
    assert len(await flows.sent(run["id"])) == at_cancel
    done = [s for s in canceled["timeline"] if s["status"] == "done"]
    assert len(done) == at_cancel  # every message sent is a step recorded before the cancel


async def test_a_wait_for_delivery_ends_on_the_message_final_status(flows):
    wf = await flows.define(
        [
            {"send": {"channel": "sms", "to": "{{to}}", "body": "Hi", "purpose": "transactional"}},
            {"wait": {"until": "message.delivered", "timeout": "1h"}},
            {"branch": {"if": "delivered", "then": "end"}},
            {"send": {"channel": "sms", "to": CUSTOMER, "body": "{{to}} did not get it",
                      "purpose": "transactional"}},
        ]
    )  # fmt: skip
    ok = await flows.start(wf["id"], to=CUSTOMER)
    lost = await flows.start(wf["id"], to="+14155550105")  # the sandbox: sent, then undelivered
    done = await flows.status(ok["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]] == ["accepted", "delivered", "then"]
    done = await flows.status(lost["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]] == [
        "accepted",
        "undelivered",
        "else",
        "accepted",
    ]
    assert (
        done["timeline"][1]["detail"]["message_id"] == done["timeline"][0]["detail"]["message_id"]
    )
