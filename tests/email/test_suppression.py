"""A bounce or complaint suppresses later email to the address; an unsubscribe click records
the opt-out; marketing email without an unsubscribe link or postal address is refused;
rate limits apply to email and calling hours do not."""

import re

import pytest

from tests.email.conftest import POSTAL, send_email
from tests.helpers import auth

MARKETING_TEXT = f"Winter sale! Unsubscribe: {{{{ unsubscribe_url }}}}\n{POSTAL}"


async def _suppressions(client, token, **params):
    resp = await client.get("/v1/email/suppressions", params=params, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def test_a_bounce_suppresses_later_sends_to_that_address(client, token, wait_status):
    address = "bounced+1@sandbox.trunkline.dev"
    first = await (await send_email(client, token, to=address)).json()
    done = await wait_status(first["id"], "bounced")
    suppressed = next(e for e in done["timeline"] if e["type"] == "email.suppressed")
    assert suppressed["data"] == {
        "address": address,
        "reason": "bounce",
        "source": "receipt:sandbox",
    }
    (entry,) = await _suppressions(client, token)
    assert entry["address"] == address and entry["reason"] == "bounce"
    assert entry["message_id"] == first["id"]
    # the same address, written differently, is refused at accept: transactional or not
    for purpose in ("transactional", "marketing"):
        resp = await send_email(
            client,
            token,
            to="Bounced+1@SANDBOX.trunkline.dev",
            purpose=purpose,
            text=MARKETING_TEXT,
        )
        assert resp.status == 422, await resp.text()
        problem = await resp.json()
        assert problem["code"] == "email_suppressed"
        assert problem["rule"] == "email_suppression.bounce"
        assert "bounced" in problem["detail"]
        refused = await wait_status(problem["message_id"], "rejected")
        assert refused["error_code"] == "email_suppressed"
    # another address is not affected
    other = await (await send_email(client, token, to="bounced+2@example.com")).json()
    await wait_status(other["id"], "delivered")


async def test_a_complaint_suppresses_later_sends_too(client, token, wait_status):
    address = "complained+1@sandbox.trunkline.dev"
    first = await (await send_email(client, token, to=address)).json()
    done = await wait_status(first["id"], "complained")
    types = [e["type"] for e in done["timeline"]]
    assert types.index("message.delivered") < types.index("message.complained")
    assert "email.suppressed" in types
    resp = await send_email(client, token, to=address)
    problem = await resp.json()
    assert (resp.status, problem["code"], problem["rule"]) == (
        422,
        "email_suppressed",
        "email_suppression.complaint",
    )


async def test_your_own_suppressions_and_taking_one_off(client, token, wait_status):
    address = "late@example.com"
    resp = await client.post(
        "/v1/email/suppressions",
        json={"address": address, "reason": "manual", "detail": "asked by phone"},
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    again = await client.post(
        "/v1/email/suppressions", json={"address": address}, headers=auth(token)
    )
    assert again.status == 200
    resp = await send_email(client, token, to=address)
    assert (await resp.json())["rule"] == "email_suppression.manual"
    resp = await client.delete(f"/v1/email/suppressions/{address}", headers=auth(token))
    assert (await resp.json()) == {"removed": 1}
    resp = await client.delete(f"/v1/email/suppressions/{address}", headers=auth(token))
    assert resp.status == 404 and (await resp.json())["code"] == "not_suppressed"
    msg = await (await send_email(client, token, to=address)).json()
    await wait_status(msg["id"], "delivered")


async def test_an_unsubscribe_click_records_the_opt_out(client, token, wait_status):
    resp = await send_email(
        client,
        token,
        to="ana@example.com",
        purpose="marketing",
        subject="Sale",
        text=MARKETING_TEXT,
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    await wait_status(msg["id"], "delivered")
    link = re.search(r"https://tl\.example\.com(/unsubscribe/[\w.-]+)", msg["body"])
    assert link, msg["body"]
    path = link.group(1)
    # opening the link (a person, or a mail scanner checking it) changes nothing
    page = await client.get(path)
    assert page.status == 200 and page.content_type == "text/html"
    text = await page.text()
    assert 'method="post"' in text and "List-Unsubscribe" in text and "acme" in text
    assert "a•" in text and "ana@" not in text  # the address is not shown in full
    assert await _suppressions(client, token) == []
    # the one-click POST (RFC 8058), with no API key
    resp = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200 and "unsubscribed" in (await resp.text())
    (entry,) = await _suppressions(client, token, reason="unsubscribe")
    assert entry["address"] == "ana@example.com" and entry["message_id"] == msg["id"]
    assert entry["origin"] == "link"
    detail = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
    unsubscribed = [e for e in detail["timeline"] if e["type"] == "email.unsubscribed"]
    assert unsubscribed[0]["data"]["address"] == "ana@example.com"
    # twice is fine, and records nothing more
    assert (await client.post(path, data={"List-Unsubscribe": "One-Click"})).status == 200
    detail = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
    assert [e["type"] for e in detail["timeline"]].count("email.unsubscribed") == 1
    # no more marketing to the address; a receipt still goes
    resp = await send_email(
        client, token, to="ana@example.com", purpose="marketing", text=MARKETING_TEXT
    )
    problem = await resp.json()
    assert (resp.status, problem["code"], problem["rule"]) == (
        422,
        "opted_out",
        "email_suppression.unsubscribe",
    )
    resp = await send_email(client, token, to="ana@example.com", purpose="transactional")
    assert resp.status == 201
    # a link that is not ours, or tampered with, is a problem+json 404
    for bad in (path[:-2] + ("AA" if not path.endswith("AA") else "BB"), "/unsubscribe/nope"):
        for method in (client.get, client.post):
            resp = await method(bad)
            assert resp.status == 404, bad
            assert (await resp.json())["code"] == "unsubscribe_link_invalid"


async def test_marketing_email_without_unsubscribe_link_or_postal_address_is_refused(client, token):
    cases = [
        ({"text": f"Winter sale!\n{POSTAL}"}, "unsubscribe_link_required", "text"),
        ({"text": "Winter sale! {{ unsubscribe_url }}"}, "postal_address_required", "text"),
        (
            {"text": MARKETING_TEXT, "html": f"<p>Winter sale!</p><p>{POSTAL}</p>"},
            "unsubscribe_link_required",
            "html",
        ),
        (
            {
                "text": None,
                "html": '<p>Sale</p><a href="javascript:void(0)">Unsubscribe</a>' + POSTAL,
            },
            "unsubscribe_link_required",
            "html",
        ),
    ]
    for parts, code, part in cases:
        resp = await send_email(client, token, to="ana@example.com", purpose="marketing", **parts)
        assert resp.status == 422, (parts, await resp.text())
        problem = await resp.json()
        assert resp.content_type == "application/problem+json"
        assert problem["code"] == code, (parts, problem)
        assert problem["rule"] == f"content.email.{code.removesuffix('_required')}"
        assert f"{part} part" in problem["detail"], problem
    # the sender's own preference centre counts as a way out
    resp = await send_email(
        client,
        token,
        to="ana@example.com",
        purpose="marketing",
        text=None,
        html=f'<p>Sale</p><a href="https://acme.example/prefs">Manage preferences</a><p>{POSTAL}</p>',
    )
    assert resp.status == 201, await resp.text()
    # transactional email needs neither
    resp = await send_email(client, token, to="ana@example.com", text="Your code is 1234")
    assert resp.status == 201


async def test_rate_limits_apply_to_email(client, token):
    """The per-destination bucket (burst 5 by default) counts email like texts."""
    statuses = []
    for _ in range(7):
        resp = await send_email(client, token, to="busy@example.com")
        statuses.append(resp.status)
        if resp.status == 429:
            problem = await resp.json()
            assert problem["code"] == "rate_limited"
            assert problem["rule"] == "rate_limit.destination"
            assert int(resp.headers["Retry-After"]) >= 1
    assert statuses[:5] == [201] * 5 and 429 in statuses[5:], statuses


@pytest.mark.hours
async def test_calling_hours_do_not_apply_to_email(client, token, time_of_day):
    """Marketing email at 03:00 in the recipient's (or anyone's) zone is sent now, not deferred."""
    resp = await send_email(
        client, token, to="ana@example.com", purpose="marketing", text=MARKETING_TEXT
    )
    assert resp.status == 201, (time_of_day, await resp.text())
    msg = await resp.json()
    assert msg["status"] == "queued" and msg["send_at"] is None, time_of_day


async def test_an_address_suppressed_while_queued_is_refused_at_dispatch(
    aiohttp_client, settings, make_key
):
    """The chain runs again at dispatch: an email accepted before its address was suppressed
    is not sent after (an API-only app, and the dispatch run by hand, make the gap)."""
    from gateway.app import create_app
    from tests.guardrails.conftest import dispatch_ready

    client = await aiohttp_client(create_app(settings, role="api"))
    token = await make_key("acme")
    msg = await (await send_email(client, token, to="gone@example.com")).json()
    assert msg["status"] == "queued"
    resp = await client.post(
        "/v1/email/suppressions", json={"address": "Gone@Example.com"}, headers=auth(token)
    )
    assert resp.status == 201
    assert await dispatch_ready(client.app) == 1
    detail = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))).json()
    assert (detail["status"], detail["error_code"]) == ("rejected", "email_suppressed")
    deny = next(e for e in detail["timeline"] if e["type"] == "guardrail.deny")
    assert deny["data"]["stage"] == "dispatch"
    assert deny["data"]["rule"] == "email_suppression.manual"
    assert detail["attempts"] == []
    await client.close()


async def test_concurrent_sends_share_the_suppression_query_and_each_gets_its_answer(client, token):
    """Concurrent evaluations share one facts query (guardrails/checks.py): email addresses,
    suppressed or not, and phone numbers in one batch each get their own answer."""
    import asyncio

    resp = await client.post(
        "/v1/email/suppressions", json={"address": "blocked@example.com"}, headers=auth(token)
    )
    assert resp.status == 201
    sends = [send_email(client, token, to="Blocked@example.com") for _ in range(4)]
    sends += [send_email(client, token, to=f"fine{n}@example.com") for n in range(4)]
    sends += [
        client.post(
            "/v1/messages",
            json={"to": "+14155550100", "body": "Your code is 1", "purpose": "transactional"},
            headers=auth(token),
        )
        for _ in range(2)
    ]
    answers = await asyncio.gather(*sends)
    codes = [(r.status, (await r.json()).get("code")) for r in answers]
    assert codes == [(422, "email_suppressed")] * 4 + [(201, None)] * 6, codes
