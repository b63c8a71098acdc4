"""A real SMTP server for the tests (aiosmtpd, in its own thread): it records every message,
refuses the recipients it is told to, and speaks STARTTLS, implicit TLS, AUTH and DSN.

Recipients whose local part starts with `nobody` are refused 550 5.1.1 (a bad mailbox),
`policy` 554 5.7.1 (a policy refusal), and `greylist` 451 4.7.1 on the first try.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.helpers import free_port

_DSN_PARAMS = {"RET", "ENVID", "NOTIFY", "ORCPT"}


@dataclass
class Received:
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    rcpt_options: list[str]
    data: bytes
    tls: bool
    auth: str | None

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Recorder:
    received: list[Received] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)
    dsn: bool = True
    sessions: int = 0  # EHLOs: one per connection (two with STARTTLS)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        if self.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.partition("@")[0].lower()
        with self.lock:
            self.tries[address] = self.tries.get(address, 0) + 1
            tries = self.tries[address]
        if local.startswith("nobody"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("policy"):
            return "554 5.7.1 Message refused by policy"
        if local.startswith("greylist") and tries == 1:
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.mail_options),
                    list(envelope.rcpt_tos),
                    list(envelope.rcpt_options),
                    envelope.original_content or envelope.content,
                    server.transport.get_extra_info("ssl_object") is not None,
                    session.auth_data if isinstance(session.auth_data, str) else None,
                )
            )
        return "250 2.0.0 Message accepted for delivery"


class _DsnSMTP(SMTP):
    """aiosmtpd refuses MAIL/RCPT parameters it does not know; a DSN-capable relay takes them."""

    def _getparams(self, params: Any) -> dict[str, Any] | None:
        found = super()._getparams(params)
        if found is None:
            return None
        return {k: v for k, v in found.items() if k not in _DSN_PARAMS}


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _DsnSMTP(self.handler, **self.SMTP_kwargs)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost, made with the openssl command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class SmtpServer:
    """Start with `start()`, stop with `stop()`; `received` is what it was sent."""

    def __init__(
        self,
        *,
        cert: tuple[Path, Path] | None = None,
        mode: str = "none",  # none | starttls | tls
        users: dict[str, str] | None = None,
        dsn: bool = True,
        port: int | None = None,
    ) -> None:
        self.recorder = Recorder(dsn=dsn)
        self.port = port or free_port()
        self.running = False
        self.users = users or {}
        kwargs: dict[str, Any] = {}
        if cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            if mode == "starttls":
                kwargs |= {"tls_context": ctx, "require_starttls": True}
            elif mode == "tls":
                kwargs["ssl_context"] = ctx
        if self.users:
            kwargs |= {"authenticator": self._authenticate, "auth_required": True}
            if mode in ("none", "tls"):  # aiosmtpd sees only STARTTLS as TLS for AUTH
                kwargs["auth_require_tls"] = False
        self.controller = _Controller(self.recorder, hostname="127.0.0.1", port=self.port, **kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
        return AuthResult(success=ok, handled=False, auth_data=login)

    @property
    def received(self) -> list[Received]:
        with self.recorder.lock:
            return list(self.recorder.received)

    def start(self) -> SmtpServer:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.controller.stop()
