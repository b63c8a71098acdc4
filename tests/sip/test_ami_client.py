"""sip.ami.AMIClient over a real socket against the test AMI server: connection lifecycle.

Each test names the panoramisk 1.4 sharp edge it guards against, where there is one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sip.ami import (
    AMIActionError,
    AMIAuthError,
    AMIClient,
    AMIClosed,
    AMIConnectError,
    AMIConnectionLost,
    AMIKeepaliveTimeout,
    AMIListIncomplete,
    AMINotConnected,
    AMIShutdown,
    AMITimeout,
)
from tests.amisim import AMISimServer
from tests.amisim.recorder import EventRecorder

FAST = {
    "ping_interval": 5.0,
    "action_timeout": 1.0,
    "connect_timeout": 1.0,
    "reconnect_backoff_initial": 0.01,
    "reconnect_backoff_max": 0.05,
}


def client_for(ami: AMISimServer, **overrides: float) -> AMIClient:
    options = {**FAST, **overrides}
    return AMIClient("127.0.0.1", ami.port, "gateway", "secret", **options)  # type: ignore[arg-type]


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
async def client(ami: AMISimServer) -> AsyncIterator[AMIClient]:
    client = client_for(ami)
    await client.start()
    yield client
    await client.close()


class Hooks:
    """Records connected/disconnected hook calls in order."""

    def __init__(self, client: AMIClient) -> None:
        self.calls: list[str] = []
        self.reasons: list[AMIConnectionLost] = []
        self._changed = asyncio.Event()
        client.on_connected(self._connected)
        client.on_disconnected(self._disconnected)

    def _connected(self) -> None:
        self.calls.append("connected")
        self._changed.set()

    def _disconnected(self, reason: AMIConnectionLost) -> None:
        self.calls.append("disconnected")
        self.reasons.append(reason)
        self._changed.set()

    async def wait_calls(self, *expected: str, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while tuple(self.calls) != expected:
                self._changed.clear()
                await self._changed.wait()


# --- login -----------------------------------------------------------------------------------


async def test_start_returns_only_once_logged_in() -> None:
    # panoramisk: connect() returns as soon as TCP is up; Login is answered later.
    async with AMISimServer(login_delay=0.2) as ami:
        client = client_for(ami)
        await client.start()
        try:
            assert client.is_connected and client.connected.is_set()
            assert client.version == "11.0.0"
            login = ami.actions("Login")[0]
            assert login.get("Events") == "on"  # never off: no OriginateResponse otherwise
            pong = await client.ping()
            assert pong.ping == "Pong"
        finally:
            await client.close()


async def test_bad_secret_raises_auth_error_and_gives_up(ami: AMISimServer) -> None:
    client = AMIClient("127.0.0.1", ami.port, "gateway", "wrong", **FAST)  # type: ignore[arg-type]
    with pytest.raises(AMIAuthError):
        await client.start()
    assert ami.connections == 1  # no retry loop behind the caller's back
    assert not client.is_connected
    with pytest.raises(AMINotConnected):
        await client.ping()


async def test_unreachable_asterisk_raises_connect_error(ami: AMISimServer) -> None:
    await ami.refuse_connections()
    client = client_for(ami)
    with pytest.raises(AMIConnectError):
        await client.start()


# --- actions ---------------------------------------------------------------------------------


async def test_error_response_raises_with_the_response(client: AMIClient) -> None:
    with pytest.raises(AMIActionError) as raised:
        await client.hangup("PJSIP/nosuch-00000000")
    assert raised.value.response is not None
    assert raised.value.response.message == "No such channel"
    unchecked = await client.send({"Action": "Hangup", "Channel": "PJSIP/x-0"}, check=False)
    assert unchecked.response == "Error"


async def test_action_without_answer_times_out_and_session_survives(
    ami: AMISimServer, client: AMIClient
) -> None:
    ami.muted.add("getvar")
    started = time.monotonic()
    with pytest.raises(AMITimeout):
        await client.send({"Action": "Getvar", "Variable": "X"}, timeout=0.1)
    assert time.monotonic() - started < 0.5
    assert (await client.ping()).ping == "Pong"


async def test_command_output_comes_from_output_headers(client: AMIClient) -> None:
    assert (await client.command("core show version"))[0].startswith("Asterisk 22.10.1")


async def test_refuses_actions_that_would_break_the_session(
    ami: AMISimServer, client: AMIClient
) -> None:
    with pytest.raises(ValueError, match="sync Originate"):
        await client.send({"Action": "Originate", "Channel": "PJSIP/1@carrier", "Exten": "s"})
    with pytest.raises(ValueError, match="Events: off"):
        await client.send({"Action": "Events", "EventMask": "off"})
    with pytest.raises(ValueError, match="CR, LF"):
        await client.send({"Action": "Setvar", "Variable": "X", "Value": "a\r\nAction: Logoff"})
    assert not ami.actions("Originate") and not ami.actions("Events") and not ami.actions("Setvar")


# --- events ----------------------------------------------------------------------------------


async def test_originate_response_reaches_event_handlers(client: AMIClient) -> None:
    # panoramisk: an event carrying a pending ActionID is consumed by that action's future,
    # so handlers never see the OriginateResponse of an Async Originate.
    events = EventRecorder()
    client.on_event("OriginateResponse", events)
    queued = await client.originate("PJSIP/5551000@carrier", context="answered", channel_id="gw-1")
    assert queued.response.message == "Originate successfully queued"
    response = await events.wait_for("OriginateResponse")
    assert response["ActionID"] == queued.action_id
    assert response["Uniqueid"] == "gw-1"
    assert (response["Response"], response["Reason"]) == ("Success", "4")


async def test_utf8_character_split_across_reads_arrives_whole(
    ami: AMISimServer, client: AMIClient
) -> None:
    # panoramisk decodes each TCP read with errors="ignore": a split "é" vanished.
    events = EventRecorder()
    client.on_event("NewCallerid", events)
    name = "José Ñandú 日本"
    headers = [("Event", "NewCallerid"), ("Privilege", "call,all"), ("CallerIDName", name)]
    wire = b"Event: NewCallerid\r\nPrivilege: call,all\r\nCallerIDName: Jos"
    ami.emit(headers, split_at=len(wire) + 1)  # between the two bytes of "é"
    ami.emit(headers, split_at=len(wire) + len("é Ñandú 日".encode()) - 1)  # inside "日"
    received = await events.wait_count("NewCallerid", 2)
    assert [e["CallerIDName"] for e in received] == [name, name]


async def test_handlers_by_pattern_and_unregister(client: AMIClient) -> None:
    dial = EventRecorder()
    everything = EventRecorder()
    remove = client.on_event("dial*", dial)
    client.on_event("*", everything)
    await client.originate("PJSIP/5551000@carrier", application="Wait", data="1")
    await everything.wait_for("OriginateResponse")
    await dial.wait_for("DialEnd")
    assert {e["Event"] for e in dial.events} == {"DialBegin", "DialState", "DialEnd"}
    remove()
    await client.originate("PJSIP/5551001@carrier", application="Wait", data="1")
    await everything.wait_for("DialBegin", DestChannel="PJSIP/carrier-00000001")
    await everything.wait_for("OriginateResponse", Channel="PJSIP/carrier-00000001")
    assert all(e["DestChannel"] == "PJSIP/carrier-00000000" for e in dial.events)


async def test_a_failing_handler_does_not_stop_dispatch(client: AMIClient) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("handler bug")

    events = EventRecorder()
    client.on_event("Newchannel", broken)
    client.on_event("*", events)
    await client.originate("PJSIP/5551000@carrier", context="answered")
    await events.wait_for("OriginateResponse")


# --- lists -----------------------------------------------------------------------------------


async def test_core_show_channels_lists_live_channels(client: AMIClient) -> None:
    events = EventRecorder()
    client.on_event("*", events)
    assert await client.core_show_channels() == []
    for n in ("gw-a", "gw-b"):
        await client.originate("PJSIP/5552000@carrier", context="answered-long", channel_id=n)
        await events.wait_for("OriginateResponse", Uniqueid=n)
    channels = await client.core_show_channels()
    assert sorted(c["Uniqueid"] for c in channels) == ["gw-a", "gw-b"]
    assert all(c["ChannelStateDesc"] == "Up" for c in channels)
    assert not events.named("CoreShowChannel")  # the items belong to the caller, not handlers


async def test_list_cut_off_by_dropped_connection_fails(
    ami: AMISimServer, client: AMIClient
) -> None:
    events = EventRecorder()
    client.on_event("OriginateResponse", events)
    for n in ("gw-a", "gw-b"):
        await client.originate("PJSIP/5552000@carrier", context="answered-long", channel_id=n)
        await events.wait_for("OriginateResponse", Uniqueid=n)
    ami.truncate_lists = 1  # Response + 1 item, then the TCP connection is torn down
    started = time.monotonic()
    with pytest.raises(AMIConnectionLost):
        await client.core_show_channels(timeout=5)
    assert time.monotonic() - started < 1  # not the 5 s timeout


async def test_list_short_of_its_item_count_fails(ami: AMISimServer, client: AMIClient) -> None:
    ami.muted.add("coreshowchannels")  # we fake the answer by hand below
    task = asyncio.create_task(client.core_show_channels())
    action = await ami.wait_for_action("CoreShowChannels")
    ami.emit(
        [("Response", "Success"), ("ActionID", action.action_id or ""), ("EventList", "start")]
    )
    ami.emit([("Event", "CoreShowChannelsComplete"), ("ActionID", action.action_id or ""),
              ("EventList", "Complete"), ("ListItems", "2")])  # fmt: skip
    with pytest.raises(AMIListIncomplete):
        await task


# --- connection loss -------------------------------------------------------------------------


async def test_pending_action_fails_promptly_when_connection_drops(
    ami: AMISimServer, client: AMIClient
) -> None:
    # panoramisk: the pending future hangs forever (and is re-sent after reconnect).
    ami.muted.add("getvar")
    task = asyncio.create_task(client.send({"Action": "Getvar", "Variable": "X"}, timeout=5))
    await ami.wait_for_action("Getvar")
    started = time.monotonic()
    await ami.drop_connections()
    with pytest.raises(AMIConnectionLost):
        await task
    assert time.monotonic() - started < 0.5
    await client.wait_connected(timeout=2)
    assert len(ami.actions("Getvar")) == 1  # never replayed on the new session


async def test_send_while_disconnected_fails_at_once(ami: AMISimServer, client: AMIClient) -> None:
    # panoramisk: a future sent while disconnected never resolves.
    hooks = Hooks(client)
    await ami.refuse_connections()
    await ami.drop_connections()
    await hooks.wait_calls("disconnected")
    started = time.monotonic()
    with pytest.raises(AMINotConnected):
        await client.originate("PJSIP/5551000@carrier", context="answered", timeout=5)
    assert time.monotonic() - started < 0.1
    await ami.accept_connections()
    await hooks.wait_calls("disconnected", "connected")


async def test_reconnects_and_logs_in_again_after_drop(ami: AMISimServer) -> None:
    client = client_for(ami)
    hooks = Hooks(client)
    await client.start()
    try:
        await hooks.wait_calls("connected")
        await ami.drop_connections()
        await hooks.wait_calls("connected", "disconnected", "connected")
        assert client.logins == ami.logins == 2
        assert [a.get("Events") for a in ami.actions("Login")] == ["on", "on"]
        assert (await client.ping()).ping == "Pong"
    finally:
        await client.close()
    assert isinstance(hooks.reasons[-1], AMIClosed)


async def test_reconnects_after_asterisk_restart(ami: AMISimServer) -> None:
    client = client_for(ami)
    hooks = Hooks(client)
    events = EventRecorder()
    client.on_event("Shutdown", events)
    await client.start()
    try:
        await hooks.wait_calls("connected")
        started = time.monotonic()
        await ami.shutdown(restart=True, down_for=0.1)  # Shutdown event, EOF, refused 0.1 s
        shutdown = await events.wait_for("Shutdown")
        assert shutdown["Restart"] == "True"
        await hooks.wait_calls("connected", "disconnected", "connected")
        assert isinstance(hooks.reasons[0], AMIShutdown)
        assert time.monotonic() - started >= 0.1  # kept retrying through the refusals
        assert ami.connections == 2
        assert (await client.ping()).ping == "Pong"
    finally:
        await client.close()


async def test_connect_reset_without_banner_is_retried(ami: AMISimServer) -> None:
    # 06: during a restart a connect can succeed and be reset before the banner.
    client = client_for(ami)
    hooks = Hooks(client)
    await client.start()
    try:
        ami.reset_next_connections(2)
        await ami.drop_connections()
        await hooks.wait_calls("connected", "disconnected", "connected")
        assert ami.connections == 4
    finally:
        await client.close()


async def test_keepalive_detects_a_silent_peer(ami: AMISimServer) -> None:
    # panoramisk pings with no timeout: a peer that stops answering is never noticed.
    client = client_for(ami, ping_interval=0.05, ping_timeout=0.1)
    hooks = Hooks(client)
    await client.start()
    try:
        ami.pause()  # TCP stays up, nothing comes back
        await hooks.wait_calls("connected", "disconnected")
        assert isinstance(hooks.reasons[0], AMIKeepaliveTimeout)
        with pytest.raises(AMINotConnected):
            await client.ping()
        ami.resume()
        await hooks.wait_calls("connected", "disconnected", "connected")
        assert (await client.ping()).ping == "Pong"
    finally:
        await client.close()


async def test_close_cancels_a_scheduled_reconnect(ami: AMISimServer) -> None:
    # panoramisk: close() leaves the loop.call_later(reconnect) armed; it connects again later.
    client = client_for(ami, reconnect_backoff_initial=30, reconnect_backoff_max=30)
    hooks = Hooks(client)
    await client.start()
    await ami.drop_connections()
    await hooks.wait_calls("connected", "disconnected")  # now sleeping ~15-30 s before retrying
    async with asyncio.timeout(1):
        await client.close()
    connections = ami.connections
    await asyncio.sleep(0.05)
    assert ami.connections == connections
    assert not client.is_connected
    with pytest.raises(AMINotConnected):
        await client.ping()


async def test_close_fails_pending_actions_and_logs_off(ami: AMISimServer) -> None:
    client = client_for(ami)
    await client.start()
    ami.muted.add("getvar")
    task = asyncio.create_task(client.send({"Action": "Getvar", "Variable": "X"}, timeout=5))
    await ami.wait_for_action("Getvar")
    await client.close()
    with pytest.raises(AMIConnectionLost):
        await task
    assert ami.actions("Logoff")


class SwallowsCancelWhileConnecting(AMIClient):
    """Its connect swallows a cancel and then succeeds, as Python 3.11's wait_for around
    `open_connection` did when close() cancelled it the moment the connection was made."""

    swallowed = 0

    async def _open_session(self):  # type: ignore[no-untyped-def]
        self.connecting.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.swallowed += 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        session = type("Session", (), {"dead": asyncio.Event()})()  # alive: never dies
        return session


async def test_close_returns_when_the_connect_swallowed_its_cancel():
    """A session opened as close() cancels the reconnect would be waited on for good."""
    client = SwallowsCancelWhileConnecting("127.0.0.1", 1, "gateway", "secret", **FAST)  # type: ignore[arg-type]
    client.connecting = asyncio.Event()
    client.start_background()
    await client.connecting.wait()
    closing = asyncio.get_running_loop().create_task(client.close())
    done, _ = await asyncio.wait({closing}, timeout=5)  # not asyncio.timeout: see test_stopping
    assert closing in done, "close() hung on a supervisor that swallowed its cancel"
    assert client.swallowed == 1
