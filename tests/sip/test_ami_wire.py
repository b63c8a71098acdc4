"""The test AMI server against the real captures: replay what the client sent in
tests/amisim/captures/*.raw.jsonl (copied from ../shared/asterisk-ami/) over a raw socket and compare what comes back, message by
message, with what Asterisk 22 sent (values that change per run are left out)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.amisim import (
    BUSY,
    DECLINE,
    FAR_END_DOWN,
    NO_ANSWER,
    NOT_FOUND,
    UNAVAILABLE,
    AMISimServer,
    Answer,
    Outcome,
)
from tests.amisim.framing import BANNER

# In the repository, so a clone runs every test: a missing file fails, it never skips.
CAPTURES = Path(__file__).resolve().parents[1] / "amisim" / "captures"

# Values that differ from run to run (clocks, session pointers, ports, dialplan priorities).
VOLATILE = {
    "timestamp", "eventtv", "sessiontv", "sessionid", "localaddress", "remoteaddress", "uptime",
    "lastreload", "corestartupdate", "corestartuptime", "corereloaddate", "corereloadtime",
    "priority", "starttime", "answertime", "endtime", "duration", "billableseconds",
}  # fmt: skip

Message = list[tuple[str, str]]


def split_messages(data: bytes) -> list[Message]:
    text = data.decode("latin-1")
    return [
        [
            tuple(line.split(": ", 1)) if ": " in line else (line.rstrip(":"), "")
            for line in chunk.split("\r\n")
        ]  # type: ignore[misc]
        for chunk in text.split("\r\n\r\n")
        if chunk.strip()
    ]


def normalize(message: Message) -> Message:
    return [
        (k, "*" if k.lower() in VOLATILE else re.sub(r"carrier-[0-9a-f]{8}", "carrier-N", v))
        for k, v in message
    ]


def capture(name: str, conn: str) -> tuple[list[bytes], list[Message]]:
    """What the client sent on ``conn`` (TCP chunks) and every message Asterisk sent back."""
    sent: list[bytes] = []
    received = b""
    for line in (CAPTURES / f"{name}.raw.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["conn"] != conn:
            continue
        data = row["bytes"].encode("latin-1")
        if row["dir"] == "C->S":
            sent.append(data)
        else:
            received += data
    assert received.startswith(BANNER)
    return sent, split_messages(received[len(BANNER) :])


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer(auth_fail_delay=0.05) as server:
        yield server


async def converse(
    ami: AMISimServer, sent: list[bytes], done: Callable[[list[Message]], bool]
) -> list[Message]:
    """Send the chunks one by one, then read until ``done(messages)`` or EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ami.port)
    try:
        assert await reader.readexactly(len(BANNER)) == BANNER
        for chunk in sent:
            writer.write(chunk)
            await writer.drain()
        data = b""
        async with asyncio.timeout(2):
            while not done(split_messages(data)) and (more := await reader.read(65536)):
                data += more
        return split_messages(data)
    finally:
        writer.close()


@pytest.mark.parametrize("conn", ["conn1", "conn2", "conn3"])
async def test_login_ping_basic_actions_as_captured(ami: AMISimServer, conn: str) -> None:
    """01: action before login, bad secret, unknown user (each ends in EOF), then a good login
    and Ping, list actions, unknown/missing action, CoreSettings, CoreStatus, Command, errors,
    Logoff (EOF)."""
    sent, expected = capture("01_login_ping_basic_actions", conn)
    got = await converse(ami, sent, lambda got: False)  # each of these ends in EOF
    assert [normalize(m) for m in got] == [normalize(m) for m in expected]


OUTCOME_CAPTURES: list[tuple[str, Outcome]] = [
    ("02a_originate_answered_context", Answer(hangup_after=0.01, originate_response="after_up")),
    (
        "02b_originate_answered_application",
        Answer(hangup_after=0.01, originate_response="before_up"),
    ),
    ("03a_originate_busy_486", BUSY),
    ("03b_originate_notfound_404", NOT_FOUND),
    ("03c_originate_unavailable_503", UNAVAILABLE),
    ("03d_originate_decline_603", DECLINE),
    ("03e_originate_noanswer_timeout", NO_ANSWER),
    ("03f_originate_far_end_down", FAR_END_DOWN),
]
CALL_EVENTS = {
    "Newchannel", "NewCallerid", "NewConnectedLine", "DialBegin", "DialState", "Newstate",
    "DialEnd", "OriginateResponse", "HangupRequest", "SoftHangupRequest", "Hangup", "Cdr",
}  # fmt: skip


def call_events(messages: list[Message]) -> list[Message]:
    """The call-tracking view: channel lifecycle events and the Originate's own VarSets
    (dialplan Newexten, device state and RTP QoS VarSets left out)."""
    out = []
    for message in messages:
        name = dict(message).get("Event", "")
        variable = dict(message).get("Variable", "")
        if name in CALL_EVENTS or (name == "VarSet" and variable.lstrip("_").startswith("GW_")):
            out.append(normalize(message))
    return out


