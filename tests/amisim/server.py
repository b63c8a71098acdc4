"""A test AMI server that speaks AMI over real TCP as Asterisk 22 does in ../shared/asterisk-ami/.

Start it on 127.0.0.1 port 0, script what each dialled number does, and steer it with the hooks::

    async with AMISimServer() as ami:
        ami.outcomes["5550486"] = BUSY
        ...connect a client to ami.port...
        ami.remote_hangup("PJSIP/carrier-00000000")   # far end sends BYE
        await ami.drop_connections()                   # TCP torn down, no goodbye
        await ami.shutdown(restart=True)               # Event: Shutdown, then EOF

Every session writes through one buffer that is flushed by its own task, so messages produced
together leave in one TCP write, as Asterisk packs them. Hooks act on that buffer: ``pause()``
holds all output, ``emit(..., split_at=n)`` sends one event in two TCP writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from . import scenarios as sc
from .framing import BANNER, Action, ActionReader, Headers, encode, response

SPLIT_GAP = 0.02  # pause between the two halves of a split write, so they arrive as two reads


@dataclass(frozen=True)
class Received:
    """One action as the server received it, with the session (connection) it came on."""

    session: int
    action: Action


@dataclass(frozen=True)
class _Split:
    data: bytes
    at: int


_CLOSE = object()  # flush, then close the connection
_ABORT = object()  # flush, then reset the connection


class Session:
    """One client connection: read actions one at a time, write through a flushed buffer."""

    def __init__(self, server: AMISimServer, sid: int, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.id = sid
        self.writer = writer
        self.logged_in = False
        self.events: str | frozenset[str] = "on"  # "on", "off" or a set of event classes
        self._out: deque[Any] = deque()
        self._wake = asyncio.Event()
        self._held = False  # a sync Originate blocks the session (02f)
        self.bad_request = ""
        self.closed = False

    # -- output ---------------------------------------------------------------------------------

    def send(self, headers: Headers) -> None:
        self.send_bytes(encode(headers))

    def send_bytes(self, data: bytes) -> None:
        self._out.append(data)
        self._wake.set()

    def send_split(self, data: bytes, at: int) -> None:
        self._out.append(_Split(data, at))
        self._wake.set()

    def reply(self, kind: str, action: Action, *fields: tuple[str, str]) -> None:
        self.send(response(kind, action.action_id, *fields))

    def close_after_flush(self) -> None:
        self._out.append(_CLOSE)
        self._wake.set()

    def abort_after_flush(self) -> None:
        self._out.append(_ABORT)
        self._wake.set()

    def abort(self) -> None:
        self.closed = True
        self.writer.transport.abort()

    def hold(self) -> None:
        self._held = True

    def release(self, first: Headers) -> None:
        """End a hold: ``first`` goes out before everything that piled up meanwhile (02f)."""
        self._held = False
        self._out.appendleft(encode(first))
        self._wake.set()

    def wants(self, headers: Headers) -> bool:
        """Event filtering by the Login ``Events:`` header or the Events action (07)."""
        if not self.logged_in or self.closed or self.events == "off":
            return False
        if self.events == "on":
            return True
        privilege = dict(headers).get("Privilege", "")
        return bool({c.strip().lower() for c in privilege.split(",")} & self.events)

    async def flush_forever(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._flush_forever()

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.server._running.wait()
            if self._held:
                continue
            chunk = bytearray()
            while self._out:
                item = self._out.popleft()
                if item is _CLOSE or item is _ABORT:
                    self.writer.write(bytes(chunk))
                    await self.writer.drain()
                    if item is _ABORT:
                        self.abort()
                    else:
                        self.closed = True
                        self.writer.close()
                    return
                if isinstance(item, _Split):
                    chunk += item.data[: item.at]
                    self.writer.write(bytes(chunk))
                    await self.writer.drain()
                    await asyncio.sleep(SPLIT_GAP)
                    chunk = bytearray(item.data[item.at :])
                else:
                    chunk += item
            if chunk:
                self.writer.write(bytes(chunk))
                await self.writer.drain()


Handler = Callable[[Session, Action], Awaitable[None] | None]


class AMISimServer:
    """The test AMI server. See the module docstring; every public attribute is a test knob.

    - ``outcomes``: dialled number → outcome (``scenarios.BUSY`` …); ``default_outcome`` else.
    - ``time_scale``: Originate ``Timeout`` (ms) × time_scale = seconds a NoAnswer rings.
    - ``auth_fail_delay``: Asterisk waits ~1 s before ``Authentication failed`` (01).
    - ``login_delay``: extra wait before a *good* login is answered (a busy or booting server).
    - ``muted``: lower-case action names that are recorded and ignored: no response, no effect
      (the peer is alive but this action is lost).
    - ``truncate_lists``: list actions send the Response and this many items, then the
      connection is torn down (a list response cut off).
    - ``received``: every action received, in order.
    """

    def __init__(
        self,
        *,
        username: str = "gateway",
        secret: str = "secret",
        auth_fail_delay: float = 0.05,
        login_delay: float = 0.0,
        time_scale: float = 0.001,
        default_outcome: sc.Outcome = sc.ANSWER,
    ) -> None:
        self.username = username
        self.secret = secret
        self.auth_fail_delay = auth_fail_delay
        self.login_delay = login_delay
        self.time_scale = time_scale
        self.default_outcome: sc.Outcome = default_outcome
        self.outcomes: dict[str, sc.Outcome] = {}
        # Called with each originated channel once it is answered and in its Context: the
        # dialplan that runs there (tests/amisim/asyncagi.py: AMD(), AGI(agi:async)).
        self.answer_hooks: list[Callable[[sc.Channel], None]] = []
        self.muted: set[str] = set()
        self.truncate_lists: int | None = None
        self.received: list[Received] = []
        self.channels: dict[str, sc.Channel] = {}
        self.bridges: dict[str, sc.Bridge] = {}
        self.sessions: dict[int, Session] = {}
        self.connections = 0  # TCP connections accepted
        self.logins = 0  # successful logins
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._running = asyncio.Event()
        self._running.set()
        self._received_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._readers: set[asyncio.Task[Any]] = set()
        self._call_tasks: dict[str, asyncio.Task[Any]] = {}
        self._reset_next = 0
        self._started = time.time()
        self._channel_seq = 0
        self._uniqueid_seq = 0
        self._handlers: dict[str, Handler] = {
            "login": self._login,
            "logoff": self._logoff,
            "ping": self._ping,
            "events": self._events,
            "command": self._command,
            "coresettings": self._core_settings,
            "corestatus": self._core_status,
            "originate": self._originate,
            "hangup": self._hangup,
            "redirect": self._redirect,
            "bridge": self._bridge,
            "getvar": self._getvar,
            "setvar": self._setvar,
            "coreshowchannels": self._core_show_channels,
            "status": self._status,
            "bridgelist": self._bridge_list,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._stop_listening()
        for task in list(self._tasks):
            task.cancel()
        for session in list(self.sessions.values()):
            session.abort()
        if self._tasks or self._readers:
            await asyncio.wait(self._tasks | self._readers, timeout=2)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- hooks for tests ------------------------------------------------------------------------

    async def drop_connections(self) -> None:
        """Tear every connection down at once (no Shutdown event, unsent output lost)."""
        for session in list(self.sessions.values()):
            session.abort()
        await asyncio.sleep(0)

    async def shutdown(
        self, *, restart: bool = True, down_for: float = 0.0, origin: Session | None = None
    ) -> None:
        """06: other sessions get ``Event: Shutdown`` then EOF; the session that asked for it
        (``origin``) gets just EOF. Channels vanish. With ``down_for``, connections are refused
        for that long (Asterisk restarting)."""
        shutdown = [
            ("Event", "Shutdown"),
            ("Privilege", "system,all"),
            ("Shutdown", "Cleanly"),
            ("Restart", "True" if restart else "False"),
        ]
        if down_for:
            await self.refuse_connections(down_for)
        for session in list(self.sessions.values()):
            if session is not origin and session.wants(shutdown):
                session.send(shutdown)
            session.close_after_flush()
        for task in self._call_tasks.values():
            task.cancel()
        self._call_tasks.clear()
        self.channels.clear()
        self.bridges.clear()
        if restart:
            # A new Asterisk process numbers its channels from 0 again: names are reused
            # (PJSIP/carrier-00000000 opens 02a as it opens every run), Uniqueids are not.
            self._channel_seq = 0
            self._uniqueid_seq = 0
            self._started = time.time()

    async def refuse_connections(self, seconds: float | None = None) -> None:
        """Stop listening (connection refused); listen again on the same port after
        ``seconds``, or when ``accept_connections()`` is called."""
        await self._stop_listening()
        if seconds is not None:
            self._spawn(self._listen_again_after(seconds))

    async def accept_connections(self) -> None:
        if self._server is None:
            await self.start()

    def reset_next_connections(self, count: int = 1) -> None:
        """06: during a restart a connect can succeed and be reset with no banner."""
        self._reset_next = count

    def pause(self) -> None:
        """Hold all output (responses, events, banners): a peer that went silent."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def remote_hangup(self, channel: str) -> None:
        """02d: the far end sends BYE on ``channel`` (name or Uniqueid)."""
        ch = self.find_channel(channel)
        if ch is None:
            raise KeyError(channel)
        if ch.bridge is not None:
            self._emit(sc.bridged_hangup(ch, 0, remote=True))
        else:
            self._emit(sc.remote_bye(ch))

    def emit(self, headers: Headers, *, split_at: int | None = None) -> None:
        """Send any event to every session that wants it, optionally as two TCP writes split
        after byte ``split_at`` (which may fall inside a multibyte UTF-8 character)."""
        data = encode(headers)
        for session in self._listeners(headers):
            if split_at is None:
                session.send_bytes(data)
            else:
                session.send_split(data, split_at)

    def find_channel(self, name_or_uniqueid: str) -> sc.Channel | None:
        """A live channel as Asterisk's ``ast_channel_get_by_name`` finds it — what Hangup,
        Redirect, Getvar, Setvar and Status use: the name (any case), else the Uniqueid,
        both exact. (The transcripts address channels by name only; the Uniqueid fallback is
        Asterisk's channel storage, main/channelstorage_ao2_legacy.c get_by_name_prefix.)"""
        return self._lookup(name_or_uniqueid, prefix=False)

    def _lookup(self, wanted: str, *, prefix: bool) -> sc.Channel | None:
        """By name, then by Uniqueid, case-insensitive; ``prefix`` matches the start only,
        as the Bridge action's ``ast_channel_get_by_name_prefix(x, strlen(x))`` does (so a
        Uniqueid ``X`` also finds ``X-agent``: address Bridge by exact name)."""
        if not wanted:
            return None
        wanted = wanted.lower()

        def hit(value: str) -> bool:
            value = value.lower()
            return value.startswith(wanted) if prefix else value == wanted

        return next((c for c in self.channels.values() if hit(c.name)), None) or next(
            (c for c in self.channels.values() if hit(c.uniqueid)), None
        )

    def actions(self, name: str) -> list[Action]:
        """Actions received with this name (case-insensitive), oldest first."""
        return [r.action for r in self.received if (r.action.name or "").lower() == name.lower()]

    async def wait_for_action(self, name: str, count: int = 1, timeout: float = 2.0) -> Action:
        """Wait until ``count`` actions named ``name`` were received; return the last one."""
        async with asyncio.timeout(timeout):
            while len(found := self.actions(name)) < count:
                self._received_changed.clear()
                await self._received_changed.wait()
        return found[count - 1]

    # -- plumbing -------------------------------------------------------------------------------

    async def _stop_listening(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def _listen_again_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.accept_connections()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _listeners(self, headers: Headers) -> Iterable[Session]:
        return [s for s in self.sessions.values() if s.wants(headers)]

    def _emit(self, events: Iterable[Headers]) -> None:
        for headers in events:
            for session in self._listeners(headers):
                session.send(headers)
        for name in [n for n, c in self.channels.items() if not c.alive]:
            del self.channels[name]
            task = self._call_tasks.pop(name, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for uid in [u for u, b in self.bridges.items() if not b.members]:
            del self.bridges[uid]

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._reset_next > 0:
            self._reset_next -= 1
            writer.transport.abort()
            return
        session = Session(self, self.connections, writer)
        self.sessions[session.id] = session
        session.send_bytes(BANNER)
        flusher = self._spawn(session.flush_forever())
        reading = asyncio.current_task()
        assert reading is not None
        self._readers.add(reading)  # ended by aborting the socket, never cancelled
        try:
            parser = ActionReader()
            while data := await reader.read(65536):
                for action in parser.feed(data):
                    self.received.append(Received(session.id, action))
                    self._received_changed.set()
                    if session.closed:
                        break
                    await self._dispatch(session, action)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._readers.discard(reading)
            self.sessions.pop(session.id, None)
            flusher.cancel()
            if not session.closed:
                session.abort()

    async def _dispatch(self, session: Session, action: Action) -> None:
        name = action.name
        if name is None:
            session.reply("Error", action, ("Message", "Missing action in request"))
            session.send(self._request_bad_format(session, "Action: NONE"))
            return
        if not session.logged_in and name.lower() != "login":
            session.reply("Error", action, ("Message", "Permission denied"))
            return
        if name.lower() in self.muted:
            return
        handler = self._handlers.get(name.lower())
        if handler is None:
            text = f"Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
            session.reply("Error", action, ("Message", text))
            session.send(self._request_bad_format(session, f"Action: {name}"))
            return
        result = handler(session, action)
        if result is not None:
            await result

    def _security(self, session: Session, name: str, severity: str) -> Headers:
        """01: SuccessfulAuth carries AccountID before SessionID and UsingPassword before
        SessionTV; RequestBadFormat carries RequestType before SessionTV and AccountID last."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())
        peer = session.writer.get_extra_info("peername") or ("127.0.0.1", 0)
        where = [
            ("SessionID", f"0x{0x7F1A98000000 + session.id:x}"),
            ("LocalAddress", f"IPV4/TCP/{self.host}/{self.port}"),
            ("RemoteAddress", f"IPV4/TCP/{peer[0]}/{peer[1]}"),
        ]
        head = [("EventTV", now), ("Severity", severity), ("Service", "AMI"), ("EventVersion", "1")]
        account = ("AccountID", self.username)
        if name == "SuccessfulAuth":
            fields = [*head, account, *where, ("UsingPassword", "0"), ("SessionTV", now)]
        else:
            fields = [
                *head,
                *where,
                ("RequestType", session.bad_request),
                ("SessionTV", now),
                account,
            ]
        return sc.event(name, "security,all", *fields)

    def _request_bad_format(self, session: Session, request: str) -> Headers:
        session.bad_request = request
        return self._security(session, "RequestBadFormat", "Error")

    def _list(
        self, session: Session, action: Action, message: str, items: list[Headers], complete: str
    ) -> None:
        """01/04 list shape: Success + EventList start + "… will follow", one event per item
        carrying the ActionID, then ``…Complete``. ``truncate_lists`` cuts it off."""
        session.reply("Success", action, ("EventList", "start"), ("Message", message))
        if self.truncate_lists is not None:
            for item in items[: self.truncate_lists]:
                session.send(item)
            session.abort_after_flush()
            return
        for item in items:
            session.send(item)
        session.send(sc.list_complete(complete, action.action_id, len(items)))

    # -- actions --------------------------------------------------------------------------------

    async def _login(self, session: Session, action: Action) -> None:
        if action.get("Username") != self.username or action.get("Secret") != self.secret:
            await asyncio.sleep(self.auth_fail_delay)  # 01: ~1 s, then the server hangs up
            session.reply("Error", action, ("Message", "Authentication failed"))
            session.close_after_flush()
            return
        await asyncio.sleep(self.login_delay)
        mask = (action.get("Events") or "on").strip().lower()
        if mask in ("on", "off"):
            session.events = mask
        else:
            session.events = frozenset(c.strip() for c in mask.split(","))
        session.logged_in = True
        self.logins += 1
        session.reply("Success", action, ("Message", "Authentication accepted"))
        uptime = str(int(time.time() - self._started))
        booted = sc.event(
            "FullyBooted",
            "system,all",
            ("Uptime", uptime),
            ("LastReload", uptime),
            ("Status", "Fully Booted"),
        )
        if session.wants(booted):
            session.send(booted)
        # The security event goes to every session that reads security, not only this one (06).
        self._emit([self._security(session, "SuccessfulAuth", "Informational")])

    def _logoff(self, session: Session, action: Action) -> None:
        session.reply("Goodbye", action, ("Message", "Thanks for all the fish."))
        session.close_after_flush()

    def _ping(self, session: Session, action: Action) -> None:
        session.reply("Success", action, ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}"))

    def _events(self, session: Session, action: Action) -> None:
        mask = (action.get("EventMask") or "").lower()
        if mask not in ("on", "off"):
            session.reply("Error", action, ("Message", "Invalid event mask"))
            return
        session.events = mask
        session.reply("Success", action, ("Events", mask.capitalize()))

    async def _command(self, session: Session, action: Action) -> None:
        command = " ".join((action.get("Command") or "").split())
        if command in ("core restart now", "core stop gracefully"):
            # 06: the asking session gets no Response and no Shutdown event, just EOF.
            await self.shutdown(restart=command.startswith("core restart"), origin=session)
            return
        if command == "core show version":
            output = "Asterisk 22.10.1 built by root @ vm on a x86_64 running Linux on 2026-11-22 20:33:56 UTC"
            session.reply(
                "Success", action, ("Message", "Command output follows"), ("Output", output)
            )
            return
        prefix = " ".join(command.split()[:2])
        output = f"No such command '{command}' (type 'core show help {prefix}' for other possible commands)"
        session.reply("Error", action, ("Message", "Command output follows"), ("Output", output))

    def _core_settings(self, session: Session, action: Action) -> None:
        session.reply(
            "Success",
            action,
            ("AMIversion", "11.0.0"),
            ("AsteriskVersion", "22.10.1"),
            ("SystemName", ""),
            ("CoreMaxCalls", "0"),
            ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""),
            ("CoreRunGroup", ""),
            ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "No"),
            ("CoreCDRenabled", "Yes"),
            ("CoreHTTPenabled", "No"),
            ("SoundsSearchCustomDir", "No"),
        )

    def _core_status(self, session: Session, action: Action) -> None:
        started = time.localtime(self._started)
        session.reply(
            "Success",
            action,
            ("CoreStartupDate", time.strftime("%Y-%m-%d", started)),
            ("CoreStartupTime", time.strftime("%H:%M:%S", started)),
            ("CoreReloadDate", time.strftime("%Y-%m-%d", started)),
            ("CoreReloadTime", time.strftime("%H:%M:%S", started)),
            ("CoreCurrentCalls", str(len(self.channels))),
            ("CoreProcessedCalls", str(self._channel_seq)),
        )

    async def _originate(self, session: Session, action: Action) -> None:
        requested = action.get("Channel")
        if not requested:
            session.reply("Error", action, ("Message", "Channel not specified"))  # 01
            return
        tech, _, rest = requested.partition("/")
        number, _, endpoint = rest.partition("@")
        if tech.upper() != "PJSIP" or not number or not endpoint:
            # 01: an unknown technology fails at once. Local/… (02c) is not modelled here.
            session.reply("Error", action, ("Message", "Originate failed"))
            return
        ch = self._new_channel(action, requested, number, endpoint)
        outcome = self.outcomes.get(number, self.default_outcome)
        timeout = int(action.get("Timeout") or 30000) / 1000
        if (action.get("Async") or "").lower() in ("true", "yes", "1", "on"):
            session.reply("Success", action, ("Message", "Originate successfully queued"))
            self._call_tasks[ch.name] = self._spawn(self._run_call(ch, outcome, timeout))
            return
        # 02e/02f: a sync Originate blocks this session (no events, no responses) until the call
        # is answered or fails, then the Response comes first; there is no OriginateResponse.
        ch.action_id = None
        session.hold()
        answered = await self._run_call(ch, outcome, timeout, sync=True)
        if answered:
            session.release(
                response("Success", action.action_id, ("Message", "Originate successfully queued"))
            )
        else:
            session.release(response("Error", action.action_id, ("Message", "Originate failed")))

    def _new_channel(
        self, action: Action, requested: str, number: str, endpoint: str
    ) -> sc.Channel:
        self._channel_seq += 1
        given = action.get("ChannelId")
        if given:
            uniqueid = given
        else:
            self._uniqueid_seq += 1
            uniqueid = f"{int(self._started)}.{self._uniqueid_seq}"
        ch = sc.Channel(
            name=f"PJSIP/{endpoint}-{self._channel_seq - 1:08x}",
            uniqueid=uniqueid,
            requested=requested,
            dial_string=f"{number}@{endpoint}",
            action_id=action.action_id,
            channel_id_given=bool(given),
        )
        if action.get("Context"):
            ch.target_context = action.get("Context")
            ch.target_exten = action.get("Exten") or "s"
            ch.target_priority = int(action.get("Priority") or 1)
        else:
            ch.application = action.get("Application") or ""
            ch.app_data = action.get("Data") or ""
        if caller := action.get("CallerID"):
            match = re.fullmatch(r'\s*"?([^"<]*)"?\s*<([^>]*)>\s*', caller)
            name, number = match.groups() if match else ("", caller)
            ch.originate_caller = (name.strip(), number.strip())
        for variable in action.get_all("Variable"):
            name, _, value = variable.partition("=")
            ch.variables[name] = value
        self.channels[ch.name] = ch
        return ch

    async def _run_call(
        self, ch: sc.Channel, outcome: sc.Outcome, timeout: float, *, sync: bool = False
    ) -> bool:
        def emit(events: list[Headers]) -> None:
            if sync:
                events = [e for e in events if e[0] != ("Event", "OriginateResponse")]
            self._emit(events)

        emit(sc.dial_start(ch))
        await asyncio.sleep(0)
        match outcome:
            case sc.Answer():
                emit(sc.ringing(ch))
                await asyncio.sleep(outcome.ring_for)
                emit(sc.answered(ch, outcome.originate_response))
                if not sync:
                    for hook in self.answer_hooks:
                        hook(ch)
                if outcome.hangup_after is not None:
                    await asyncio.sleep(outcome.hangup_after)
                    if ch.alive and ch.bridge is None:
                        ending = sc.dialplan_hangup if ch.target_context else sc.application_ended
                        emit(ending(ch))
                return True
            case sc.Reject():
                emit(sc.rejected(ch, outcome))
            case sc.NoAnswer():
                emit(sc.ringing(ch))
                ring = outcome.ring_for
                await asyncio.sleep(timeout * self.time_scale if ring is None else ring)
                emit(sc.no_answer(ch))
            case sc.FarEndDown():
                wait = outcome.wait_for
                await asyncio.sleep(timeout * self.time_scale if wait is None else wait)
                emit(sc.far_end_down(ch))
        return False

    def _channel_or_error(
        self, session: Session, action: Action, header: str = "Channel"
    ) -> sc.Channel | None:
        ch = self.find_channel(action.get(header) or "")
        if ch is None:
            session.reply("Error", action, ("Message", "No such channel"))  # 01
        return ch

    def _hangup(self, session: Session, action: Action) -> None:
        ch = self._channel_or_error(session, action)
        if ch is None:
            return
        cause = int(action.get("Cause") or 16)
        session.reply("Success", action, ("Message", "Channel Hungup"))  # 04
        if ch.bridge is not None:
            self._emit(sc.bridged_hangup(ch, cause, remote=False))
        elif ch.state != 6:
            self._emit(sc.ringing_cancelled(ch, cause))
        else:
            self._emit(sc.hangup_action(ch, cause))

    def _redirect(self, session: Session, action: Action) -> None:
        """04: ``Redirect successful``; the channel goes on in the new context and stays up."""
        ch = self._channel_or_error(session, action)
        if ch is None:
            return
        session.reply("Success", action, ("Message", "Redirect successful"))
        ch.context = action.get("Context") or ch.context
        ch.exten = action.get("Exten") or ch.exten
        ch.priority = int(action.get("Priority") or 1)

    def _bridge(self, session: Session, action: Action) -> None:
        a = self._lookup(action.get("Channel1") or "", prefix=True)
        b = self._lookup(action.get("Channel2") or "", prefix=True)
        if a is None or b is None:
            # Not captured; the wording is Asterisk's own (features.c).
            which, name = (
                ("Channel1", action.get("Channel1"))
                if a is None
                else ("Channel2", action.get("Channel2"))
            )
            session.reply("Error", action, ("Message", f"{which} does not exist: {name}"))
            return
        session.reply("Success", action, ("Message", "Channels have been bridged"))  # 04
        bridge = sc.Bridge(str(uuid.uuid4()))
        self.bridges[bridge.uniqueid] = bridge
        self._emit(sc.bridged(bridge, a, b))

    def _getvar(self, session: Session, action: Action) -> None:
        name = action.get("Variable") or ""
        value = ""
        if action.get("Channel"):
            ch = self._channel_or_error(session, action)
            if ch is None:
                return
            value = ch.get_var(name) or ""
        session.reply("Success", action, ("Variable", name), ("Value", value))  # 04

    def _setvar(self, session: Session, action: Action) -> None:
        ch = self._channel_or_error(session, action)
        if ch is None:
            return
        name, value = action.get("Variable") or "", action.get("Value") or ""
        ch.variables[name] = value
        session.reply("Success", action, ("Message", "Variable Set"))  # 04
        self._emit([sc.varset(ch, name, value)])

    def _core_show_channels(self, session: Session, action: Action) -> None:
        items = [sc.core_show_channel(ch, action.action_id) for ch in self.channels.values()]
        self._list(session, action, "Channels will follow", items, "CoreShowChannelsComplete")

    def _status(self, session: Session, action: Action) -> None:
        channels = list(self.channels.values())
        if action.get("Channel"):
            ch = self._channel_or_error(session, action)
            if ch is None:
                return
            channels = [ch]
        variables = [v.strip() for v in (action.get("Variables") or "").split(",") if v.strip()]
        items = [sc.status_item(ch, action.action_id, variables) for ch in channels]
        self._list(session, action, "Channel status will follow", items, "StatusComplete")

    def _bridge_list(self, session: Session, action: Action) -> None:
        head = [("ActionID", action.action_id)] if action.action_id else []
        items = [
            [("Event", "BridgeListItem"), *head, *sc.bridge_fields(b, "simple_bridge")]
            for b in self.bridges.values()
            if b.members
        ]
        self._list(session, action, "Bridge listing will follow", items, "BridgeListComplete")
