"""A local Stripe that speaks the Billing meter event stream, for the real `stripe` SDK.

Two endpoints, as the SDK calls them: `POST /v2/billing/meter_event_session` (secret key in,
a session token out that lives `session_ttl` seconds) and `POST /v2/billing/meter_event_stream`
(the token in, up to 100 events as JSON, `{}` out). Like Stripe, the stream validates events
asynchronously: a request with bad events still gets its 200, and the events land in
`rejected` (Stripe's meter error reports) instead of being counted. Like Stripe, an event
whose identifier was already taken is dropped (Stripe remembers identifiers for at least 24
hours; the fake for its whole life) and counted in `duplicates`.

Scripting: `fail_next(n, status)` answers the next n stream requests with a Stripe v2 error
and takes nothing from them; `stall_request(k)` takes the events of the k-th stream request
(1-based) and then never answers it (the exporter is killed while it waits: Stripe has the
events, the exporter does not know); `expire_sessions()` makes every issued token stale.

    async with FakeStripe(api_key="sk_test_x") as fake:
        ...  # billing.stripe.api_base = meter_events_base = fake.base_url
        fake.totals()  # {(customer, event_name): value billed}
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from aiohttp import web

MAX_EVENTS = 100
_CUSTOMER = re.compile(r"^cus_[A-Za-z0-9_]+$")


@dataclass(slots=True)
class StreamRequest:
    """One meter_event_stream request as it reached the fake."""

    token: str
    idempotency_key: str | None
    identifiers: list[str]
    accepted: int = 0
    duplicates: int = 0
    status: int | None = None  # None: never answered (stalled)


@dataclass
class FakeStripe:
    api_key: str = "sk_test_trunkline"
    session_ttl: float = 900.0
    meters: frozenset[str] | None = None  # event names with a meter (None: any)
    host: str = "127.0.0.1"
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # identifier -> event
    rejected: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    requests: list[StreamRequest] = field(default_factory=list)
    sessions_created: int = 0
    duplicates: int = 0
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    _tokens: dict[str, datetime] = field(default_factory=dict)
    _failures: list[int] = field(default_factory=list)
    _stall_at: int | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/v2/billing/meter_event_session", self._session)
        app.router.add_post("/v2/billing/meter_event_stream", self._stream)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- scripting -------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500) -> None:
        self._failures.extend([status] * n)

    def stall_request(self, k: int) -> None:
        self._stall_at = k

    def release(self) -> None:
        self._release.set()

    def expire_sessions(self) -> None:
        for token in self._tokens:
            self._tokens[token] = datetime.now(UTC) - timedelta(seconds=1)

    # --- what Stripe was told ---------------------------------------------------------------

    def totals(self) -> Counter[tuple[str, str]]:
        """Value per (customer, event name) over the events Stripe took (duplicates dropped)."""
        out: Counter[tuple[str, str]] = Counter()
        for e in self.events.values():
            out[(e["payload"]["stripe_customer_id"], e["event_name"])] += int(e["payload"]["value"])
        return out

    # --- the endpoints ----------------------------------------------------------------------

    async def _session(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key.")
        token = "mes_tok_" + secrets.token_urlsafe(24)
        now = datetime.now(UTC)
        self._tokens[token] = now + timedelta(seconds=self.session_ttl)
        self.sessions_created += 1
        return web.json_response(
            {
                "id": "mes_" + secrets.token_hex(12),
                "object": "v2.billing.meter_event_session",
                "authentication_token": token,
                "created": _rfc3339(now),
                "expires_at": _rfc3339(self._tokens[token]),
                "livemode": False,
            }
        )

    async def _stream(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        expires = self._tokens.get(token)
        if expires is None:
            return _error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key.")
        if expires <= datetime.now(UTC):
            return _error(
                401,
                "temporary_session_expired",
                "billing_meter_event_session_expired",
                "The temporary session token has expired.",
            )
        if request.content_type != "application/json":
            return _error(400, "invalid_request_error", "invalid_body", "JSON body expected.")
        body = await request.json()
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
            return _error(
                400, "invalid_request_error", "invalid_events", "1 to 100 events per request."
            )
        record = StreamRequest(
            token=token,
            idempotency_key=request.headers.get("Idempotency-Key"),
            identifiers=[str(e.get("identifier")) for e in events if isinstance(e, dict)],
        )
        self.requests.append(record)
        if self._failures:
            record.status = self._failures.pop(0)
            return _error(record.status, "api_error", None, "An unknown error occurred.")
        for event in events:
            self._take(event, record)
        if self._stall_at == len(self.requests):
            self.stalled.set()
            await self._release.wait()  # the exporter is killed meanwhile: never answered
        record.status = 200
        return web.json_response({})

    def _take(self, event: Any, record: StreamRequest) -> None:
        problem = self._invalid(event)
        if problem is not None:
            self.rejected.append((event, problem))
            return
        if event["identifier"] in self.events:
            record.duplicates += 1
            self.duplicates += 1
            return
        self.events[event["identifier"]] = event
        record.accepted += 1

    def _invalid(self, event: Any) -> str | None:
        if not isinstance(event, dict):
            return "not an object"
        identifier = event.get("identifier")
        if not isinstance(identifier, str) or not 1 <= len(identifier) <= 100:
            return "identifier: 1-100 characters expected"
        name = event.get("event_name")
        if not isinstance(name, str) or (self.meters is not None and name not in self.meters):
            return f"no meter for event_name {name!r}"
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return "payload missing"
        if not _CUSTOMER.match(str(payload.get("stripe_customer_id", ""))):
            return "payload.stripe_customer_id: no such customer"
        value = payload.get("value")
        if not isinstance(value, str) or not value.isdigit():
            return "payload.value: a whole number as a string expected"
        try:
            at = datetime.fromisoformat(str(event.get("timestamp")).replace("Z", "+00:00"))
        except ValueError:
            return "timestamp: RFC 3339 expected"
        now = datetime.now(UTC)
        if at.tzinfo is None or not now - timedelta(days=35) <= at <= now + timedelta(minutes=5):
            return "timestamp: within the past 35 days or 5 minutes ahead expected"
        return None


def _rfc3339(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, type_: str, code: str | None, message: str) -> web.Response:
    error: dict[str, Any] = {"type": type_, "message": message}
    if code is not None:
        error["code"] = code
    return web.json_response({"error": error}, status=status)
