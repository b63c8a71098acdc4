"""An email's parts from a send request: its own subject/text/html or a template's, rendered.

`{{ unsubscribe_url }}` is ours to fill in any part (this message's signed one-click link);
a template's other placeholders come from the request's `variables` — HTML-escaped in the
HTML part, so a value can never add markup.
"""

from __future__ import annotations

import html as htmllib
import re
import uuid

import asyncpg

from gateway.core.actions import EmailContent
from gateway.core.errors import ValidationFailed
from gateway.emails.unsubscribe import UnsubscribeLinks
from gateway.messages import repo
from gateway.messages.schemas import SendMessage
from gateway.messages.templates import render

UNSUBSCRIBE_VAR = "unsubscribe_url"
_OURS = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}")


async def compose(
    db: asyncpg.Pool | asyncpg.Connection,
    links: UnsubscribeLinks,
    tenant_id: uuid.UUID,
    req: SendMessage,
    message_id: uuid.UUID,
) -> EmailContent:
    url = await links.url(message_id)
    if req.template is None:
        assert req.subject is not None
        subject, text, html = (
            _OURS.sub(url, req.subject),
            _OURS.sub(url, req.text) if req.text else None,
            _OURS.sub(htmllib.escape(url), req.html) if req.html else None,
        )
    else:
        tpl = await repo.get_template(db, tenant_id, req.template)
        if tpl is None:
            raise ValidationFailed(f"no template named {req.template!r}", code="unknown_template")
        if not tpl["subject"]:
            raise ValidationFailed(
                f"template {req.template!r} has no subject: it is not an email template",
                code="not_an_email_template",
            )
        values = {**req.variables, UNSUBSCRIBE_VAR: url}
        escaped = {k: htmllib.escape(str(v)) for k, v in values.items()}
        subject = render(req.template, tpl["subject"], values)
        text = render(req.template, tpl["body"], values) if tpl["body"] else None
        html = render(req.template, tpl["html"], escaped) if tpl["html"] else None
    if "\r" in subject or "\n" in subject:
        raise ValidationFailed("the subject must be one line", code="invalid_subject")
    if not subject.strip() or not ((text and text.strip()) or (html and html.strip())):
        raise ValidationFailed("the email has no subject or no content", code="empty_body")
    return EmailContent(subject=subject, text=text, html=html, unsubscribe_url=url)
