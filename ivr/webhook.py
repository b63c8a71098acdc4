"""The webhook node's request: a signed POST of the session to the tenant's URL.

Signed like customer webhooks (gateway/webhooks/signing.py: `Trunkline-Signature`, with the
flow's own signing secret) and held to the same SSRF guard (gateway/webhooks/ssrf.py: the
resolver refuses non-public addresses on the very connection, literal hosts are checked
first, redirects are never followed). Every failure — timeout, refused target, non-2xx, an
answer that is not a JSON object — is an answer with ok=False, which the engine sends to the
node's `on_error`; nothing here raises into the call.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from gateway.webhooks import signing, ssrf
from ivr.engine import Webhook, WebhookAnswer

USER_AGENT = "Trunkline-IVR/1"
MAX_ANSWER_BYTES = 64 * 1024


class WebhookCaller:
    """One aiohttp session per process (its connector pools connections to tenants' hosts)."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=ssrf.resolver_for(self.allow_private), limit=64, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def call(self, cmd: Webhook, secret: str) -> WebhookAnswer:
        body = json.dumps(cmd.payload, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", signing.HEADER: signing.sign(secret, body)}
        try:
            ssrf.check_literal_host(cmd.url, allow_private=self.allow_private)
            async with asyncio.timeout(cmd.timeout):
                async with self._client().post(
                    cmd.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=cmd.timeout),
                ) as resp:
                    raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                    if not 200 <= resp.status < 300:
                        return WebhookAnswer(False, error=f"http_{resp.status}")
        except TimeoutError:
            return WebhookAnswer(False, error="timeout")
        except ssrf.TargetRefused as exc:
            return WebhookAnswer(False, error=f"refused: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            refused = _refused(exc)
            if refused is not None:
                return WebhookAnswer(False, error=f"refused: {refused}")
            return WebhookAnswer(False, error=f"unreachable: {type(exc).__name__}")
        return _parse(raw)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _parse(raw: bytes) -> WebhookAnswer:
    if len(raw) > MAX_ANSWER_BYTES:
        return WebhookAnswer(False, error="bad_answer: too large")
    if not raw.strip():
        return WebhookAnswer(True, {})
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return WebhookAnswer(False, error="bad_answer: not JSON")
    if not isinstance(data, dict):
        return WebhookAnswer(False, error="bad_answer: not a JSON object")
    return WebhookAnswer(True, data)


def _refused(exc: BaseException) -> ssrf.TargetRefused | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssrf.TargetRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
