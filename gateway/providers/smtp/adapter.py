"""Email over SMTP (aiosmtplib): one conversation per message, to any relay.

What the relay answers decides the outcome:
- 250 after DATA: `sent` (the relay took it; delivery or a bounce is news for later: a DSN
  to the envelope sender, parsed by gateway/providers/smtp/dsn.py, or the relay's webhook);
- a permanent refusal of the recipient that says the address is bad (5.1.x, 5.2.1, or a bare
  550/551/553): a hard bounce — `bounced`, and the address suppressed;
- any other 5xx: `failed`; a 4xx, a dropped connection or a timeout: transient (retried
  with backoff under the same Message-ID); an authentication failure too, since it is our
  configuration, not the message, that is wrong (the breaker then opens for the relay).

Connections are kept between emails (pool.py, `max_connections` at once).
Where the relay offers DSN (RFC 3461) we ask for failure and delay notices, with our message
id as the envelope id, so a later bounce names the message whatever it quotes.
"""

from __future__ import annotations

import asyncio
import re
from email.message import EmailMessage

import aiosmtplib

from gateway.core.actions import OutboundAction
from gateway.core.email import address_of
from gateway.providers.contracts import (
    MessagingProvider,
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)
from gateway.providers.smtp.mime import build, message_id_for
from gateway.providers.smtp.pool import SmtpPool
from gateway.settings import Settings, SmtpSettings

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_BAD_ADDRESS = ("5.1.", "5.2.1")


def enhanced_status(text: str) -> str | None:
    m = _ENHANCED.search(text)
    return m.group() if m else None


def classify(code: int, text: str, *, at_rcpt: bool) -> ProviderError:
    """An SMTP reply that refused the message, as the provider error it is."""
    status = enhanced_status(text)
    detail = f"{code} {text}".strip()
    if 400 <= code < 500:
        return TransientProviderError(detail, code=status or f"smtp_{code}", ambiguous=False)
    bad_address = at_rcpt and (
        (status is not None and status.startswith(_BAD_ADDRESS))
        or (status is None and code in (550, 551, 553))
    )
    return PermanentProviderError(
        detail,
        code=status or f"smtp_{code}",
        ambiguous=False,
        outcome="bounced" if bad_address else "failed",
    )


class SmtpEmail(MessagingProvider):
    channels = frozenset({"email"})

    def __init__(
        self, cfg: SmtpSettings, *, name: str = "smtp", unsubscribe_mailto: str | None = None
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.unsubscribe_mailto = unsubscribe_mailto
        self.pool = SmtpPool(self._client, size=cfg.max_connections)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpEmail:
        return cls(settings.providers.smtp, unsubscribe_mailto=settings.email.unsubscribe_mailto)

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.effective_port(),
            use_tls=cfg.security == "tls",
            start_tls=True if cfg.security == "starttls" else False,
            validate_certs=cfg.validate_certs,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            timeout=cfg.timeout,
        )

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        message_id = message_id_for(action, self.cfg.message_id_domain)
        msg = build(action, message_id=message_id, unsubscribe_mailto=self.unsubscribe_mailto)
        sender = address_of(self.cfg.bounce_address or action.from_ or "")
        recipient = address_of(action.to)
        try:
            async with asyncio.timeout(self.cfg.timeout * 3), self.pool.connection() as client:
                await self._transaction(client, action, msg, sender, recipient)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise classify(first.code, first.message, at_rcpt=True) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise TransientProviderError(
                f"the relay refused our credentials: {exc.code} {exc.message}",
                code="smtp_auth_failed",
                ambiguous=False,
            ) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise PermanentProviderError(
                f"the relay cannot carry this message: {exc}", code="smtp_not_supported"
            ) from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError) as exc:
            raise TransientProviderError(
                f"cannot reach the relay: {exc}", code="smtp_connect", ambiguous=False
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise classify(exc.code, exc.message, at_rcpt=False) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # a timeout or a dropped connection mid-DATA: the relay may have it (ambiguous)
            raise TransientProviderError(
                f"SMTP conversation failed: {type(exc).__name__}: {exc}", code="timeout"
            ) from exc
        return SendResult(message_id, "sent")

    @staticmethod
    async def _transaction(
        client: aiosmtplib.SMTP,
        action: OutboundAction,
        msg: EmailMessage,
        sender: str,
        recipient: str,
    ) -> None:
        """MAIL, RCPT and DATA for one email on a connected client."""
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if client.supports_extension("dsn"):
            mail_options = ["RET=HDRS", f"ENVID={action.subject}"]
            rcpt_options = ["NOTIFY=FAILURE,DELAY"]
        await client.send_message(
            msg,
            sender=sender,
            recipients=[recipient],
            mail_options=mail_options,
            rcpt_options=rcpt_options,
        )

    async def close(self) -> None:
        await self.pool.close()
