"""One long-lived AMI connection per Asterisk, built on panoramisk 1.4's message types.

panoramisk's ``Manager`` owns the connection lifecycle, and each part of that lifecycle is one
of the sharp edges this module exists to remove, so ``AMIClient`` replaces it and keeps
panoramisk's ``Message`` (parsing, case-insensitive headers, repeated headers as lists):

=====================================================  ==========================================
panoramisk 1.4 ``Manager``                             ``AMIClient``
=====================================================  ==========================================
``connect()`` returns before Login is answered         ``start()`` returns once logged in, or
                                                       raises ``AMIAuthError`` / ``AMIConnectError``
pending futures hang when the connection drops, and    every pending action fails at once with
are re-sent after reconnect (an Originate dials twice) ``AMIConnectionLost``; nothing is replayed
sending while disconnected: future never resolves      ``AMINotConnected`` at once
a list response cut off: future never resolves         ``AMIConnectionLost`` / ``AMIListIncomplete``
pings with no timeout: a silent peer is never noticed  Ping answered within ``ping_timeout`` or
                                                       the session is dropped and re-opened
fixed-delay reconnect that ``close()`` cannot cancel   exponential backoff + jitter in one owned
                                                       task that ``close()`` cancels
UTF-8 split across TCP reads is dropped                frames cut on bytes (``protocol.py``)
events carrying a pending ActionID are swallowed       a plain action resolves on its Response;
(Async OriginateResponse never reaches handlers)       every event reaches handlers, except the
                                                       items of a list you asked for
=====================================================  ==========================================

Events and the connected/disconnected hooks go through one queue, handled in order by one task,
so a call tracker sees "disconnected" after the last event of the old session and "connected"
before the first event of the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import inspect
import itertools
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from panoramisk.message import Message

from .errors import (
    AMIActionError,
    AMIAuthError,
    AMIClosed,
    AMIConnectError,
    AMIConnectionLost,
    AMIError,
    AMIKeepaliveTimeout,
    AMIListIncomplete,
    AMINotConnected,
    AMIShutdown,
    AMITimeout,
)
from .protocol import ActionValue, AMIParser, encode_action

log = structlog.get_logger(__name__)

Action = Mapping[str, ActionValue]
EventHandler = Callable[[Message], Awaitable[None] | None]
ConnectedHook = Callable[[], Awaitable[None] | None]
DisconnectedHook = Callable[[AMIConnectionLost], Awaitable[None] | None]


@dataclass(frozen=True)
class OriginateQueued:
    """Asterisk accepted an Async Originate. The outcome comes later as events: the
    ``OriginateResponse`` (same ``action_id``) and the channel events (``Uniqueid`` and
    ``Linkedid`` = ``channel_id`` from the very first ``Newchannel``)."""

    action_id: str
    channel_id: str
    response: Message


@dataclass
class _Pending:
    name: str
    future: asyncio.Future[Any]
    complete_event: str | None = None  # list actions: the event that ends the list
    items: list[Message] = field(default_factory=list)
    on_response: Callable[[Message], None] | None = None


class _Session:
    """One TCP connection and the actions in flight on it. It dies once, for one recorded
    reason; the client then opens a new one."""

    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.number = number
        self.reader = reader
        self.writer = writer
        self.parser = AMIParser()
        self.pending: dict[str, _Pending] = {}
        self.abandoned_lists: set[str] = set()  # list actions that timed out: drop late items
        self.logged_in = False
        self.was_up = False
        self.reason: AMIConnectionLost | None = None
        self.heard_at: float | None = None  # wall clock of the last bytes read
        self.dead = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def fail(self, reason: AMIConnectionLost) -> None:
        """Record why the session ended, fail every pending action now, reset the socket."""
        if self.reason is not None:
            return
        self.reason = reason
        self.logged_in = False
        for pending in self.pending.values():
            if not pending.future.done():
                error = type(reason)(f"{pending.name}: {reason}")
                error.__cause__ = reason
                pending.future.set_exception(error)
        self.pending.clear()
        self.writer.transport.abort()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.dead.set()


class AMIClient:
    """A logged-in AMI session to one Asterisk that stays logged in.

    ``start()`` connects and logs in; from then on a supervisor task keeps a session open:
    keepalive Pings, reconnect with backoff, re-login. Register handlers with ``on_event`` and
    hooks with ``on_connected``/``on_disconnected`` (the call tracker reconciles there, e.g.
    with ``core_show_channels()``); ``connected`` is an ``asyncio.Event`` set while logged in.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        ping_interval: float = 10.0,
        ping_timeout: float | None = None,
        action_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        reconnect_backoff_initial: float = 0.5,
        reconnect_backoff_max: float = 30.0,
        handler_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.secret = secret
        self.ping_interval = ping_interval
        self.ping_timeout = action_timeout if ping_timeout is None else ping_timeout
        self.action_timeout = action_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_backoff_initial = reconnect_backoff_initial
        self.reconnect_backoff_max = reconnect_backoff_max
        self.handler_timeout = handler_timeout
        self.connected = asyncio.Event()
        self.logins = 0  # successful logins so far (1 + reconnects)
        self._rng = rng or random.Random()
        self._log = log.bind(ami=f"{host}:{port}")
        self._session: _Session | None = None
        self._handlers: list[tuple[str, EventHandler]] = []
        self._connected_hooks: list[ConnectedHook] = []
        self._disconnected_hooks: list[DisconnectedHook] = []
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._ids = itertools.count(1)
        self._id_prefix = f"tl-{secrets.token_hex(4)}"
        self._session_numbers = itertools.count(1)

    # -- registration -------------------------------------------------------------------------

    def on_event(self, pattern: str, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for events whose name matches ``pattern`` (fnmatch, any
        case: ``"Hangup"``, ``"Dial*"``, ``"*"``). Handlers run one at a time, in arrival
        order; a coroutine handler is awaited (up to ``handler_timeout``), so keep them short.
        Returns a function that unregisters the handler."""
        return _register(self._handlers, (pattern.lower(), handler))

    def on_connected(self, hook: ConnectedHook) -> Callable[[], None]:
        """Call ``hook()`` after every successful login, before that session's events."""
        return _register(self._connected_hooks, hook)

    def on_disconnected(self, hook: DisconnectedHook) -> Callable[[], None]:
        """Call ``hook(reason)`` after a logged-in session ends, after its last event."""
        return _register(self._disconnected_hooks, hook)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._session is not None and self._session.logged_in

    @property
    def session(self) -> int | None:
        """The number of the logged-in session, or None. Channel names are unique only within
        one Asterisk run, and a session never outlives the run it talks to: a name read on
        session N may be used on session N (``send(..., session=N)``), never on another."""
        session = self._session
        return session.number if session is not None and session.logged_in else None

    @property
    def version(self) -> str | None:
        """AMI version from the current session's banner, e.g. "11.0.0"."""
        return self._session.parser.version if self._session else None

    async def start(self) -> None:
        """Connect and log in; return only once Asterisk accepted the Login.

        Raises ``AMIAuthError`` on ``Authentication failed`` and ``AMIConnectError`` or
        ``AMITimeout`` when Asterisk cannot be reached; nothing keeps running then. After a
        successful start the client reconnects by itself until ``close()``.
        """
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._launch(first)
        try:
            await first
        except BaseException:
            await self.close()
            raise

    def start_background(self) -> None:
        """Start without waiting: connect (with backoff) whenever Asterisk is reachable. For a
        daemon that must come up while an Asterisk is down; watch ``connected``."""
        self._launch(None)

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(self.action_timeout if timeout is None else timeout):
            await self.connected.wait()

    async def close(self) -> None:
        """Log off, stop reconnecting (also a reconnect already scheduled), fail what is
        pending with ``AMIClosed``, deliver the events already received, stop every task."""
        if self._closing:
            return
        self._closing = True
        session = self._session
        if session is not None and session.logged_in:
            with contextlib.suppress(AMIError):
                await self._request(
                    session, {"Action": "Logoff"}, timeout=min(1.0, self.action_timeout)
                )
        if session is not None:
            session.fail(AMIClosed("client closed"))
        # Bounded: a cancel can be swallowed (Python 3.11's wait_for, in a library call, when
        # it lands as the call completes), so the supervisor also stops on `_closing` and is
        # cancelled again while it goes on.
        if self._supervisor is not None and not await _stop(self._supervisor):
            self._log.warning("ami.supervisor_stuck_on_close")
        if self._dispatcher is not None:
            self._queue.put_nowait(("stop", None))
            done, _ = await asyncio.wait({self._dispatcher}, timeout=self.handler_timeout)
            if not done:
                self._log.warning("ami.dispatcher_stuck_on_close")
                await _stop(self._dispatcher)

    def _launch(self, first: asyncio.Future[None] | None) -> None:
        if self._supervisor is not None:
            raise RuntimeError("AMIClient already started")
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="ami-dispatch")
        self._supervisor = asyncio.create_task(self._supervise(first), name="ami-supervisor")

    # -- actions ------------------------------------------------------------------------------

    async def send(
        self,
        action: Action,
        *,
        timeout: float | None = None,
        check: bool = True,
        session: int | None = None,
    ) -> Message:
        """Send one action and return its ``Response``.

        Fails with ``AMINotConnected`` at once while not logged in, ``AMIConnectionLost`` as
        soon as the session dies, ``AMITimeout`` after ``timeout`` (default ``action_timeout``)
        and, with ``check``, ``AMIActionError`` on ``Response: Error``. Events that carry this
        ActionID (OriginateResponse) still go to the event handlers. With ``session``, only on
        that session: ``AMIConnectionLost`` if it is not the current one any more.
        """
        _refuse_dangerous(action)
        return await self._request(
            self._live_session(session), action, timeout=timeout, check=check
        )

    async def send_list(
        self,
        action: Action,
        complete_event: str,
        *,
        timeout: float | None = None,
        session: int | None = None,
    ) -> list[Message]:
        """Send a list action (CoreShowChannels, Status, BridgeList …) and return its item
        events, once ``complete_event`` arrives with a ``ListItems`` count that matches. A list
        cut off by a dropped connection raises ``AMIConnectionLost``."""
        _refuse_dangerous(action)
        items: list[Message] = await self._request(
            self._live_session(session), action, timeout=timeout, complete_event=complete_event
        )
        return items

    async def originate(
        self,
        channel: str,
        *,
        context: str | None = None,
        exten: str = "s",
        priority: int = 1,
        application: str | None = None,
        data: str = "",
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        caller_id: str | None = None,
        ring_timeout: float = 30.0,
        variables: Mapping[str, str] | None = None,
        account: str | None = None,
        timeout: float | None = None,
    ) -> OriginateQueued:
        """Async Originate: returns as soon as Asterisk queued the call.

        Give either ``context`` (with ``exten``/``priority``) or ``application`` (with
        ``data``). ``channel_id`` (generated when not given) becomes the channel's Uniqueid and
        Linkedid, so register the call under it *before* calling this: its events may be
        handled before this coroutine resumes. A rejected call is still queued successfully;
        its failure arrives as ``OriginateResponse`` Failure and ``Hangup`` events.
        """
        if (context is None) == (application is None):
            raise ValueError("originate needs either context or application")
        channel_id = channel_id or f"tl-{uuid.uuid4().hex}"
        action_id = self._next_action_id()
        action: dict[str, ActionValue] = {
            "Action": "Originate",
            "ActionID": action_id,
            "Channel": channel,
            "Async": "true",  # a sync Originate blocks the whole session (02f), keepalive too
            "Timeout": str(int(ring_timeout * 1000)),
            "ChannelId": channel_id,
        }
        if context is not None:
            action.update(Context=context, Exten=exten, Priority=str(priority))
        else:
            action.update(Application=application or "", Data=data)
        if other_channel_id:
            action["OtherChannelId"] = other_channel_id
        if caller_id:
            action["CallerID"] = caller_id
        if account:
            action["Account"] = account
        if variables:
            if any("=" in name for name in variables):
                raise ValueError("an Originate variable name cannot contain '='")
            action["Variable"] = [f"{name}={value}" for name, value in variables.items()]
        response = await self.send(action, timeout=timeout)
        return OriginateQueued(action_id=action_id, channel_id=channel_id, response=response)

    async def ping(self, *, timeout: float | None = None) -> Message:
        return await self.send({"Action": "Ping"}, timeout=timeout)

    async def hangup(
        self, channel: str, *, cause: int = 16, timeout: float | None = None
    ) -> Message:
        """Hang up a channel by Uniqueid (Asterisk looks the name up first, then the Uniqueid,
        both exact) or by name; ``No such channel`` raises ``AMIActionError``. Prefer the
        Uniqueid we chose: Asterisk numbers channel names from 0 again after a restart."""
        return await self.send(
            {"Action": "Hangup", "Channel": channel, "Cause": str(cause)}, timeout=timeout
        )

    async def core_show_channels(
        self, *, timeout: float | None = None, session: int | None = None
    ) -> list[Message]:
        """Every live channel (one ``CoreShowChannel`` event each): the snapshot to reconcile
        tracked calls and channel pools against after a reconnect."""
        return await self.send_list(
            {"Action": "CoreShowChannels"},
            "CoreShowChannelsComplete",
            timeout=timeout,
            session=session,
        )

    async def command(self, command: str, *, timeout: float | None = None) -> list[str]:
        """Run a CLI command; AMI 11 returns its output as ``Output:`` headers, not a body."""
        response = await self.send({"Action": "Command", "Command": command}, timeout=timeout)
        output = response.get("Output", [])
        return output if isinstance(output, list) else [output]

    # -- sessions -----------------------------------------------------------------------------

    def _live_session(self, number: int | None = None) -> _Session:
        session = self._session
        if self._closing:
            raise AMINotConnected("AMI client is closed")
        if number is not None and (session is None or session.number != number):
            raise AMIConnectionLost(f"AMI session {number} is over (Asterisk may have restarted)")
        if session is None or not session.logged_in:
            raise AMINotConnected(f"not logged in to Asterisk at {self.host}:{self.port}")
        return session

    async def _supervise(self, first: asyncio.Future[None] | None) -> None:
        attempt = 0
        try:
            while not self._closing:
                try:
                    session = await self._open_session()
                    if self._closing:  # close() ran meanwhile: this session is not wanted
                        return
                except AMIError as exc:
                    if first is not None:
                        if not first.done():  # done = the caller of start() gave up
                            first.set_exception(exc)
                        return
                    self._log.warning("ami.connect_failed", error=str(exc), attempt=attempt)
                else:
                    attempt = 0
                    if first is not None:
                        if not first.done():
                            first.set_result(None)
                        first = None
                    await session.dead.wait()
                    await self._session_down(session)
                if self._closing:
                    return
                delay = self._backoff(attempt)
                attempt += 1
                self._log.info("ami.reconnect_scheduled", delay=round(delay, 3), attempt=attempt)
                await asyncio.sleep(delay)
        finally:
            if first is not None and not first.done():
                first.set_exception(AMIClosed("client closed before login"))
            if self._session is not None:
                session = self._session
                session.fail(AMIClosed("client closed"))
                await self._session_down(session)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(
            self.reconnect_backoff_max, self.reconnect_backoff_initial * 2 ** min(attempt, 30)
        )
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _open_session(self) -> _Session:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise AMIConnectError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        session = _Session(next(self._session_numbers), reader, writer)
        self._session = session
        session.tasks.add(asyncio.create_task(self._read_forever(session), name="ami-read"))
        login = {
            "Action": "Login",
            "Username": self.username,
            "Secret": self.secret,
            "Events": "on",  # never off: OriginateResponse would not come either (07)
        }
        try:
            response = await self._request(
                session,
                login,
                timeout=self.action_timeout,
                check=False,
                on_response=lambda message: self._logged_in(session, message),
            )
            if not response.success:
                reason = response.get("Message", "")
                if "authentication failed" in reason.lower():
                    raise AMIAuthError(f"Asterisk at {self.host}:{self.port} refused the login")
                raise AMIActionError(f"Login: {reason}", response)
        except BaseException as exc:
            lost = exc if isinstance(exc, AMIConnectionLost) else AMIConnectionLost(repr(exc))
            session.fail(lost)
            await self._session_down(session)
            raise
        session.tasks.add(asyncio.create_task(self._keepalive(session), name="ami-keepalive"))
        self._log.info("ami.logged_in", session=session.number, version=session.parser.version)
        return session

    def _logged_in(self, session: _Session, response: Message) -> None:
        # Runs inside the reader, before the events that follow the Login response in the
        # same read, so the "connected" hook is queued ahead of them.
        if not response.success:
            return
        session.logged_in = session.was_up = True
        self.logins += 1
        self.connected.set()
        self._queue.put_nowait(("connected", None))

    async def _session_down(self, session: _Session) -> None:
        if session.tasks:
            tasks, session.tasks = session.tasks, set()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is session:
            self._session = None
            self.connected.clear()
            if session.was_up:
                reason = session.reason or AMIConnectionLost("session ended")
                reason.last_heard = session.heard_at
                level = self._log.info if isinstance(reason, AMIClosed) else self._log.warning
                level("ami.disconnected", session=session.number, reason=str(reason))
                self._queue.put_nowait(("disconnected", reason))

    async def _read_forever(self, session: _Session) -> None:
        reason: AMIConnectionLost
        try:
            while True:
                data = await session.reader.read(65536)
                if data:
                    session.heard_at = time.time()
                else:
                    if self._closing:
                        reason = AMIClosed("client closed")
                    else:
                        reason = AMIConnectionLost("Asterisk closed the connection")
                    break
                for message in session.parser.feed(data):
                    self._on_message(session, message)
                    if session.reason is not None:
                        return
        except AMIConnectionLost as exc:  # not AMI at all
            reason = exc
        except OSError as exc:
            reason = AMIConnectionLost(f"connection error: {exc!r}")
        except Exception as exc:  # a bug here must not leave callers waiting forever
            self._log.exception("ami.reader_failed")
            reason = AMIConnectionLost(f"AMI reader failed: {exc!r}")
        session.fail(reason)

    async def _keepalive(self, session: _Session) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._request(session, {"Action": "Ping"}, timeout=self.ping_timeout)
            except AMITimeout:
                self._log.warning("ami.keepalive_timeout", timeout=self.ping_timeout)
                session.fail(AMIKeepaliveTimeout(f"no Pong within {self.ping_timeout}s"))
                return
            except AMIError:
                return

    # -- request / response -------------------------------------------------------------------

    def _next_action_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    async def _request(
        self,
        session: _Session,
        action: Action,
        *,
        timeout: float | None,
        check: bool = True,
        complete_event: str | None = None,
        on_response: Callable[[Message], None] | None = None,
    ) -> Any:
        if session.reason is not None:
            raise AMINotConnected(f"session closed: {session.reason}")
        action_id = next((str(v) for k, v in action.items() if k.lower() == "actionid"), None)
        action_id = action_id or self._next_action_id()
        name = next((str(v) for k, v in action.items() if k.lower() == "action"), "?")
        if action_id in session.pending:
            raise ValueError(f"ActionID {action_id!r} is already in flight")
        data = encode_action(action, action_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        session.pending[action_id] = _Pending(name, future, complete_event, on_response=on_response)
        limit = self.action_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                session.writer.write(data)
                with contextlib.suppress(ConnectionError):
                    await session.writer.drain()  # a dead socket: the reader fails the future
                result = await future
        except TimeoutError:
            if complete_event is not None:
                session.abandoned_lists.add(action_id)
            raise AMITimeout(f"{name}: no response within {limit}s") from None
        finally:
            session.pending.pop(action_id, None)
        if check and isinstance(result, Message) and not result.success:
            raise AMIActionError(f"{name}: {result.get('Message', 'error')}", result)
        return result

    def _on_message(self, session: _Session, message: Message) -> None:
        if "Event" in message:
            self._on_event(session, message)
            return
        action_id = message.get("ActionID")
        pending = session.pending.get(action_id) if action_id else None
        if pending is None:
            self._log.debug("ami.unmatched_response", action_id=action_id)
            return
        if pending.on_response is not None:
            pending.on_response(message)
        if (pending.complete_event is None or not message.success) and not pending.future.done():
            pending.future.set_result(message)
        # else: a list action; its items and the …Complete event follow

    def _on_event(self, session: _Session, event: Message) -> None:
        action_id = event.get("ActionID")
        pending = session.pending.get(action_id) if action_id else None
        if pending is not None and pending.complete_event is not None:
            if event.get("Event", "").lower() == pending.complete_event.lower():
                _complete_list(pending, event)
            else:
                pending.items.append(event)
            return
        if action_id and action_id in session.abandoned_lists:
            return
        event.manager = self
        self._queue.put_nowait(("event", event))
        if event.get("Event", "").lower() == "shutdown":
            restart = event.get("Restart", "?")
            session.fail(AMIShutdown(f"Asterisk is shutting down (Restart: {restart})"))

    # -- dispatch -----------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            kind, payload = await self._queue.get()
            if kind == "stop":
                return
            if kind == "event":
                name = str(payload.get("Event", "")).lower()
                for pattern, handler in list(self._handlers):
                    if fnmatch.fnmatchcase(name, pattern):
                        await self._run_handler(handler, payload)
            elif kind == "connected":
                for hook in list(self._connected_hooks):
                    await self._run_handler(hook)
            elif kind == "disconnected":
                for disconnected_hook in list(self._disconnected_hooks):
                    await self._run_handler(disconnected_hook, payload)

    async def _run_handler(self, handler: Callable[..., Any], *args: Any) -> None:
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self.handler_timeout):
                    await result
        except Exception:
            self._log.exception(
                "ami.handler_failed", handler=getattr(handler, "__qualname__", None)
            )


