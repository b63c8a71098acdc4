"""Bounces and complaints that arrive as mail: DSNs (RFC 3464) and ARF reports (RFC 5965).

A relay that could not deliver mails a `multipart/report; report-type=delivery-status` to the
envelope sender; a mailbox provider's feedback loop mails `report-type=feedback-report` when a
recipient marks a message as spam. Each names our message by the Message-ID it quotes (the
headers of the original, in `message/rfc822` or `text/rfc822-headers`) or by the envelope id
we asked for (`Original-Envelope-Id`, see adapter.py). The stdlib parses the MIME; this module
only reads the fields.

A DSN's `Action: failed` with a status saying the address is bad (5.1.x, 5.2.1) is a hard
bounce; any other permanent failure (5.7.1 policy, 5.3.4 too big) fails the message without
blaming the address; `delayed` is news, not an outcome; `delivered`/`relayed` is delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes, message_from_string, policy
from email.message import Message
from typing import Literal

Kind = Literal["bounce", "failure", "delay", "delivered", "complaint"]
_BAD_ADDRESS = ("5.1.", "5.2.1")


@dataclass(frozen=True)
class MailReport:
    kind: Kind
    recipient: str | None = None
    status: str | None = None  # the enhanced status code, e.g. 5.1.1
    diagnostic: str | None = None
    message_id: str | None = None  # the original's Message-ID, without angle brackets
    envelope_id: str | None = None


def _fields(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = part.get_payload(decode=True)
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(payload)
    return [
        message_from_string(block.strip() + "\n") for block in raw.split("\n\n") if block.strip()
    ]


def _value(block: Message, name: str) -> str | None:
    value = block.get(name)
    return str(value).strip() if value is not None else None


def _typed(value: str | None) -> str | None:
    """`rfc822; ana@example.com` → `ana@example.com` (the address-type prefix dropped)."""
    if value is None:
        return None
    return value.split(";", 1)[-1].strip().strip("<>") or None


def _original_message_id(report: Message) -> str | None:
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            original = inner[0] if isinstance(inner, list) and inner else None
            if isinstance(original, Message) and original.get("Message-ID"):
                return str(original["Message-ID"]).strip().strip("<>")
        elif ctype == "text/rfc822-headers":
            body = part.get_payload(decode=True)
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
            headers = message_from_string(text)
            if headers.get("Message-ID"):
                return str(headers["Message-ID"]).strip().strip("<>")
    return None


def _dsn(report: Message, status_part: Message) -> list[MailReport]:
    blocks = _fields(status_part)
    if not blocks:
        return []
    envelope_id = _value(blocks[0], "Original-Envelope-Id")
    message_id = _original_message_id(report)
    found = []
    for block in blocks[1:] or blocks:
        action = (_value(block, "Action") or "").lower()
        status = _value(block, "Status")
        if action == "failed":
            kind: Kind = (
                "bounce" if status is None or status.startswith(_BAD_ADDRESS) else "failure"
            )
        elif action == "delayed":
            kind = "delay"
        elif action in ("delivered", "relayed", "expanded"):
            kind = "delivered"
        else:
            continue
        found.append(
            MailReport(
                kind,
                recipient=_typed(
                    _value(block, "Final-Recipient") or _value(block, "Original-Recipient")
                ),
                status=status,
                diagnostic=_typed(_value(block, "Diagnostic-Code")),
                message_id=message_id,
                envelope_id=envelope_id,
            )
        )
    return found


def _arf(report: Message, feedback: Message) -> list[MailReport]:
    blocks = _fields(feedback)
    fields = blocks[0] if blocks else Message()
    kind = (_value(fields, "Feedback-Type") or "abuse").lower()
    if kind not in ("abuse", "fraud", "virus", "other"):
        return []  # e.g. not-spam, auth-failure: not a complaint about the recipient's mail
    return [
        MailReport(
            "complaint",
            recipient=_typed(_value(fields, "Original-Rcpt-To")),
            diagnostic=f"feedback-type {kind}",
            message_id=_original_message_id(report),
        )
    ]


def parse_report(raw: bytes) -> list[MailReport]:
    """Every recipient's report in a DSN or ARF message; [] for any other mail."""
    mail = message_from_bytes(raw, policy=policy.compat32)
    if mail.get_content_type() != "multipart/report":
        return []
    report_type = (mail.get_param("report-type") or "").lower()
    for part in mail.walk():
        ctype = part.get_content_type()
        if report_type == "delivery-status" and ctype == "message/delivery-status":
            return _dsn(mail, part)
        if report_type == "feedback-report" and ctype == "message/feedback-report":
            return _arf(mail, part)
    return []
