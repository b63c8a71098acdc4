"""Sending messages through the API, as a client does, on the sandbox provider."""

from gateway.providers.sandbox import messaging as sandbox
from tests.helpers import auth


async def send(client, token, **body):
    """POST /v1/messages; these tests are about messaging, so sends are transactional (OTP-like)."""
    body.setdefault("purpose", "transactional")
    headers = auth(token) | body.pop("headers", {})
    return await client.post("/v1/messages", json=body, headers=headers)


async def test_send_then_read_the_full_timeline(client, token, wait_status):
    resp = await send(client, token, to="(415) 555-0100", body="Your code is 1234")
    assert resp.status == 201
    accepted = await resp.json()
    assert accepted["status"] == "queued"
    assert accepted["to"] == "+14155550100"
    assert accepted["trace_id"] == resp.headers["X-Trace-Id"]
    assert accepted["segments"] == 1 and accepted["encoding"] == "GSM-7"
    done = await wait_status(accepted["id"], "delivered")
    types = [e["type"] for e in done["timeline"]]
    for expected in (
        "message.accepted",
        "guardrail.allow",
        "message.attempt_started",
        "message.dispatched",
        "message.sent",
        "message.delivered",
    ):
        assert expected in types, types
    assert (
        types.index("message.accepted")
        < types.index("message.dispatched")
        < types.index("message.delivered")
    )
    assert done["provider"] == "sandbox" and done["provider_message_id"].startswith("SB")
    assert [a["outcome"] for a in done["attempts"]] == ["accepted"]
    trace = await (
        await client.get(f"/v1/traces/{accepted['trace_id']}", headers=auth(token))
    ).json()
    assert [m["id"] for m in trace["messages"]] == [accepted["id"]]
    assert {e["type"] for e in trace["timeline"]} >= {"message.accepted", "message.delivered"}


async def test_whatsapp_and_templates(client, token, wait_status):
    resp = await client.post(
        "/v1/templates",
        json={"name": "otp", "body": "Hi {{ name }}, your code is {{code}}"},
        headers=auth(token),
    )
    assert resp.status == 201
    assert (await resp.json())["variables"] == ["code", "name"]
    resp = await send(
        client,
        token,
        channel="whatsapp",
        to="whatsapp:+14155550100",
        template="otp",
        variables={"name": "Ada", "code": 991},
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert msg["body"] == "Hi Ada, your code is 991" and msg["channel"] == "whatsapp"
    await wait_status(msg["id"], "delivered")

    resp = await send(client, token, to="+14155550100", template="otp", variables={"name": "Ada"})
    assert resp.status == 422
    problem = await resp.json()
    assert problem["code"] == "missing_template_variable" and problem["missing"] == ["code"]
    resp = await send(client, token, to="+14155550100", template="nope")
    assert (await resp.json())["code"] == "unknown_template"


async def test_invalid_input_is_a_clear_problem(client, token):
    cases = [
        ({"to": "12", "body": "x"}, "invalid_phone_number"),
        ({"to": "+14155550100"}, "validation_error"),
        ({"to": "+14155550100", "body": "x", "template": "t"}, "validation_error"),
        ({"to": "+14155550100", "body": "x", "channel": "fax"}, "validation_error"),
        ({"to": "+14155550100", "body": "x", "from": "+14155550199"}, "unknown_sender"),
    ]
    for body, code in cases:
        resp = await send(client, token, **body)
        assert resp.status == 422, (body, await resp.text())
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == code, body
    resp = await client.post(
        "/v1/messages",
        data=b"{not json",
        headers=auth(token) | {"Content-Type": "application/json"},
    )
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_json"


async def test_segments_and_usage(client, token, wait_status):
    long_text = "€" * 81  # GSM-7 extension chars cost 2 septets: 162 septets -> 2 segments of 153
    ucs2 = "héllo 👋" * 12  # UCS-2: 96 code units -> 2 segments of 67
    ids = []
    for text, segments, encoding in ((long_text, 2, "GSM-7"), (ucs2, 2, "UCS-2")):
        msg = await (await send(client, token, to="+14155550100", body=text)).json()
        assert (msg["segments"], msg["encoding"]) == (segments, encoding), msg
        ids.append(msg["id"])
    for mid in ids:
        await wait_status(mid, "delivered")
    resp = await client.get(
        "/v1/usage",
        params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        headers=auth(token),
    )
    usage = await resp.json()
    assert usage["lines"] == [
        {"channel": "sms", "unit": "sms_segment", "quantity": 4, "records": 2, "exported": 0}
    ]


async def test_sandbox_scenarios_end_in_the_right_status(client, token, wait_status):
    cases = {
        sandbox.DELIVERS: "delivered",
        sandbox.FAILS_PERMANENTLY: "failed",
        sandbox.FAILS_TWICE: "delivered",
        sandbox.OUT_OF_ORDER: "delivered",
        sandbox.UNDELIVERED: "undelivered",
    }
    ids = {}
    for number in cases:
        ids[number] = (await (await send(client, token, to=number, body="hello")).json())["id"]
    for number, final in cases.items():
        msg = await wait_status(ids[number], final, timeout=20)
        if number == sandbox.FAILS_TWICE:
            assert [a["outcome"] for a in msg["attempts"]] == [
                "transient_error",
                "transient_error",
                "accepted",
            ]
        if number == sandbox.OUT_OF_ORDER:
            noops = [e for e in msg["timeline"] if e["type"] == "message.status_noop"]
            assert len(noops) >= 2  # sent after delivered, the duplicate delivered, queued
        if number == sandbox.UNDELIVERED:
            assert msg["error_code"] == "30003"
        if number == sandbox.FAILS_PERMANENTLY:
            assert msg["error_code"] == "invalid_destination"
