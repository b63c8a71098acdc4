"""The classic case (issue 15): a voice agent's call ends → a text goes out at once → a reply
or a day → a follow-up email, with the day passed on the injected clock. Also: a call as a step,
waiting for its end and branching on its outcome."""

from __future__ import annotations

import asyncio

from tests.workflows.conftest import CUSTOMER

EMAIL = "ana@sandbox.trunkline.dev"  # the sandbox delivers it

AFTER_CALL = {
    "name": "after-call",
    "trigger": {"event": "call.completed", "agent_calls_only": True},
    "steps": [
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
            "send": {
                "channel": "email",
                "to": "{{email}}",
                "subject": "Following up, {{name}}",
                "text": "Anything else we can do for you, {{name}}?",
                "purpose": "transactional",
            }
        },
    ],
}


async def place_agent_call(flows, **extra) -> str:
    call = await flows.post(
        "/v1/calls",
        {
            "to": CUSTOMER,
            "purpose": "transactional",
            "on_answer": {"agent": {"system_prompt": "Book the appointment."}},
            "metadata": {"name": "Ana", "email": EMAIL},
            **extra,
        },
    )
    return call["id"]


async def triggered_run(flows, workflow_id: str, call_id: str) -> dict:
    async def found():
        page = await flows.get(f"/v1/workflows/{workflow_id}/runs")
        return [r for r in page["data"] if r["variables"].get("call_id") == call_id]

    deadline = asyncio.get_running_loop().time() + 10
    while not (runs := await found()):
        assert asyncio.get_running_loop().time() < deadline, "no run was started by the call"
        await asyncio.sleep(0.05)
    [run] = runs
    return run


async def test_call_ends_sms_now_no_reply_for_a_day_then_the_follow_up(flows):
    wf = await flows.post("/v1/workflows", AFTER_CALL, 201)
    call_id = await place_agent_call(flows)
    run = await triggered_run(flows, wf["id"], call_id)
    assert run["variables"]["to"] == CUSTOMER and run["variables"]["name"] == "Ana"
    await flows.status(run["id"], "waiting")
    [sms] = await flows.sent(run["id"])
    assert sms["body"] == "Thanks for your call, Ana."

    flows.clock.advance(days=1, seconds=1)
    done = await flows.status(run["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]] == ["accepted", "timed_out", "else", "accepted"]
    _, follow_up = await flows.sent(run["id"])
    assert (follow_up["channel"], follow_up["to_number"]) == ("email", EMAIL)
    assert follow_up["trace_id"] == run["trace_id"]
    email = await flows.get(f"/v1/messages/{follow_up['id']}")
    assert email["subject"] == "Following up, Ana"
    assert email["body"] == "Anything else we can do for you, Ana?"  # the text part
    assert await _eventually_status(flows, follow_up["id"], "delivered")


async def test_call_ends_sms_now_a_reply_stops_the_follow_up(flows):
    wf = await flows.post("/v1/workflows", AFTER_CALL, 201)
    run = await triggered_run(flows, wf["id"], await place_agent_call(flows))
    await flows.status(run["id"], "waiting")
    await flows.reply("All good, thank you")
    done = await flows.status(run["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]] == ["accepted", "replied", "then"]
    flows.clock.advance(days=2)
    await asyncio.sleep(0.5)
    assert len(await flows.sent(run["id"])) == 1


async def _eventually_status(flows, message_id: str, status: str) -> bool:
    deadline = asyncio.get_running_loop().time() + 10
    while (await flows.get(f"/v1/messages/{message_id}"))["status"] != status:
        assert asyncio.get_running_loop().time() < deadline, f"not {status}"
        await asyncio.sleep(0.05)
    return True


async def test_only_agent_calls_trigger_it(flows):
    wf = await flows.post("/v1/workflows", AFTER_CALL, 201)
    plain = await flows.post("/v1/calls", {"to": CUSTOMER, "purpose": "transactional"})
    agent_call = await place_agent_call(flows)
    await triggered_run(flows, wf["id"], agent_call)
    page = await flows.get(f"/v1/workflows/{wf['id']}/runs")
    assert [r["variables"]["call_id"] for r in page["data"]] == [agent_call]
    assert plain["id"] != agent_call


async def test_a_call_step_waits_for_its_end_and_branches_on_the_outcome(flows):
    busy = "+14155550201"  # the sandbox voice busy number
    wf = await flows.define(
        [
            {"send": {"channel": "call", "to": "{{to}}", "purpose": "transactional"}},
            {"wait": {"until": "call.completed", "timeout": "1h"}},
            {"branch": {"if": "busy", "then": "text"}},
            {"branch": {"if": "completed", "then": "end"}},
            {
                "id": "text",
                "send": {
                    "channel": "sms",
                    "to": "{{to}}",
                    "body": "We tried to call you.",
                    "purpose": "transactional",
                },
            },
        ]
    )
    answered = await flows.start(wf["id"], to=CUSTOMER)
    engaged = await flows.start(wf["id"], to=busy)
    done = await flows.status(answered["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]] == ["accepted", "completed", "else", "then"]
    call_id = done["timeline"][0]["detail"]["call_id"]
    call = await flows.get(f"/v1/calls/{call_id}")
    assert call["trace_id"] == answered["trace_id"] and call["status"] == "completed"
    done = await flows.status(engaged["id"], "completed")
    assert [s["outcome"] for s in done["timeline"]] == ["accepted", "busy", "then", "accepted"]
    assert [m["body"] for m in await flows.sent(engaged["id"])] == ["We tried to call you."]


async def test_an_inbound_message_starts_a_run_that_answers_the_sender(flows):
    wf = await flows.post(
        "/v1/workflows",
        {
            "name": "auto-reply",
            "trigger": {"event": "message.received"},
            "steps": [
                {
                    "send": {
                        "channel": "sms",
                        "to": "{{to}}",
                        "body": "We got '{{body}}' and will answer soon.",
                        "purpose": "transactional",
                    }
                }
            ],
        },
        201,
    )
    await flows.reply("Can I move my appointment?")

    async def answered() -> list[dict]:
        page = await flows.get(f"/v1/workflows/{wf['id']}/runs?status=completed")
        return page["data"]

    deadline = asyncio.get_running_loop().time() + 10
    while not (runs := await answered()):
        assert asyncio.get_running_loop().time() < deadline, "no run answered the message"
        await asyncio.sleep(0.05)
    [run] = runs
    [sent] = await flows.sent(run["id"])
    assert sent["to_number"] == CUSTOMER
    assert sent["body"] == "We got 'Can I move my appointment?' and will answer soon."
    # its own answer is outbound: it starts nothing more
    await asyncio.sleep(0.5)
    assert len((await flows.get(f"/v1/workflows/{wf['id']}/runs"))["data"]) == 1


async def test_a_triggered_run_missing_a_variable_fails_at_that_step(flows):
    wf = await flows.post("/v1/workflows", AFTER_CALL, 201)
    call_id = await place_agent_call(flows, metadata={})  # no name for {{name}}
    run = await triggered_run(flows, wf["id"], call_id)
    failed = await flows.status(run["id"], "failed")
    [step] = failed["timeline"]
    assert (step["status"], step["outcome"]) == ("failed", "missing_template_variable")
    assert "name" in failed["error"]
    assert await flows.sent(run["id"]) == []
