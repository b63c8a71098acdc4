"""Signed unsubscribe links: one per message, usable without an API key.

The token is the message id and an HMAC of it (`<id>.<mac>`, base64url, 45 characters), so
the link names the tenant and the address through the message row and cannot be made for
another message. The key is `email.unsubscribe_secret`, or one generated once and kept in
PostgreSQL (`email_signing_keys`), so every process signs and verifies alike.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import uuid
from dataclasses import dataclass, field

import asyncpg

from gateway.settings import Settings

_KEY_NAME = "unsubscribe"
_MAC_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class UnsubscribeLinks:
    db: asyncpg.Pool
    settings: Settings
    _secret: bytes | None = field(default=None, init=False, repr=False)

    async def _key(self) -> bytes:
        if self._secret is None:
            configured = self.settings.email.unsubscribe_secret
            if configured is not None:
                self._secret = configured.get_secret_value().encode()
            else:
                self._secret = await self._stored_key()
        return self._secret

    async def _stored_key(self) -> bytes:
        """The generated key: the first process to need it writes it, every other reads it."""
        await self.db.execute(
            "INSERT INTO email_signing_keys (name, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            _KEY_NAME,
            secrets.token_bytes(32),
        )
        return bytes(
            await self.db.fetchval(
                "SELECT secret FROM email_signing_keys WHERE name = $1", _KEY_NAME
            )
        )

    def base_url(self) -> str:
        http = self.settings.http
        return (http.public_base_url or f"http://{http.host}:{http.port}").rstrip("/")

    async def token(self, message_id: uuid.UUID) -> str:
        mac = hmac.digest(await self._key(), b"unsubscribe:" + message_id.bytes, "sha256")
        return f"{_b64(message_id.bytes)}.{_b64(mac[:_MAC_BYTES])}"

    async def url(self, message_id: uuid.UUID) -> str:
        return f"{self.base_url()}/unsubscribe/{await self.token(message_id)}"

    async def verify(self, token: str) -> uuid.UUID | None:
        """The message a genuine token names; None for anything else."""
        head, dot, tail = token.partition(".")
        if not dot or len(head) != 22 or len(tail) != 22:
            return None
        try:
            message_id = uuid.UUID(bytes=_unb64(head))
            given = _unb64(tail)
        except ValueError:
            return None
        mac = hmac.digest(await self._key(), b"unsubscribe:" + message_id.bytes, "sha256")
        return message_id if hmac.compare_digest(mac[:_MAC_BYTES], given) else None
