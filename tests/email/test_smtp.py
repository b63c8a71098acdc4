"""Email through SMTP to a real local server (aiosmtpd): the MIME message as sent, and what
the server's answers make of the message."""

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest

from tests.email.conftest import POSTAL, email_settings, send_email
from tests.fakes.smtp_server import SmtpServer, self_signed
from tests.helpers import auth, eventually


@pytest.fixture
def settings(database_url, redis_url, smtp_server):
    return email_settings(
        database_url,
        redis_url,
        providers={
            "sandbox": {"receipt_delay": 0.01},
            "email": {"primary": "smtp", "default_from": "Acme Billing <billing@acme.example>"},
            "smtp": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "security": "none",
            },
        },
    )


async def test_a_transactional_email_as_mime_on_the_wire(client, token, smtp_server, wait_status):
    resp = await send_email(
        client,
        token,
        to="ana@example.com",
        **{"from": "Café Acme <billing@acme.example>"},
        subject="Your receipt — №42",
        text="Thanks for your order, Ana.",
        html="<p>Thanks for your order, <b>Ana</b>.</p>",
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    done = await wait_status(msg["id"], "sent")
    assert done["provider"] == "smtp"
    assert done["provider_message_id"] == f"{msg['id']}@acme.example"
    (got,) = smtp_server.received
    assert got.mail_from == "billing@acme.example" and got.rcpt_tos == ["ana@example.com"]
    # the relay offers DSN: failure and delay notices asked for, our id as the envelope id
    assert "RET=HDRS" in got.mail_options and f"ENVID={msg['id'].upper()}" in got.mail_options
    assert got.rcpt_options == ["NOTIFY=FAILURE,DELAY"]
    mime = got.message
    assert mime["From"] == "Café Acme <billing@acme.example>"
    assert mime["To"] == "ana@example.com"
    assert mime["Subject"] == "Your receipt — №42"
    assert mime["Message-ID"] == f"<{msg['id']}@acme.example>"
    assert mime["X-Trunkline-Message-Id"] == msg["id"]
    assert mime["X-Trunkline-Trace-Id"] == msg["trace_id"]
    sent_at = parsedate_to_datetime(str(mime["Date"]))
    assert abs((sent_at - datetime.now(UTC)).total_seconds()) < 60
    assert mime["List-Unsubscribe"] is None  # transactional
    assert mime.get_content_type() == "multipart/alternative"
    parts = list(mime.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Thanks for your order, Ana."
    assert parts[1].get_content().strip() == "<p>Thanks for your order, <b>Ana</b>.</p>"
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert got.data.isascii()  # 7-bit clean on the wire: encoded words, QP/base64 parts


async def test_marketing_email_carries_rfc8058_one_click_unsubscribe(
    client, token, smtp_server, wait_status
):
    resp = await send_email(
        client,
        token,
        to="ana@example.com",
        purpose="marketing",
        subject="Winter sale",
        html=f'<p>Sale!</p><a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a><p>{POSTAL}</p>',
        text=None,
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    await wait_status(msg["id"], "sent")
    mime = smtp_server.received[0].message
    unsubscribe = re.fullmatch(
        r"<(https://tl\.example\.com/unsubscribe/[\w.-]+)>", mime["List-Unsubscribe"]
    )
    assert unsubscribe, mime["List-Unsubscribe"]
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mime.get_content_type() == "text/html"
    assert f'href="{unsubscribe.group(1)}"' in mime.get_content()
    # the mail client's one-click unsubscribe: a POST to the header's URL, no API key
    path = unsubscribe.group(1).removeprefix("https://tl.example.com")
    resp = await client.post(
        path,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200, await resp.text()
    listed = await (await client.get("/v1/email/suppressions", headers=auth(token))).json()
    assert [(e["address"], e["reason"]) for e in listed["data"]] == [
        ("ana@example.com", "unsubscribe")
    ]
    resp = await send_email(
        client,
        token,
        to="ana@example.com",
        purpose="marketing",
        subject="Again",
        text=None,
        html=f'<a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a><p>{POSTAL}</p>',
    )
    assert resp.status == 422 and (await resp.json())["code"] == "opted_out"
    assert len(smtp_server.received) == 1


async def test_server_refusals_bounce_fail_or_retry(client, token, smtp_server, wait_status):
    cases = {
        "nobody@example.com": "bounced",  # 550 5.1.1 at RCPT: a hard bounce
        "policy@example.com": "failed",  # 554 5.7.1: refused, but the address is fine
        "greylist@example.com": "sent",  # 451 4.7.1 once: retried, then taken
    }
    ids = {}
    for address in cases:
        resp = await send_email(client, token, to=address)
        ids[address] = (await resp.json())["id"]
    for address, final in cases.items():
        done = await wait_status(ids[address], final, timeout=15)
        if final == "bounced":
            assert done["error_code"] == "5.1.1"
            assert "email.suppressed" in [e["type"] for e in done["timeline"]]
        if final == "failed":
            assert done["error_code"] == "5.7.1"
            assert "email.suppressed" not in [e["type"] for e in done["timeline"]]
        if final == "sent":
            assert [a["outcome"] for a in done["attempts"]] == ["transient_error", "accepted"]
    # the bounced address is suppressed now: the next send to it is refused at accept
    resp = await send_email(client, token, to="nobody@example.com")
    assert resp.status == 422 and (await resp.json())["code"] == "email_suppressed"
    assert [r.rcpt_tos for r in smtp_server.received] == [["greylist@example.com"]]


async def test_connections_are_kept_between_emails_and_replaced_when_dropped(
    client, token, smtp_server, wait_status
):
    for n in range(3):
        msg = await (await send_email(client, token, to=f"user{n}@example.com")).json()
        await wait_status(msg["id"], "sent")
    assert len(smtp_server.received) == 3
    assert smtp_server.recorder.sessions == 1  # one EHLO: one connection for the three
    # the relay restarts: the kept connection is dead; the next email still goes out
    smtp_server.stop()
    restarted = SmtpServer(port=smtp_server.port).start()
    try:
        msg = await (await send_email(client, token, to="after@example.com")).json()
        done = await wait_status(msg["id"], "sent", timeout=15)
        assert [r.rcpt_tos for r in restarted.received] == [["after@example.com"]]
        assert done["attempts"][-1]["outcome"] == "accepted"
    finally:
        restarted.stop()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_and_auth(aiohttp_client, database_url, redis_url, make_key, tmp_path, mode):
    from gateway.app import create_app

    cert = self_signed(tmp_path)
    # (the SMTPS relay offers no DSN: nothing is asked of it that it did not offer)
    server = SmtpServer(cert=cert, mode=mode, users={"mailer": "s3cret"}, dsn=mode != "tls").start()
    try:
        settings = email_settings(
            database_url,
            redis_url,
            providers={
                "email": {"primary": "smtp", "default_from": "billing@acme.example"},
                "smtp": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": server.port,
                    "security": mode,
                    "username": "mailer",
                    "password": "s3cret",
                    "ca_file": str(cert[0]),
                },
            },
        )
        client = await aiohttp_client(create_app(settings))
        token = await make_key("acme")
        resp = await send_email(client, token, to="ana@example.com")
        assert resp.status == 201, await resp.text()
        received = await eventually(lambda: _received(server))
        assert received[0].tls and received[0].auth == "mailer"
        dsn_options = [o for o in received[0].mail_options if o.startswith(("RET=", "ENVID="))]
        assert bool(dsn_options) == (mode != "tls"), received[0].mail_options
        assert (received[0].rcpt_options == []) == (mode == "tls")
        await client.close()
    finally:
        server.stop()


async def _received(server):
    return server.received


def test_smtp_settings_are_checked_at_start():
    from gateway.settings import ConfigError, load_settings

    for bad, words in [
        ({"enabled": True}, "host is required"),
        ({"enabled": True, "host": "x", "username": "u"}, "both"),
        (
            {"enabled": True, "host": "x", "username": "u", "password": "p", "security": "none"},
            "in clear",
        ),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_settings(providers={"smtp": bad})
    with pytest.raises(ConfigError, match=r"providers\.email"):
        load_settings(providers={"email": {"default_from": "not an address"}})
    assert (
        load_settings(providers={"smtp": {"security": "tls"}}).providers.smtp.effective_port()
        == 465
    )
