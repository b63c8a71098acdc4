"""Twilio REST client: the real SDK on its async path, aimed at one configurable base URL.

twilio 9.x has no base-URL setting: every resource hard-codes `https://<product>.twilio.com`.
Every request does, however, leave through one `AsyncHttpClient.request`, so that is where
the base URL is applied (`_RoutedHttpClient`), once, for every product domain. With the
default base URL nothing is rewritten, so against real Twilio the SDK keeps choosing
product hosts, regions and edges itself. The same
spot adds what the SDK cannot: a real timeout (the async client otherwise passes
`timeout=None`, which aiohttp reads as "no timeout at all") and per-call extra headers
(resource methods take no `headers=`, so the idempotency token travels in a ContextVar).

Errors come out as two classes the dispatcher can act on without knowing Twilio:
TwilioTransientError (retry with the same idempotency key) and TwilioPermanentError
(give up, record Twilio's code).
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self
from urllib.parse import SplitResult, urlsplit, urlunsplit

import aiohttp
from twilio.base import values
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from gateway.providers.twilio.signature import (
    CallStatus,
    MessageStatus,
    normalize_call_status,
    normalize_message_status,
)

DEFAULT_API_BASE_URL = "https://api.twilio.com"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
CALL_EVENTS: tuple[str, ...] = ("initiated", "ringing", "answered", "completed")

# Twilio error codes with their own meaning for us.
_TOO_MANY_REQUESTS = 20429
_CALL_NOT_IN_PROGRESS = 21220  # update on a call that already ended

# The SDK logs every request at INFO; its own logger name lets operators quiet it alone.
_sdk_log = logging.getLogger(__name__ + ".sdk")
_extra_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "twilio_extra_headers", default=None
)


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    """What the client needs; built from settings by the caller (no ambient TWILIO_* env)."""

    account_sid: str
    auth_token: str = field(repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    timeout: float = 10.0  # seconds per HTTP request: connect + send + whole response
    region: str | None = None  # Twilio region/edge; only meaningful against real Twilio
    edge: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.api_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(
                f"api_base_url must be http(s)://host[:port][/path]: {self.api_base_url!r}"
            )
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0: {self.timeout!r}")


class TwilioError(Exception):
    """A failed Twilio API call; `code` is Twilio's error code when it sent one."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    @property
    def more_info(self) -> str | None:
        return f"https://www.twilio.com/docs/errors/{self.code}" if self.code else None


class TwilioTransientError(TwilioError):
    """Safe to retry (5xx, 429, timeout, connection error) — with the same idempotency key.

    `ambiguous` is True when Twilio may already have acted (timeout, dropped connection,
    5xx): a retry without an honoured idempotency key could then send twice.
    """

    def __init__(
        self,
        message: str,
        *,
        ambiguous: bool,
        status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.ambiguous = ambiguous


class TwilioPermanentError(TwilioError):
    """Twilio refused the request (4xx); retrying the same request cannot succeed."""


@dataclass(frozen=True, slots=True)
class MessageReceipt:
    """Twilio accepted a message: its sid and first status (raw and normalized)."""

    sid: str
    twilio_status: str
    status: MessageStatus | None


@dataclass(frozen=True, slots=True)
class CallReceipt:
    """Twilio accepted a call request: its sid and status (raw and normalized)."""

    sid: str
    twilio_status: str
    status: CallStatus | None


@dataclass(frozen=True, slots=True)
class MessageState:
    """A fetched message: its status (raw and normalized) and Twilio's error code, if any."""

    sid: str
    twilio_status: str
    status: MessageStatus | None
    error_code: str | None


@dataclass(frozen=True, slots=True)
class CallState:
    """A fetched call: its status (raw and normalized) and the AMD verdict, if any."""

    sid: str
    twilio_status: str
    status: CallStatus | None
    answered_by: str | None


def rebase_url(url: str, base: SplitResult) -> str:
    """Swap scheme and host of `url` for `base`'s, prefixing `base`'s path."""
    parts = urlsplit(url)
    path = base.path.rstrip("/") + parts.path
    return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))


