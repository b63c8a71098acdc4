"""The AsyncAGI codec against the real transcripts (tests/amisim/captures/05a, 05b, 05e, 05g):
the Env of AsyncAGIStart, the Result of each AsyncAGIExec, and the command lines we render
having the shape of the commands Asterisk accepted there."""

from __future__ import annotations

import json
import pathlib
import re
from datetime import UTC, datetime

from ivr.agi import AgiConfig, gather_input, parse_env, parse_result, quote, render
from ivr.engine import CallerHangup, CallStarted, Digits, Gather, NoInput, Session, step
from ivr.flow import Flow
from tests.ivr.conftest import main_menu

CAPTURES = pathlib.Path(__file__).resolve().parents[1] / "amisim" / "captures"


def messages(stem: str, direction: str) -> list[dict[str, str]]:
    """The AMI messages of one direction of a capture, each as {header: value}."""
    data = "".join(
        chunk["bytes"]
        for line in (CAPTURES / f"{stem}.raw.jsonl").read_text().splitlines()
        if (chunk := json.loads(line))["dir"] == direction
    )
    if direction == "S->C":
        data = data.split("\r\n", 1)[1]  # the banner line
    out = []
    for block in data.split("\r\n\r\n"):
        headers = dict(
            line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
            for line in block.split("\r\n")
            if line
        )
        if headers:
            out.append(headers)
    return out


def results(stem: str) -> dict[str, str]:
    """CommandID → the Command the client sent and the Result Asterisk answered."""
    sent = {m["CommandID"]: m["Command"] for m in messages(stem, "C->S") if "CommandID" in m}
    return {
        sent[m["CommandId"]]: m["Result"]
        for m in messages(stem, "S->C")
        if m.get("Event") == "AsyncAGIExec" and m.get("CommandId") in sent
    }


def test_env_of_async_agi_start():
    (start,) = [
        m
        for m in messages("05g_inbound_asyncagi_dtmf", "S->C")
        if m.get("Event") == "AsyncAGIStart"
    ]
    env = parse_env(start["Env"])
    assert env["agi_channel"] == start["Channel"] == "PJSIP/carrier-0000001e"
    assert env["agi_callerid"] == "15550001111" and env["agi_dnid"] == "7001"
    assert env["agi_uniqueid"] == start["Uniqueid"] and env["agi_request"] == "async"


def test_results_as_asterisk_sent_them():
    got = results("05a_inbound_asyncagi")
    var = parse_result(got["GET VARIABLE CALLERID(num)"])
    assert (var.code, var.result, var.data) == (200, "1", "sipp")
    stream = parse_result(got['STREAM FILE beep ""'])
    assert stream.ok and stream.extras == {"endpos": "3520"}
    timeout = parse_result(got["GET DATA beep 1500 4"])
    assert (timeout.result, timeout.data) == ("", "timeout")
    assert gather_input(timeout) == NoInput()
    unknown = parse_result(got["NO SUCH AGI COMMAND"])
    assert unknown.code == 510 and not unknown.ok

    digits = parse_result(results("05g_inbound_asyncagi_dtmf")["GET DATA beep 5000 3"])
    assert gather_input(digits) == Digits("12")  # the caller keyed 1 2 #
    gone = parse_result(results("05b_inbound_asyncagi_caller_hangup")["GET DATA beep 10000 4"])
    assert gather_input(gone) == CallerHangup("caller_hangup")  # hung up mid-gather
    missing = parse_result(
        results("05e_inbound_asyncagi_missing_sound")['STREAM FILE no-such-sound-file ""']
    )
    assert missing.result == "-1" and missing.extras == {"endpos": "0"} and not missing.ok


def test_rendered_commands_have_the_shape_asterisk_accepted_and_drive_the_engine():
    flow = Flow.model_validate(main_menu())
    session = Session(
        id="s1",
        tenant_id="00000000-0000-0000-0000-000000000001",
        flow_id="f1",
        flow_name="main-menu",
        version=1,
        caller="+15550001111",
        called="7001",
        transport="asterisk",
        started_at="2026-06-10T12:00:00+00:00",
    )
    now = datetime(2026, 6, 10, 12, tzinfo=UTC)
    commands, session, _ = step(flow, session, CallStarted(), now)
    lines = [line for cmd in commands for line in render(cmd, AgiConfig(), session_id="s1")]
    assert lines[0] == 'EXEC Festival "Thanks for calling Acme."'
    assert lines[-1] == "GET DATA silence/1 5000 1"
    captured = [
        m["Command"] for m in messages("05g_inbound_asyncagi_dtmf", "C->S") if "Command" in m
    ]
    shape = re.compile(r"^GET DATA \S+ \d+ \d+$")
    assert shape.match(captured[0]) and shape.match(lines[-1])
    assert isinstance(commands[-1], Gather)
    # Asterisk's answer in 05g (1 2 #) is the caller's entry: digits=1 keeps "1" → billing
    answer = gather_input(
        parse_result(results("05g_inbound_asyncagi_dtmf")["GET DATA beep 5000 3"])
    )
    commands, session, _ = step(flow, session, answer, now)
    assert session.node == "billing"
    assert quote('say "hi"\n') == '"say \\"hi\\" "'
