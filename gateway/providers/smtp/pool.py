"""SMTP connections kept open between emails: a TCP connect, TLS handshake, EHLO and AUTH for
every message would cost more than the message. At most `size` conversations at once; a send
waits for a free connection (bounded by the caller's timeout).

A connection goes back to the pool only after a send that succeeded: after any error its
state is unknown (a refused RCPT mid-transaction, a dropped link), so it is closed. One that
sat idle longer than `check_after` is asked NOOP first — relays close idle sessions (RFC 5321
allows 5 minutes) — so a dead one is replaced before the message is spent on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiosmtplib


class SmtpPool:
    def __init__(
        self, factory: Callable[[], aiosmtplib.SMTP], *, size: int, check_after: float = 5.0
    ) -> None:
        self.factory = factory
        self.check_after = check_after
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    async def _usable(self) -> aiosmtplib.SMTP:
        while self._idle:
            client, since = self._idle.pop()
            if not client.is_connected:
                continue
            if time.monotonic() - since < self.check_after:
                return client
            try:
                await client.noop()
                return client
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        client = self.factory()
        await client.connect()
        if client.is_ehlo_or_helo_needed:  # connect() greets only when it had to (TLS, AUTH)
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        return client

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected, greeted client for one message; kept for the next if all went well."""
        async with self._slots:
            client = await self._usable()
            try:
                yield client
            except BaseException:
                client.close()
                raise
            if client.is_connected:
                self._idle.append((client, time.monotonic()))

    async def close(self) -> None:
        """QUIT the idle connections (the ones in use are closed by their senders)."""
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                async with asyncio.timeout(2):
                    await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
