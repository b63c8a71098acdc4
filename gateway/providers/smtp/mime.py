"""One email as MIME: headers, multipart/alternative, RFC 8058 one-click unsubscribe.

The Message-ID is the message's own (`<message uuid@domain>`), the same on every attempt: a
retry after an ambiguous timeout carries the id a receiver deduplicates by, and a bounce
(DSN) or complaint (ARF) that quotes it finds the message again (gateway/providers/smtp/dsn.py).
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import formatdate

from gateway.core.actions import OutboundAction
from gateway.core.email import address_of, domain_of


def message_id_for(action: OutboundAction, domain: str | None = None) -> str:
    """Our Message-ID for this email, without angle brackets."""
    return f"{action.subject}@{domain or domain_of(action.from_ or '')}"


def build(
    action: OutboundAction,
    *,
    message_id: str,
    unsubscribe_mailto: str | None = None,
) -> EmailMessage:
    """The MIME message: text and HTML as multipart/alternative (text first, as RFC 2046 wants
    the plainest first), or the one part there is; UTF-8, 8bit-safe transfer encodings."""
    email = action.email
    assert email is not None and action.from_ is not None
    # SMTPUTF8 only for an address that needs it; a display name or subject in any script is
    # an RFC 2047 encoded word, which every relay carries.
    ascii_only = (address_of(action.to) + address_of(action.from_)).isascii()
    msg = EmailMessage(policy=SMTP if ascii_only else SMTPUTF8)
    msg["From"] = action.from_
    msg["To"] = action.to
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{message_id}>"
    msg["X-Trunkline-Message-Id"] = action.subject
    msg["X-Trunkline-Trace-Id"] = action.trace_id
    if action.purpose == "marketing" and email.unsubscribe_url:
        targets = [f"<{email.unsubscribe_url}>"]
        if unsubscribe_mailto:
            targets.append(f"<mailto:{address_of(unsubscribe_mailto)}?subject=unsubscribe>")
        msg["List-Unsubscribe"] = ", ".join(targets)
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if email.text and email.html:
        msg.set_content(email.text, charset="utf-8")
        msg.add_alternative(email.html, subtype="html", charset="utf-8")
    elif email.html:
        msg.set_content(email.html, subtype="html", charset="utf-8")
    else:
        msg.set_content(email.text or "", charset="utf-8")
    return msg
