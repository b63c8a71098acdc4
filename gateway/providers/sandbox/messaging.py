"""Sandbox SMS/WhatsApp provider with deterministic test numbers.

| number          | what happens                                                     |
|-----------------|------------------------------------------------------------------|
| +1 415 555 0100 | queued → sent → delivered (so does any number not listed here)  |
| +1 415 555 0101 | rejected at send: permanent failure (`invalid_destination`)      |
| +1 415 555 0102 | transient failure on the first two tries, then delivered        |
| +1 415 555 0103 | accepted and sent, but no receipt ever comes                     |
| +1 415 555 0104 | receipts out of order and duplicated: delivered, sent, delivered, queued |
| +1 415 555 0105 | sent, then undelivered (carrier error 30003)                     |
| +1 415 555 0106 | always fails transiently (exercises the retry budget, dead letters) |

State lives in Redis, not in the process (workers are stateless): the
per-attempt idempotency key maps to one provider message id, so a retried
attempt with the same key is never sent twice.

Email goes to the same provider (`sandbox` carries every messaging channel); its addresses
are in gateway/providers/sandbox/email.py.

Receipts behave like those of a provider that retries its callbacks: one that
meets our outage (PostgreSQL unreachable, the gateway answering 503) is sent
again with backoff for up to `RECEIPT_RETRY_FOR` seconds, in order.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.batching import Coalescer
from gateway.core.actions import OutboundAction
from gateway.logs import get_logger
from gateway.outage import unavailable
from gateway.providers.contracts import (
    MessageStatus,
    MessagingProvider,
    PermanentProviderError,
    SendResult,
    StatusReport,
    TransientProviderError,
)
from gateway.providers.sandbox import email as sandbox_email
from gateway.redis import LuaScript

log = get_logger(__name__)
ReceiptSink = Callable[[StatusReport], Awaitable[object]]

DELIVERS = "+14155550100"
FAILS_PERMANENTLY = "+14155550101"
FAILS_TWICE = "+14155550102"
NO_RECEIPT = "+14155550103"
OUT_OF_ORDER = "+14155550104"
UNDELIVERED = "+14155550105"
ALWAYS_TRANSIENT = "+14155550106"

_RECEIPTS: dict[str, list[tuple[MessageStatus, str | None]]] = {
    NO_RECEIPT: [],
    OUT_OF_ORDER: [("delivered", None), ("sent", None), ("delivered", None), ("queued", None)],
    UNDELIVERED: [("sent", None), ("undelivered", "30003")],
}
_DEFAULT_RECEIPTS: list[tuple[MessageStatus, str | None]] = [("sent", None), ("delivered", None)]
# One round trip for the concurrent sends: for each (KEYS[3i-2] its attempt key's id,
# KEYS[3i-1] its count, KEYS[3i] the new id's final status; ARGV[2i-1] the new id, ARGV[2i]
# that status, "" for none) the attempt key's message id if it has one, else the new one
# stored, its final status kept for `fetch_status` and the send counted ("the network" saw
# it). Flat {fresh, id, fresh, id, …}. One command for the batch: a pipeline of one script
# run per send cost the client ~3 % of the worker's CPU in packing and parsing.
_SEND_MANY = LuaScript(
    """
local out = {}
for i = 1, #ARGV / 2 do
  local idem, sent, final = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local new_id, status = ARGV[2 * i - 1], ARGV[2 * i]
  local earlier = redis.call('GET', idem)
  if earlier then
    out[2 * i - 1], out[2 * i] = 0, earlier
  else
    redis.call('SET', idem, new_id, 'EX', 86400)
    redis.call('INCR', sent)
    redis.call('EXPIRE', sent, 86400)
    if status ~= '' then
      redis.call('SET', final, status, 'EX', 86400)
    end
    out[2 * i - 1], out[2 * i] = 1, new_id
  end