async def _stop(task: asyncio.Task[None], attempts: int = 20, each: float = 0.5) -> bool:
    """Cancel `task` until it ends (at most `attempts` times, `each` s apart); True if it did."""
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=each)
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()  # retrieved: no "never retrieved" warning
    return task.done()


def _register(registry: list[Any], entry: Any) -> Callable[[], None]:
    registry.append(entry)

    def unregister() -> None:
        with contextlib.suppress(ValueError):
            registry.remove(entry)

    return unregister


def _complete_list(pending: _Pending, complete: Message) -> None:
    if pending.future.done():
        return
    expected = str(complete.get("ListItems", ""))
    if expected.isdigit() and int(expected) != len(pending.items):
        pending.future.set_exception(
            AMIListIncomplete(
                f"{pending.name}: {len(pending.items)} items of {expected} announced", complete
            )
        )
    else:
        pending.future.set_result(pending.items)


def _refuse_dangerous(action: Action) -> None:
    """Actions that would break this connection's guarantees, refused before sending."""
    headers = {k.lower(): str(v).lower() for k, v in action.items() if not isinstance(v, list)}
    name = headers.get("action", "")
    if name in ("login", "logoff"):
        raise ValueError(f"{name} is managed by AMIClient")
    if name == "events" and headers.get("eventmask") == "off":
        raise ValueError("Events: off would stop OriginateResponse and every call event")
    if name == "originate" and headers.get("async") not in ("true", "yes", "1", "on"):
        raise ValueError("a sync Originate blocks the whole AMI session; use originate()")