class _RoutedHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client, plus base-URL routing, a default timeout and extra headers.

    Must be built inside a running loop (it creates its ClientSession in __init__).
    """

    def __init__(self, api_base_url: str, timeout: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout, logger=_sdk_log)
        base = urlsplit(api_base_url)
        # The real default is left alone so the SDK still picks product hosts, regions, edges.
        self._base = None if api_base_url.rstrip("/") == DEFAULT_API_BASE_URL else base

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        if self._base is not None:
            url = rebase_url(url, self._base)
        headers = {**(headers or {}), **(_extra_headers.get() or {})}
        if auth is not None:  # as a header: aiohttp 3.14 deprecates auth=/BasicAuth, 4.0 drops them
            creds = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {creds}"
        return await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout if timeout is not None else self.timeout,
            allow_redirects=allow_redirects,
        )


@contextlib.contextmanager
def _headers(extra: Mapping[str, str]) -> Iterator[None]:
    """Attach headers to the SDK requests made inside this block (this task only)."""
    token = _extra_headers.set(extra or None)
    try:
        yield
    finally:
        _extra_headers.reset(token)


@contextlib.contextmanager
def _twilio_errors(operation: str) -> Iterator[None]:
    """Translate SDK and transport errors into transient/permanent."""
    try:
        yield
    except (TwilioRestException, TwilioServiceException) as exc:
        status = int(exc.status)
        code = int(exc.code) if exc.code is not None else None
        text = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
        message = f"{operation}: HTTP {status}: {text}"
        if status == 429 or code == _TOO_MANY_REQUESTS:
            raise TwilioTransientError(message, ambiguous=False, status=status, code=code) from exc
        if status >= 500:
            raise TwilioTransientError(message, ambiguous=True, status=status, code=code) from exc
        raise TwilioPermanentError(message, status=status, code=code) from exc
    except TimeoutError as exc:  # includes aiohttp.ServerTimeoutError
        raise TwilioTransientError(f"{operation}: timed out", ambiguous=True) from exc
    except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
        raise TwilioTransientError(f"{operation}: {exc}", ambiguous=False) from exc
    except aiohttp.ClientError as exc:  # connected, then lost: Twilio may have acted
        raise TwilioTransientError(f"{operation}: {exc!r}", ambiguous=True) from exc


class TwilioRestClient:
    """The calls the Twilio adapter makes, with an explicit async lifecycle.

    `async with TwilioRestClient(config) as twilio: ...` or `await start()` / `await close()`.
    """

    def __init__(self, config: TwilioConfig) -> None:
        self.config = config
        self._http: _RoutedHttpClient | None = None
        self._sdk: Client | None = None

    async def start(self) -> None:
        if self._http is not None:
            raise RuntimeError("TwilioRestClient already started")
        self._http = _RoutedHttpClient(self.config.api_base_url, self.config.timeout)
        self._sdk = Client(
            username=self.config.account_sid,
            password=self.config.auth_token,
            account_sid=self.config.account_sid,
            http_client=self._http,
            region=self.config.region,
            edge=self.config.edge,
            # Non-empty so the SDK doesn't fall back to os.environ for region/edge.
            environment={"TWILIO_REGION": "", "TWILIO_EDGE": ""},
        )

    async def close(self) -> None:
        http, self._http, self._sdk = self._http, None, None
        if http is not None:
            await http.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def sdk(self) -> Client:
        """The underlying SDK client, for calls not wrapped here (still routed and timed)."""
        if self._sdk is None:
            raise RuntimeError("TwilioRestClient is not started")
        return self._sdk

    async def send_message(
        self,
        to: str,
        from_: str | None,
        body: str,
        status_callback: str | None,
        *,
        messaging_service_sid: str | None = None,
        idempotency_key: str | None = None,
    ) -> MessageReceipt:
        """Create an SMS/WhatsApp message. `from_` may be None when a Messaging Service picks it."""
        if from_ is None and messaging_service_sid is None:
            raise ValueError("send_message needs from_ or messaging_service_sid")
        extra = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else {}
        with _twilio_errors("create message"), _headers(extra):
            msg = await self.sdk.messages.create_async(
                to=to,
                from_=_unset_if_none(from_),
                body=body,
                status_callback=_unset_if_none(status_callback),
                messaging_service_sid=_unset_if_none(messaging_service_sid),
            )
        status = str(msg.status)
        return MessageReceipt(str(msg.sid), status, normalize_message_status(status))

    async def create_call(
        self,
        to: str,
        from_: str,
        *,
        twiml: str | None = None,
        url: str | None = None,
        status_callback: str | None = None,
        status_callback_events: Sequence[str] = CALL_EVENTS,
        ring_timeout: int = 30,
        machine_detection: Literal["Enable", "DetectMessageEnd"] | None = None,
        time_limit: int | None = None,
        idempotency_key: str | None = None,
    ) -> CallReceipt:
        """Originate an outbound call running `twiml` or fetching TwiML from `url` (one of)."""
        if (twiml is None) == (url is None):
            raise ValueError("create_call needs exactly one of twiml or url")
        extra = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else {}
        with _twilio_errors("create call"), _headers(extra):
            call = await self.sdk.calls.create_async(
                to=to,
                from_=from_,
                twiml=_unset_if_none(twiml),
                url=_unset_if_none(url),
                status_callback=_unset_if_none(status_callback),
                status_callback_event=list(status_callback_events)
                if status_callback
                else values.unset,
                timeout=ring_timeout,
                machine_detection=_unset_if_none(machine_detection),
                time_limit=_unset_if_none(time_limit),
            )
        status = str(call.status)
        return CallReceipt(str(call.sid), status, normalize_call_status(status))

    async def hangup_call(self, sid: str) -> CallReceipt | None:
        """End a call in any state (Status=completed). None: it had already ended.

        Idempotent on purpose: a retried hangup after a timeout must not become an error.
        """
        with _twilio_errors("hang up call"):
            try:
                call = await self.sdk.calls(sid).update_async(status="completed")
            except TwilioRestException as exc:
                if exc.code == _CALL_NOT_IN_PROGRESS:
                    return None
                raise
        status = str(call.status)
        return CallReceipt(str(call.sid), status, normalize_call_status(status))

    async def fetch_message(self, sid: str) -> MessageState:
        """What Twilio knows about a message now (GET …/Messages/{sid}.json)."""
        with _twilio_errors("fetch message"):
            msg = await self.sdk.messages(sid).fetch_async()
        status = str(msg.status)
        code = str(msg.error_code) if msg.error_code not in (None, "", 0) else None
        return MessageState(str(msg.sid), status, normalize_message_status(status), code)

    async def fetch_call(self, sid: str) -> CallState:
        """What Twilio knows about a call now (GET …/Calls/{sid}.json)."""
        with _twilio_errors("fetch call"):
            call = await self.sdk.calls(sid).fetch_async()
        status = str(call.status)
        answered_by = str(call.answered_by) if call.answered_by else None
        return CallState(str(call.sid), status, normalize_call_status(status), answered_by)


def _unset_if_none(value: object) -> object:
    """The SDK leaves `values.unset` fields out of the form; say so rather than rely on None."""
    return values.unset if value is None else value