end
return out
""",
    name="sandbox_send_many",
)
RECEIPT_RETRY_FOR = 120.0  # seconds a receipt is retried while the gateway is unavailable


def _final(receipts: list[tuple[MessageStatus, str | None]]) -> str:
    """The status the receipts end the message in ("status" or "status error"), "" for none:
    the last one past `queued` (out of order, `queued` can come last)."""
    for status, error in reversed(receipts):
        if status != "queued":
            return status if error is None else f"{status} {error}"
    return ""


class SandboxMessaging(MessagingProvider):
    channels = frozenset({"sms", "whatsapp", "email"})
    # "The network" keeps each message's final status, so a receipt lost with the process
    # that was to deliver it (kill -9 of a worker) is recovered by the receipt reconciler,
    # as a real provider's is by asking it.
    fetches_status = True

    def __init__(
        self,
        redis: aioredis.Redis,
        sink: ReceiptSink,
        *,
        name: str = "sandbox",
        receipt_delay: float = 0.05,
    ) -> None:
        self.name = name
        self.redis = redis
        self.sink = sink
        self.receipt_delay = receipt_delay
        self._tasks: set[asyncio.Task[None]] = set()
        # Concurrent sends share a round trip: one script run for all of them.
        self._sends: Coalescer[tuple[str, str, str], tuple[int, Any]] = Coalescer(
            self._send_many, name=f"sandbox-send:{name}"
        )

    def _key(self, *parts: str) -> str:
        return ":".join(("tl:sandbox", self.name, *parts))

    async def sends_for(self, attempt_key: str) -> int:
        """How many times an attempt key really reached the 'network' (for tests)."""
        return int(await self.redis.get(self._key("sent", attempt_key)) or 0)

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        if action.channel == "email":
            return await self._send_email(action, attempt_key)
        to = action.to
        if to == FAILS_PERMANENTLY:
            raise PermanentProviderError(
                "the destination is not reachable by SMS",
                code="invalid_destination",
                ambiguous=False,
            )
        if to == ALWAYS_TRANSIENT:
            raise TransientProviderError(
                "sandbox upstream unavailable", code="upstream_unavailable", ambiguous=False
            )
        if to == FAILS_TWICE:
            tries = await self.redis.incr(self._key("tries", action.subject))
            await self.redis.expire(self._key("tries", action.subject), 86400)
            if tries <= 2:
                raise TransientProviderError(
                    f"sandbox transient failure {tries}/2",
                    code="upstream_unavailable",
                    ambiguous=False,
                )
        return await self._accept(attempt_key, _RECEIPTS.get(to, _DEFAULT_RECEIPTS))

    async def _send_email(self, action: OutboundAction, attempt_key: str) -> SendResult:
        tries = await self.redis.incr(self._key("tries", action.subject))
        await self.redis.expire(self._key("tries", action.subject), 86400)
        refused = sandbox_email.refusal(action.to, tries)
        if refused is not None:
            raise refused
        return await self._accept(attempt_key, sandbox_email.receipts_for(action.to))

    async def _accept(
        self, attempt_key: str, receipts: list[tuple[MessageStatus, str | None]]
    ) -> SendResult:
        """Taken: one provider id per attempt key, the receipts on their way."""
        new_id = "SB" + secrets.token_hex(16)
        fresh, stored = await self._sends.submit((attempt_key, new_id, _final(receipts)))
        if not fresh:
            # The same attempt key was sent before: the same message, not a new one.
            return SendResult(stored.decode() if isinstance(stored, bytes) else stored, "queued")
        task = asyncio.create_task(self._deliver_receipts(new_id, receipts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return SendResult(new_id, "queued")

    async def _send_many(self, sends: list[tuple[str, str, str]]) -> list[tuple[int, Any]]:
        keys: list[str] = []
        args: list[str] = []
        for attempt_key, new_id, final in sends:
            keys += (
                self._key("idem", attempt_key),
                self._key("sent", attempt_key),
                self._key("final", new_id),
            )
            args += (new_id, final)
        flat = await _SEND_MANY(self.redis, keys, args)
        return [(int(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]

    async def fetch_status(self, provider_message_id: str) -> StatusReport | None:
        """What "the network" says of a message: the final status of its receipts (None for a
        message whose receipts never come, or an id it never gave)."""
        found = await self.redis.get(self._key("final", provider_message_id))
        if found is None:
            return None
        status, _, error = found.decode().partition(" ")
        return StatusReport(
            self.name,
            provider_message_id,
            status,
            error or None,
            {"sandbox": True},  # type: ignore[arg-type]
        )

    async def _deliver_receipts(
        self, provider_id: str, receipts: list[tuple[MessageStatus, str | None]]
    ) -> None:
        for status, error in receipts:
            await asyncio.sleep(self.receipt_delay)
            report = StatusReport(self.name, provider_id, status, error, {"sandbox": True})
            give_up, wait = time.monotonic() + RECEIPT_RETRY_FOR, 0.1
            while True:
                try:
                    await self.sink(report)
                except Exception as exc:
                    if unavailable(exc) is not None and time.monotonic() < give_up:
                        await asyncio.sleep(wait)  # "503": send the callback again later
                        wait = min(wait * 2, 5.0)
                        continue
                    log.exception(
                        "sandbox receipt could not be applied", provider_message_id=provider_id
                    )
                break

    async def close(self) -> None:
        await self._sends.aclose()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
