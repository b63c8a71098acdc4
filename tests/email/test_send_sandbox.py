"""Email through POST /v1/messages on the sandbox provider: every outcome its addresses give."""

from gateway.providers.sandbox import email as sandbox
from tests.email.conftest import POSTAL, send_email
from tests.helpers import auth


async def test_an_email_is_accepted_sent_and_delivered_with_its_timeline(
    client, token, wait_status
):
    resp = await send_email(
        client,
        token,
        to="Ana@Example.COM",
        text="Thanks for your order.",
        html="<p>Thanks for your <b>order</b>.</p>",
    )
    assert resp.status == 201, await resp.text()
    accepted = await resp.json()
    assert accepted["channel"] == "email" and accepted["status"] == "queued"
    assert accepted["to"] == "Ana@example.com"  # the domain normalised, the local part kept
    assert accepted["from"] == "noreply@example.com"  # providers.email.default_from
    assert accepted["subject"] == "Your receipt"
    assert accepted["body"] == "Thanks for your order."
    assert accepted["html"] == "<p>Thanks for your <b>order</b>.</p>"
    assert accepted["segments"] == 1
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
    allow = next(e for e in done["timeline"] if e["type"] == "guardrail.allow")
    assert allow["data"]["inputs"]["calling_hours"]["skipped"].startswith("calling hours do not")
    assert done["provider"] == "sandbox"
    listed = await client.get("/v1/messages", params={"to": "ANA@example.com"}, headers=auth(token))
    assert [m["id"] for m in (await listed.json())["data"]] == []  # the local part is kept
    listed = await client.get("/v1/messages", params={"to": "Ana@EXAMPLE.com"}, headers=auth(token))
    assert [m["id"] for m in (await listed.json())["data"]] == [accepted["id"]]


async def test_sandbox_outcomes(client, token, wait_status):
    outcomes = {
        sandbox.BOUNCED: "bounced",
        sandbox.COMPLAINED: "complained",
        sandbox.DEFERRED: "delivered",
        sandbox.UNKNOWN: "bounced",
        "someone@sandbox.trunkline.dev": "delivered",
    }
    ids = {}
    for address in outcomes:
        resp = await send_email(client, token, to=address)
        assert resp.status == 201, await resp.text()
        ids[address] = (await resp.json())["id"]
    for address, final in outcomes.items():
        done = await wait_status(ids[address], final, timeout=15)
        statuses = [e["type"] for e in done["timeline"]]
        if address == sandbox.BOUNCED:
            assert done["error_code"] == "5.1.1"
            assert "message.sent" in statuses and "email.suppressed" in statuses
        if address == sandbox.COMPLAINED:
            assert statuses.index("message.delivered") < statuses.index("message.complained")
        if address == sandbox.DEFERRED:
            assert [a["outcome"] for a in done["attempts"]] == ["transient_error", "accepted"]
        if address == sandbox.UNKNOWN:  # refused at RCPT: bounced, never sent
            assert "message.sent" not in statuses
            assert [a["outcome"] for a in done["attempts"]] == ["permanent_error"]


async def test_bad_addresses_and_shapes_are_clear_problems(client, token):
    cases = [
        ({"to": "not-an-address"}, "invalid_email_address"),
        ({"to": "ana@localhost"}, "invalid_email_address"),
        ({"to": "ana@example.com\r\nBcc: x@example.com"}, "invalid_email_address"),
        (
            {"to": "ana@example.com", "from": "Evil\r\nBcc: x@y.com <a@b.com>"},
            "invalid_email_address",
        ),
        ({"to": "ana@example.com", "from": "a@b.com, c@d.com"}, "invalid_email_address"),
        ({"to": "ana@example.com", "body": "hi"}, "validation_error"),
        ({"to": "ana@example.com", "subject": None}, "validation_error"),
        ({"to": "ana@example.com", "text": None}, "validation_error"),
        ({"to": "ana@example.com", "template": "nope", "text": None}, "validation_error"),
    ]
    for body, code in cases:
        resp = await send_email(client, token, **body)
        assert resp.status == 422, (body, await resp.text())
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == code, (body, await resp.text())
    resp = await client.post(
        "/v1/messages",
        json={"channel": "sms", "to": "+14155550100", "body": "x", "subject": "s"},
        headers=auth(token),
    )
    assert resp.status == 422


async def test_email_templates_with_subject_text_and_html(client, token, wait_status):
    resp = await client.post(
        "/v1/templates",
        json={
            "name": "receipt",
            "subject": "Receipt {{ order }}",
            "text": "Hi {{ name }}, order {{ order }} is paid.",
            "html": "<p>Hi {{ name }}, order <b>{{ order }}</b> is paid.</p>",
        },
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    tpl = await resp.json()
    assert tpl["variables"] == ["name", "order"] and tpl["subject"] == "Receipt {{ order }}"
    resp = await client.post(
        "/v1/messages",
        json={
            "channel": "email",
            "to": "ana@example.com",
            "template": "receipt",
            "variables": {"name": "<Ana & Co>", "order": 42},
            "purpose": "transactional",
        },
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert msg["subject"] == "Receipt 42"
    assert msg["body"] == "Hi <Ana & Co>, order 42 is paid."
    assert msg["html"] == "<p>Hi &lt;Ana &amp; Co&gt;, order <b>42</b> is paid.</p>"
    await wait_status(msg["id"], "delivered")
    # an SMS template is not an email template
    await client.post(
        "/v1/templates", json={"name": "otp", "body": "{{code}}"}, headers=auth(token)
    )
    resp = await client.post(
        "/v1/messages",
        json={
            "channel": "email",
            "to": "ana@example.com",
            "template": "otp",
            "variables": {"code": 1},
        },
        headers=auth(token),
    )
    assert (await resp.json())["code"] == "not_an_email_template"


async def test_emails_are_metered_in_usage(client, token, wait_status):
    ids = []
    for n in range(3):
        resp = await send_email(client, token, to=f"user{n}@example.com")
        ids.append((await resp.json())["id"])
    for message_id in ids:
        await wait_status(message_id, "delivered")
    resp = await client.get(
        "/v1/usage",
        params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        headers=auth(token),
    )
    lines = (await resp.json())["lines"]
    (email,) = [line for line in lines if line["channel"] == "email"]
    assert (email["unit"], email["quantity"], email["records"]) == ("email", 3, 3), lines


async def test_marketing_email_to_the_sandbox_passes_with_link_and_address(
    client, token, wait_status
):
    resp = await send_email(
        client,
        token,
        to="ana@example.com",
        purpose="marketing",
        subject="Our sale",
        text=f"Sale! Unsubscribe: {{{{ unsubscribe_url }}}}\n{POSTAL}",
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert "https://tl.example.com/unsubscribe/" in msg["body"]
    await wait_status(msg["id"], "delivered")
