"""A local Twilio REST API that the real `twilio` SDK talks to, and that calls back like Twilio.

It speaks the wire format the SDK expects (form bodies in, Twilio JSON and Twilio error
JSON out, basic auth), records every request for assertions, and POSTs status callbacks
signed with the SDK's own RequestValidator, so the code under test verifies exactly what
production will. Behaviour is scripted per destination number (`FakeTwilio.script`):
transient failures then success, permanent error codes, slow responses, no callbacks,
reordered or duplicated callbacks, call outcomes.

    async with FakeTwilio() as fake:
        fake.script("+15005550100", fail_times=2)
        ...  # point TwilioConfig(api_base_url=fake.base_url, ...) at it
        await fake.wait_callbacks()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping
from twilio.request_validator import SIGNATURE_HEADER, RequestValidator

API_VERSION = "2010-04-01"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Twilio error code → (HTTP status, message template). Messages are Twilio's own wording.
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21220: (400, "Call is not in-progress. Cannot redirect."),
    21408: (
        400,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}.",
    ),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21612: (
        400,
        "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number: {from_} via SMS.",
    ),
    21614: (400, "'To' number is not a valid mobile number"),
}
_CODE_FOR_STATUS = {429: 20429, 500: 20500, 503: 20503}

# Twilio's test-credential magic 'To' numbers, so the fake fails where Twilio's test account does.
MAGIC_TO_NUMBERS: dict[str, int] = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}

CallOutcome = Literal["completed", "in-progress", "busy", "no-answer", "failed"]
_CALL_PROGRESS: dict[str, list[str]] = {
    "completed": ["initiated", "ringing", "in-progress", "completed"],
    "in-progress": ["initiated", "ringing", "in-progress"],  # stays up until hung up
    "busy": ["initiated", "busy"],
    "no-answer": ["initiated", "ringing", "no-answer"],
    "failed": ["initiated", "failed"],
}
_CALL_EVENT = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}
_CALL_TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_DEFAULT_CALLBACK_ERROR = {"undelivered": 30003, "failed": 30008}


@dataclass
class Script:
    """What the fake does for one destination number; counters are consumed per create."""

    fail_times: int = 0  # the next N creates fail with `fail_status` (nothing is created)
    fail_status: int = 500  # 500, 503 or 429
    error_code: int | None = None  # every create fails permanently with this Twilio code
    # Per accepted create, consumed in order: seconds to hold the reply (client timeouts).
    delays: list[float] = field(default_factory=list)
    callbacks: bool = True  # False: accept, but never call back (callback-only status, lost)
    statuses: list[str] | None = None  # callback sequence as sent: reorder/duplicate freely
    callback_error_code: int | None = None  # ErrorCode on failed/undelivered callbacks
    call_outcome: CallOutcome = "completed"
    # What answering-machine detection concludes when the create asked MachineDetection (with
    # DetectMessageEnd, after the greeting: human, machine_end_beep, machine_end_silence,
    # machine_end_other, fax, unknown); with Enable a machine is machine_start, told at once.
    answered_by: str = "human"
    # Statuses whose callback is lost on the way (we were down, answered 503, Twilio does not
    # retry): the resource still moves to them, so a fetch tells what the callback would have.
    lost_callbacks: frozenset[str] = frozenset()


@dataclass(slots=True)
class RecordedRequest:
    """One request the SDK made, as the fake saw it on the wire."""

    method: str
    path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    form: MultiDictProxy[str]
    auth: tuple[str, str] | None
    response_status: int | None = None  # filled in once the fake has answered

    @property
    def idempotency_token(self) -> str | None:
        return self.headers.get(IDEMPOTENCY_HEADER)


@dataclass(slots=True)
class SentCallback:
    """One status callback: the URL it was signed for, where it went, and how it went."""

    url: str
    delivered_to: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int | None = None  # the receiver's HTTP status; None when delivery failed
    error: str | None = None
    lost: bool = False  # scripted as lost: never delivered


def _now() -> str:
    return format_datetime(datetime.now(UTC))


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)  # 34 chars, like Twilio's


class FakeTwilio:
    """The fake Twilio REST API plus its status-callback sender (see module docstring)."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 31 + "1",
        auth_token: str = "fake-auth-token-" + "0" * 16,
        *,
        callback_interval: float = 0.0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.callback_interval = callback_interval  # gap between one resource's callbacks
        self.requests: list[RecordedRequest] = []
        self.callbacks: list[SentCallback] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self._scripts: dict[str, Script] = {}
        self._replays: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._routes: list[tuple[str, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._call_tasks: dict[str, asyncio.Task[None]] = {}
        self._callback_seq: dict[str, itertools.count[int]] = {}
        self._message_hooks: dict[str, tuple[str | None, Script]] = {}  # sid -> callback, script
        self._validator = RequestValidator(auth_token)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        prefix = f"/{API_VERSION}/Accounts/{{account}}"
        app.router.add_post(prefix + "/Messages.json", self._create_message)
        app.router.add_get(prefix + "/Messages/{sid}.json", self._fetch_message)
        app.router.add_post(prefix + "/Calls.json", self._create_call)
        app.router.add_get(prefix + "/Calls/{sid}.json", self._fetch_call)
        app.router.add_post(prefix + "/Calls/{sid}.json", self._update_call)
        app.router.add_get("/v2/PhoneNumbers/{number}", self._lookup)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        """Cancel pending callbacks and slow replies, then stop serving."""
        self._closing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

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

    # -- scripting and assertions ----------------------------------------------------------

    def script(self, to: str, **behaviour: Any) -> Script:
        """Script what happens to creates for `to` (see Script); returns it for later tweaks."""
        script = Script(**behaviour)
        self._scripts[to] = script
        return script

    def route_callbacks(self, public_base_url: str, local_base_url: str) -> None:
        """Act as the reverse proxy: deliver callbacks for `public_base_url` to a local server.

        The signature still covers the public URL, as it does when Twilio calls through a proxy.
        """
        self._routes.append((public_base_url.rstrip("/"), local_base_url.rstrip("/")))

    async def wait_callbacks(self, timeout: float = 5.0) -> None:
        """Return once every scheduled callback has been sent (hung-up calls included)."""
        async with asyncio.timeout(timeout):
            while pending := [t for t in self._tasks if not t.done()]:
                await asyncio.wait(pending)

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    async def report_message(self, sid: str, status: str) -> SentCallback | None:
        """One more status for a message, as when the carrier answers late: the resource moves
        and its callback is sent (returned, with the receiver's answer)."""
        callback, script = self._message_hooks.get(sid, (None, Script()))
        if callback is None:
            self.messages[sid]["status"] = status
            return None
        sent = len(self.callbacks)
        await self._message_callbacks(self.messages[sid], callback, [status], script)
        return self.callbacks[sent] if len(self.callbacks) > sent else None

    async def report_call(self, sid: str, status: str) -> SentCallback | None:
        """One more status for a call (e.g. "completed": the far end hung up)."""
        sent = len(self.callbacks)
        await self._call_status(self.calls[sid], status)
        return self.callbacks[sent] if len(self.callbacks) > sent else None

    # -- HTTP ------------------------------------------------------------------------------

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            form=await _form(request),
            auth=_basic_auth(request),
        )
        self.requests.append(record)
        if request.match_info.http_exception is not None:
            response: web.StreamResponse = self._error(20404, path=request.path)
        else:
            response = await self._authenticated(request, handler)
        record.response_status = response.status
        return response

    async def _authenticated(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if _basic_auth(request) != (self.account_sid, self.auth_token):
            return self._error(20003)
        # Lookup's /v2/PhoneNumbers/… names no account
        if request.match_info.get("account", self.account_sid) != self.account_sid:
            return self._error(20404, path=request.path)
        return await handler(request)

    def _error(self, code: int, *, status: int | None = None, **fmt: str) -> web.Response:
        http_status, template = ERRORS.get(code, (status or 400, "Error {code}"))
        body = {
            "code": code,
            "message": template.format(code=code, **{"to": "", "from_": "", "path": "", **fmt}),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status or http_status,
        }
        return web.json_response(body, status=status or http_status)

    async def _create(
        self,
        request: web.Request,
        validate: Callable[[MultiDictProxy[str]], int | None],
        build: Callable[[MultiDictProxy[str], Script], dict[str, Any]],
    ) -> web.Response:
        """What every create shares: replay by token, scripted failures, accept, hold, reply."""
        form = await _form(request)
        token = request.headers.get(IDEMPOTENCY_HEADER)
        if token and (request.path, token) in self._replays:
            status, body = self._replays[(request.path, token)]
            return web.json_response(body, status=status)
        to = form.get("To", "")
        script = self._scripts.get(to) or Script(error_code=MAGIC_TO_NUMBERS.get(to))
        if (code := validate(form)) is not None or (code := script.error_code) is not None:
            return self._error(code, to=to, from_=form.get("From", ""))
        if script.fail_times > 0:
            script.fail_times -= 1
            status = script.fail_status
            return self._error(_CODE_FOR_STATUS.get(status, 20500), status=status)
        resource = build(form, script)
        if token:
            self._replays[(request.path, token)] = (201, resource)
        if script.delays:  # accepted already: a client that times out has still sent it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), script.delays.pop(0))
        return web.json_response(resource, status=201)

    async def _create_message(self, request: web.Request) -> web.Response:
        def validate(form: MultiDictProxy[str]) -> int | None:
            if not form.get("To"):
                return 21604
            if not form.get("From") and not form.get("MessagingServiceSid"):
                return 21603
            if not form.get("Body") and not form.get("MediaUrl"):
                return 21602
            return None

        return await self._create(request, validate, self._accept_message)

    def _accept_message(self, form: MultiDictProxy[str], script: Script) -> dict[str, Any]:
        sid = _sid("SM")
        now = _now()
        service = form.get("MessagingServiceSid")
        msg: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": form.get("Body", ""),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": service,
            "num_media": str(len(form.getall("MediaUrl", []))),
            "num_segments": str(max(1, -(-len(form.get("Body", "")) // 160))),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not form.get("From") else "queued",
            "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": form["To"],
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        self.messages[sid] = msg
        callback = form.get("StatusCallback")
        self._message_hooks[sid] = (callback, script)
        if callback and script.callbacks:
            statuses = script.statuses or ["queued", "sent", "delivered"]
            self._spawn(self._message_callbacks(msg, callback, statuses, script))
        return dict(msg)

    async def _message_callbacks(
        self, msg: dict[str, Any], url: str, statuses: Sequence[str], script: Script
    ) -> None:
        for i, status in enumerate(statuses):
            if i and self.callback_interval:
                await asyncio.sleep(self.callback_interval)
            msg["status"] = status
            params = {
                "AccountSid": self.account_sid,
                "ApiVersion": API_VERSION,
                "From": msg["from"] or "+15005550006",
                "To": msg["to"],
                "MessageSid": msg["sid"],
                "MessageStatus": status,
                "SmsSid": msg["sid"],
                "SmsStatus": status,
            }
            if msg["messaging_service_sid"]:
                params["MessagingServiceSid"] = msg["messaging_service_sid"]
            if status in _DEFAULT_CALLBACK_ERROR:
                code = script.callback_error_code or _DEFAULT_CALLBACK_ERROR[status]
                params["ErrorCode"] = str(code)
                msg["error_code"] = code
            msg["date_updated"] = _now()
            await self._send_callback(url, params, lost=status in script.lost_callbacks)

    async def _create_call(self, request: web.Request) -> web.Response:
        def validate(form: MultiDictProxy[str]) -> int | None:
            if not form.get("To"):
                return 21604
            if not form.get("From"):
                return 21603
            return None

        return await self._create(request, validate, self._accept_call)

    def _accept_call(self, form: MultiDictProxy[str], script: Script) -> dict[str, Any]:
        sid = _sid("CA")
        now = _now()
        call: dict[str, Any] = {
            "account_sid": self.account_sid,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": form["From"],
            "from_formatted": form["From"],
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": None,
            "status": "queued",
            "to": form["To"],
            "to_formatted": form["To"],
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}.json",
        }
        self.calls[sid] = call
        call["_callback"] = form.get("StatusCallback") if script.callbacks else None
        call["_events"] = set(form.getall("StatusCallbackEvent", [])) or {"completed"}
        call["_amd"] = form.get("MachineDetection") or None
        call["_answered_by"] = script.answered_by
        call["_lost"] = script.lost_callbacks
        statuses = script.statuses or _CALL_PROGRESS[script.call_outcome]
        self._call_tasks[sid] = self._spawn(self._call_progress(call, statuses))
        return _public(call)

    async def _call_progress(self, call: dict[str, Any], statuses: Sequence[str]) -> None:
        for i, status in enumerate(statuses):
            if i and self.callback_interval:
                await asyncio.sleep(self.callback_interval)
            await self._call_status(call, status)

    async def _call_status(self, call: dict[str, Any], status: str) -> None:
        call["status"] = status
        call["date_updated"] = _now()
        if status == "in-progress":
            call["start_time"] = _now()
            call["answered_by"] = _answered_by(call["_amd"], call["_answered_by"])
        if status in _CALL_TERMINAL:
            call["end_time"] = _now()
            call["duration"] = "0"
        event = _CALL_EVENT.get(status, "completed" if status in _CALL_TERMINAL else None)
        url = call["_callback"]
        if not url or event not in call["_events"]:
            return
        seq = self._callback_seq.setdefault(call["sid"], itertools.count())
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call["sid"],
            "CallStatus": status,
            "CallbackSource": "call-progress-events",
            "Called": call["to"],
            "Caller": call["from"],
            "Direction": "outbound-api",
            "From": call["from"],
            "SequenceNumber": str(next(seq)),
            "Timestamp": _now(),
            "To": call["to"],
        }
        if call["answered_by"]:
            params["AnsweredBy"] = call["answered_by"]
        if status in _CALL_TERMINAL:
            params["CallDuration"] = params["Duration"] = "0"
        await self._send_callback(url, params, lost=status in call["_lost"])

    async def _update_call(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return self._error(20404, path=request.path)
        form = await _form(request)
        wanted = form.get("Status")
        twiml = form.get("Twiml") or ""
        if call["status"] == "in-progress" and twiml.rstrip().endswith("<Hangup/></Response>"):
            # Twilio runs the new TwiML: what it says, then the hang-up ends the call.
            task = self._call_tasks.pop(call["sid"], None)
            if task is not None and not task.done():
                task.cancel()
            self._call_tasks[call["sid"]] = self._spawn(self._call_status(call, "completed"))
            return web.json_response(_public(call))
        if wanted in ("completed", "canceled"):
            if call["status"] in _CALL_TERMINAL:
                return self._error(21220)
            if wanted == "canceled" and call["status"] == "in-progress":
                return web.json_response(_public(call))  # Twilio: canceled doesn't end a live call
            task = self._call_tasks.pop(call["sid"], None)
            if task is not None and not task.done():
                task.cancel()
            final = "completed" if call["status"] == "in-progress" else "canceled"
            call["status"] = final  # visible in the reply; the callback follows
            self._spawn(self._call_status(call, final))
        return web.json_response(_public(call))

    # GET /v2/PhoneNumbers/{number} (Lookup v2): by the last digit, 9 a high pumping risk, 8
    # blocked, 7 invalid, else clean; the line type is always nonFixedVoip.
    async def _lookup(self, request: web.Request) -> web.Response:
        number = request.match_info["number"]
        last = number[-1:]
        return web.json_response(
            {
                "phone_number": number,
                "valid": last != "7",
                "line_type_intelligence": {"type": "nonFixedVoip", "error_code": None},
                "sms_pumping_risk": {
                    "number_blocked": last == "8",
                    "sms_pumping_risk_score": 90 if last == "9" else 5,
                    "error_code": None,
                },
                "url": f"https://lookups.twilio.com/v2/PhoneNumbers/{number}",
            }
        )

    # GET …/Messages/{sid}.json and …/Calls/{sid}.json: what the fake last knew, whether or
    # not its callback arrived (how a lost receipt is recovered).
    async def _fetch_message(self, request: web.Request) -> web.Response:
        msg = self.messages.get(request.match_info["sid"])
        return web.json_response(msg) if msg else self._error(20404, path=request.path)

    async def _fetch_call(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["sid"])
        return web.json_response(_public(call)) if call else self._error(20404, path=request.path)

    # -- callbacks -------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_callback(self, url: str, params: dict[str, str], *, lost: bool = False) -> None:
        """POST a form-encoded callback signed exactly as Twilio signs it (unless `lost`)."""
        target = url
        for public, local in self._routes:
            if url.startswith(public):
                target = local + url[len(public) :]
                break
        headers = {
            SIGNATURE_HEADER: self._validator.compute_signature(url, params),
            IDEMPOTENCY_HEADER: f"{secrets.token_hex(8)}-{secrets.token_hex(8)}",
            "User-Agent": "TwilioProxy/1.1",
        }
        sent = SentCallback(url=url, delivered_to=target, params=params, headers=headers, lost=lost)
        self.callbacks.append(sent)
        if lost:
            return
        assert self._session is not None
        try:
            # encoded=True: deliver the URL byte for byte, as signed (yarl would requote it).
            url_obj = yarl.URL(target, encoded=True)
            async with self._session.post(url_obj, data=params, headers=headers) as resp:
                await resp.read()
                sent.status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            sent.error = repr(exc)


def _answered_by(machine_detection: str | None, concluded: str) -> str | None:
    """AnsweredBy as Twilio reports it for the MachineDetection asked (none: no AMD)."""
    if machine_detection is None:
        return None
    if machine_detection == "Enable" and concluded.startswith("machine_end"):
        return "machine_start"  # Enable answers at the start of the greeting
    return concluded


def _public(call: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in call.items() if not k.startswith("_")}


async def _form(request: web.Request) -> MultiDictProxy[str]:
    """The form body as strings (aiohttp caches the parse, so reading it twice is free)."""
    posted = await request.post()
    return MultiDictProxy(MultiDict((k, v) for k, v in posted.items() if isinstance(v, str)))


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password
