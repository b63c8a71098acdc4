"""Pure parts: the CAN-SPAM content check, address normalisation and the DSN / ARF parser."""

import pathlib

import pytest
from pydantic_core import PydanticCustomError

from gateway.core.email import normalize_address, normalize_mailbox, suppression_key
from gateway.providers.smtp.adapter import classify
from gateway.providers.smtp.dsn import parse_report
from guardrails.email_content import check_email_content
from guardrails.policy import GuardrailPolicy
from guardrails.verdicts import Allow, Deny

RULES = GuardrailPolicy.__dataclass_fields__["email"].default_factory()
SAMPLES = pathlib.Path(__file__).parent / "samples"
ADDRESS = "Acme Inc., 123 Main St, Springfield, IL 62701"


def check(text=None, html=None, purpose="marketing", ours=None):
    return check_email_content(
        text=text, html=html, purpose=purpose, unsubscribe_url=ours, rules=RULES
    )


@pytest.mark.parametrize(
    "text, html, ours, code",
    [
        (f"Sale! Unsubscribe: https://t.example/u/1\n{ADDRESS}", None, None, None),
        (f"Sale! https://t.example/u/1\n{ADDRESS}", None, "https://t.example/u/1", None),
        (f"Sale! Opt out at https://acme.example/prefs\n{ADDRESS}", None, None, None),
        (f"Sale! Reply unsubscribe.\n{ADDRESS}", None, None, "unsubscribe_link_required"),
        (f"Sale! https://acme.example/shop\n{ADDRESS}", None, None, "unsubscribe_link_required"),
        ("Sale! Unsubscribe: https://t.example/u/1", None, None, "postal_address_required"),
        (
            None,
            '<a href="mailto:off@acme.example">Unsubscribe</a><p>123 Main St<br>Springfield, IL 62701</p>',
            None,
            None,
        ),
        (None, f'<a href="#">Unsubscribe</a>{ADDRESS}', None, "unsubscribe_link_required"),
        (
            None,
            f'<script>var x="https://t.example/unsubscribe";</script><p>{ADDRESS}</p>',
            None,
            "unsubscribe_link_required",
        ),
        (
            None,
            '<a href="https://t.example/unsubscribe">x</a><!-- 123 Main St, Springfield, IL 62701 -->',
            None,
            "postal_address_required",
        ),
        (None, '<a href="https://t.example/unsubscribe">x</a><p>PO Box 1234, Acme</p>', None, None),
    ],
)
def test_can_spam_content(text, html, ours, code):
    verdict = check(text, html, ours=ours)
    if code is None:
        assert isinstance(verdict, Allow), verdict
    else:
        assert isinstance(verdict, Deny) and verdict.code == code, verdict


def test_transactional_email_is_exempt():
    assert isinstance(check("Your code is 1234", purpose="transactional"), Allow)


@pytest.mark.parametrize(
    "text",
    [
        "Call 555 1234 today",
        "We have 2 offers for you, up to 50%",
        "Buy 3 get 1 free. Code AB 12345",
    ],
)
def test_numbers_are_not_taken_for_a_postal_address(text):
    assert RULES.postal.search(text) is None


def test_addresses_are_normalised_by_the_library():
    assert normalize_address("Ana@Example.COM") == "Ana@example.com"
    assert normalize_address("ana@bücher.example") == "ana@xn--bcher-kva.example"
    assert suppression_key("Ana@Example.COM") == "ana@example.com"
    assert normalize_mailbox("Acme Billing <billing@ACME.example>") == (
        "Acme Billing <billing@acme.example>"
    )
    for bad in ("nope", "a@b", "ana@localhost", "a@b.com\r\nBcc: c@d.com"):
        with pytest.raises(PydanticCustomError) as err:
            normalize_address(bad)
        assert err.value.type == "invalid_email_address"
    for bad in ("Evil\r\nBcc: x@y.com <a@b.com>", "a <b@c.com>, d@e.com"):
        with pytest.raises(PydanticCustomError):
            normalize_mailbox(bad)


@pytest.mark.parametrize(
    "code, text, at_rcpt, outcome, transient",
    [
        (550, "5.1.1 <x@y.example>: User unknown", True, "bounced", False),
        (550, "Mailbox unavailable", True, "bounced", False),
        (552, "5.2.1 mailbox disabled", True, "bounced", False),
        (554, "5.7.1 refused by policy", True, "failed", False),
        (550, "5.1.1 weird at DATA", False, "failed", False),
        (451, "4.7.1 greylisted", True, "failed", True),
    ],
)
def test_smtp_replies_classified(code, text, at_rcpt, outcome, transient):
    err = classify(code, text, at_rcpt=at_rcpt)
    assert (err.outcome, err.transient) == (outcome, transient)


def _sample(name: str, **values: str) -> bytes:
    text = (SAMPLES / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text.encode()


def test_dsn_and_arf_are_read():
    ids = {"message_id": "0b7c3c5e-0000-4000-8000-000000000001", "recipient": "ana@example.com"}
    (bounce,) = parse_report(_sample("dsn_hard_bounce.eml", **ids))
    assert (bounce.kind, bounce.status, bounce.recipient) == ("bounce", "5.1.1", "ana@example.com")
    assert bounce.message_id == f"{ids['message_id']}@acme.example"
    assert bounce.envelope_id == ids["message_id"]
    assert bounce.diagnostic.startswith("550 5.1.1")
    (delay,) = parse_report(_sample("dsn_delayed.eml", **ids))
    assert (delay.kind, delay.status) == ("delay", "4.4.1")
    (complaint,) = parse_report(_sample("arf_complaint.eml", **ids))
    assert (complaint.kind, complaint.recipient) == ("complaint", "ana@example.com")
    # a policy refusal fails the message without blaming the address
    policy = _sample("dsn_hard_bounce.eml", **ids).replace(b"Status: 5.1.1", b"Status: 5.7.1")
    assert parse_report(policy)[0].kind == "failure"
    assert parse_report(b"Subject: hi\r\n\r\nnot a report") == []
    assert parse_report(b"\xff\xfe garbage") == []