@pytest.mark.parametrize(
    ("name", "outcome"), OUTCOME_CAPTURES, ids=[n for n, _ in OUTCOME_CAPTURES]
)
async def test_direct_originate_events_as_captured(
    ami: AMISimServer, name: str, outcome: Outcome
) -> None:
    sent, expected = capture(name, "conn1")
    login, originate = (
        sent[0],
        sent[1],
    )  # the direct PJSIP call; later Local/… calls are not modelled
    number = re.search(rb"Channel: PJSIP/(\d+)@", originate)
    assert number is not None
    ami.outcomes[number.group(1).decode()] = outcome
    # everything Asterisk sent until the client's next action
    before_next = expected[: _index_after_call(expected)]
    want = call_events(before_next)
    got = await converse(ami, [login, originate], lambda got: _index_after_call(got) <= len(got))
    assert call_events(got) == want


def _index_after_call(messages: list[Message]) -> int:
    """Messages up to and including the first call's last Hangup/OriginateResponse
    (``len(messages) + 1`` while either is still missing)."""
    seen_hangup = seen_response = -1
    for i, message in enumerate(messages):
        event = dict(message).get("Event")
        if event == "Hangup" and seen_hangup < 0:
            seen_hangup = i
        if event == "OriginateResponse" and seen_response < 0:
            seen_response = i
        if seen_hangup >= 0 and seen_response >= 0:
            return max(seen_hangup, seen_response) + 1
    return len(messages) + 1


# --- framing details -------------------------------------------------------------------------


async def login(ami: AMISimServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", ami.port)
    writer.write(b"Action: Login\r\nUsername: gateway\r\nSecret: secret\r\n\r\n")
    data = b""
    async with asyncio.timeout(2):
        while b"SuccessfulAuth" not in data:
            data += await reader.read(65536)
    return reader, writer, data


async def test_banner_has_no_blank_line_and_login_may_come_first(ami: AMISimServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ami.port)
    writer.write(b"Action: Ping\r\nActionID: early\r\n\r\n")  # before reading the banner
    async with asyncio.timeout(2):
        data = await reader.readuntil(b"Permission denied\r\n\r\n")
    writer.close()
    assert (
        data == BANNER + b"Response: Error\r\nActionID: early\r\nMessage: Permission denied\r\n\r\n"
    )


async def test_login_reply_and_events_leave_in_one_write(ami: AMISimServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ami.port)
    assert await reader.readexactly(len(BANNER)) == BANNER
    writer.write(b"Action: Login\r\nUsername: gateway\r\nSecret: secret\r\n\r\n")
    chunk = await asyncio.wait_for(reader.read(65536), 2)  # one TCP read
    writer.close()
    assert [dict(m).get("Event") or dict(m).get("Response") for m in split_messages(chunk)] == [
        "Success",
        "FullyBooted",
        "SuccessfulAuth",
    ]


async def test_bad_secret_is_answered_late_then_closed() -> None:
    async with AMISimServer(auth_fail_delay=0.2) as ami:
        reader, writer = await asyncio.open_connection("127.0.0.1", ami.port)
        started = time.monotonic()
        writer.write(b"Action: Login\r\nActionID: x\r\nUsername: gateway\r\nSecret: no\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 2)  # until EOF
        writer.close()
    assert time.monotonic() - started >= 0.2
    assert data.endswith(
        b"Response: Error\r\nActionID: x\r\nMessage: Authentication failed\r\n\r\n"
    )


async def test_security_event_reaches_every_session(ami: AMISimServer) -> None:
    reader, writer, _ = await login(ami)
    _, other, _ = await login(ami)
    async with asyncio.timeout(2):
        data = await reader.readuntil(b"\r\n\r\n")
    assert data.startswith(b"Event: SuccessfulAuth\r\n")
    writer.close()
    other.close()


async def test_sync_originate_blocks_the_session(ami: AMISimServer) -> None:
    """02f: the session gets nothing until the sync Originate resolves, then the Response
    first, then the held events; a Ping sent meanwhile is answered after."""
    ami.outcomes["5551005"] = NO_ANSWER
    reader, writer, _ = await login(ami)
    writer.write(
        b"Action: Originate\r\nActionID: sync\r\nChannel: PJSIP/5551005@carrier\r\n"
        b"Application: Wait\r\nData: 1\r\nTimeout: 50000\r\n\r\n"  # rings 50 ms here
        b"Action: Ping\r\nActionID: ping\r\n\r\n"
    )
    data = b""
    async with asyncio.timeout(2):
        while b"ActionID: ping" not in data:
            data += await reader.read(65536)
    writer.close()
    messages = split_messages(data)
    names = [dict(m).get("Response") or dict(m).get("Event") for m in messages]
    assert names[0] == "Error" and dict(messages[0])["Message"] == "Originate failed"
    assert "OriginateResponse" not in names  # no OriginateResponse for a sync Originate
    assert names.index("Hangup") < len(names) - 1 and dict(messages[-1]).get("ActionID") == "ping"


async def test_events_action_turns_events_off_and_on(ami: AMISimServer) -> None:
    reader, writer, _ = await login(ami)
    writer.write(b"Action: Events\r\nActionID: e\r\nEventMask: off\r\n\r\n")
    assert (
        await reader.readuntil(b"\r\n\r\n")
        == b"Response: Success\r\nActionID: e\r\nEvents: Off\r\n\r\n"
    )
    writer.write(b"Action: Events\r\nActionID: q\r\n\r\n")
    assert b"Invalid event mask" in await reader.readuntil(b"\r\n\r\n")
    writer.close()
