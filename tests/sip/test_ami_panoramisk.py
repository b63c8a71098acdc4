"""panoramisk 1.4's own ``Manager`` against the test AMI server: proof that the server really
produces the sharp edges that sip.ami works around (a workaround tested against a server that
cannot trigger the bug would prove nothing). If one of these fails after a panoramisk upgrade,
the matching workaround in sip/ami may have become unnecessary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from panoramisk import Manager

from tests.amisim import BUSY, AMISimServer
from tests.amisim.recorder import EventRecorder


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
async def manager(ami: AMISimServer) -> AsyncIterator[Manager]:
    manager = Manager(
        host="127.0.0.1",
        port=ami.port,
        username="gateway",
        secret="secret",
        ping_delay=3600,  # no keepalive traffic in these tests
        reconnect_timeout=0,
        loop=asyncio.get_running_loop(),
    )
    yield manager
    manager.close()


async def logged_in(manager: Manager) -> EventRecorder:
    events = EventRecorder()
    manager.register_event("*", lambda _manager, event: events(event))
    await asyncio.wait_for(manager.connect(), 2)
    assert manager.authenticated_future is not None
    await asyncio.wait_for(manager.authenticated_future, 2)
    return events


async def test_connect_returns_before_login_is_answered(
    ami: AMISimServer, manager: Manager
) -> None:
    ami.login_delay = 0.05
    await asyncio.wait_for(manager.connect(), 2)
    assert manager.authenticated is False
    assert manager.authenticated_future is not None
    response = await asyncio.wait_for(manager.authenticated_future, 2)
    assert response.success


async def test_split_utf8_character_is_lost(ami: AMISimServer, manager: Manager) -> None:
    events = await logged_in(manager)
    prefix = b"Event: NewCallerid\r\nPrivilege: call,all\r\nCallerIDName: Jos"
    ami.emit(
        [("Event", "NewCallerid"), ("Privilege", "call,all"), ("CallerIDName", "José")],
        split_at=len(prefix) + 1,
    )
    event = await events.wait_for("NewCallerid")
    assert event["CallerIDName"] == "Jos"  # the é is gone


async def test_originate_response_never_reaches_handlers(
    ami: AMISimServer, manager: Manager
) -> None:
    ami.outcomes["5550486"] = BUSY
    events = await logged_in(manager)
    action: dict[str, Any] = {
        "Action": "Originate",
        "Channel": "PJSIP/5550486@carrier",
        "Application": "Wait",
        "Data": "1",
        "Async": "true",
    }
    result = await asyncio.wait_for(manager.send_action(action), 2)
    assert [m.get("Event") or m.response for m in result] == ["Success", "OriginateResponse"]
    await events.wait_for("Hangup")
    assert not events.named("OriginateResponse")


async def test_pending_originate_is_replayed_after_reconnect(
    ami: AMISimServer, manager: Manager
) -> None:
    await logged_in(manager)
    ami.muted.add("originate")  # the Originate is in flight when the connection drops
    action = {"Action": "Originate", "Channel": "PJSIP/5551000@carrier", "Async": "true",
              "Application": "Wait", "Data": "1"}  # fmt: skip
    future = manager.send_action(action)
    await ami.wait_for_action("Originate")
    await ami.drop_connections()
    await ami.wait_for_action("Originate", count=2)  # sent again on the new session: dials twice
    assert not future.done()
    assert ami.logins == 2
