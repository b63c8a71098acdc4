"""Sends meter events to Stripe with the real `stripe` SDK: the v2 meter event stream.

The stream takes 100 events per request and validates them asynchronously, at 10,000
requests/s (the v1 endpoint: one event per request, 1,000/s). It authenticates with a meter
event session's token, not the secret key; a token lives 15 minutes, so one is kept and
replaced shortly before it expires, or when Stripe says it has.

Any failure raises `SendFailed`: the exporter keeps the batch and sends it again later with
the same identifiers, which Stripe deduplicates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import stripe

from gateway.billing.plan import MeterEvent, chunks
from gateway.settings import StripeBillingSettings

# A token this close to its expiry is replaced before use (a request may take that long).
TOKEN_MARGIN = timedelta(seconds=60)


class SendFailed(Exception):
    """Stripe did not acknowledge every event (down, rate limited, refused, or unreachable)."""


class MeterEventSender:
    def __init__(self, cfg: StripeBillingSettings) -> None:
        if cfg.api_key is None:
            raise ValueError("billing.stripe.api_key is required")
        # The SDK's telemetry reads (and first writes) ~/.config/stripe/telemetry_id inside a
        # request: file I/O on the event loop, in a daemon's home. Off, process-wide.
        stripe.enable_telemetry = False
        self.timeout = cfg.timeout
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=cfg.timeout))
        self.client = stripe.StripeClient(
            cfg.api_key.get_secret_value(),
            base_addresses={"api": cfg.api_base, "meter_events": cfg.meter_events_base},
            http_client=self._http,
            max_network_retries=0,  # the exporter retries, with backoff and a record of it
        )
        self._token: str | None = None
        self._expires_at = datetime.min.replace(tzinfo=UTC)
        self.requests = 0  # stream requests acknowledged (for logs and tests)

    async def send(self, events: Sequence[MeterEvent]) -> None:
        """Every event, 100 per request, in order; raises SendFailed at the first failure."""
        for chunk in chunks(list(events)):
            await self._send_chunk([e.params() for e in chunk])

    async def _send_chunk(self, params: list[dict]) -> None:
        for fresh_token in (False, True):
            token = await self._session_token(renew=fresh_token)
            try:
                await asyncio.wait_for(
                    self.client.v2.billing.meter_event_stream.create_async(
                        {"events": params},  # type: ignore[typeddict-item]
                        {"api_key": token},
                    ),
                    timeout=self.timeout + 5,
                )
            except stripe.TemporarySessionExpiredError:
                if fresh_token:
                    raise SendFailed("Stripe refused a fresh meter event session") from None
                continue  # expired early (clock skew): once more with a new token
            except (stripe.StripeError, TimeoutError) as exc:
                raise SendFailed(_describe(exc)) from exc
            self.requests += 1
            return

    async def _session_token(self, *, renew: bool) -> str:
        now = datetime.now(UTC)
        if renew or self._token is None or self._expires_at - now < TOKEN_MARGIN:
            try:
                session = await asyncio.wait_for(
                    self.client.v2.billing.meter_event_session.create_async(),
                    timeout=self.timeout + 5,
                )
            except (stripe.StripeError, TimeoutError) as exc:
                raise SendFailed("meter event session: " + _describe(exc)) from exc
            self._token = session.authentication_token
            self._expires_at = _instant(session.expires_at)
        assert self._token is not None
        return self._token

    async def close(self) -> None:
        await self._http.close_async()


def _instant(value: object) -> datetime:
    """A v2 timestamp (RFC 3339); anything unreadable counts as already expired."""
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, stripe.StripeError):
        status = f"HTTP {exc.http_status}" if exc.http_status else "no response"
        return f"{type(exc).__name__} ({status}, code {exc.code}): {exc.user_message or exc}"
    return repr(exc)
