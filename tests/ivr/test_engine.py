"""The flow engine's pure step, node by node: no database, no Redis, no clock of its own (the
time a business-hours condition reads is passed in, so no test depends on the hour)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ivr.engine import (
    Bridge,
    CallerHangup,
    CallStarted,
    Digits,
    Gather,
    Hangup,
    Input,
    NoInput,
    Play,
    Record,
    Recorded,
    Resume,
    Say,
    Session,
    Transfer,
    TransferVerdict,
    Webhook,
    WebhookAnswer,
    step,
)
from ivr.flow import Flow, check_graph
from tests.ivr.conftest import main_menu

NY = ZoneInfo("America/New_York")
WED_NOON = datetime(2026, 6, 10, 12, 0, tzinfo=NY)  # a Wednesday, open
WED_NIGHT = datetime(2026, 6, 10, 22, 0, tzinfo=NY)
SAT_NOON = datetime(2026, 6, 13, 12, 0, tzinfo=NY)


def flow(doc: dict[str, Any]) -> Flow:
    parsed = Flow.model_validate({"name": "t"} | doc)
    assert check_graph(parsed) == []
    return parsed


def new_session() -> Session:
    return Session(
        id="s1",
        tenant_id="00000000-0000-0000-0000-000000000001",
        flow_id="f1",
        flow_name="t",
        version=1,
        caller="+14155550123",
        called="+14155550100",
        transport="test",
        started_at=WED_NOON.isoformat(),
    )


def run(f: Flow, inputs: list[Input], now: datetime = WED_NOON) -> tuple[list[list[Any]], Session]:
    """CallStarted, then each input; the commands of each step and the last session."""
    s = new_session()
    out = []
    for event in [CallStarted(), *inputs]:
        commands, s, _ = step(f, s, event, now)
        out.append(commands)
    return out, s


def test_say_then_hangup():
    f = flow({"start": "a", "nodes": {"a": {"say": "Hello {{who}}.", "then": "hangup"}}})
    (cmds,), s = run(f, [])
    assert cmds == [Say("Hello ."), Hangup("hangup")]
    assert s.ended == "hangup" and s.waiting is None


def test_play_set_and_the_end_of_the_flow():
    f = flow(
        {
            "start": "a",
            "nodes": {
                "a": {"set": {"who": "Ada", "n": 2}, "next": "b"},
                "b": {"play": "https://a.example/hold.wav", "loop": 2, "next": "c"},
                "c": {"say": {"text": "Bye {{who}}", "voice": "alice", "language": "en-US"}},
            },
        }
    )
    (cmds,), s = run(f, [])
    assert cmds == [
        Play("https://a.example/hold.wav", 2),
        Say("Bye Ada", "alice", "en-US"),
        Hangup("flow_end"),
    ]
    assert s.variables == {"who": "Ada", "n": 2}
    assert [e.get("node") for e in s.transcript] == ["a", "b", "c", "c"]


def test_gather_match_retries_invalid_and_no_input():
    f = flow(main_menu())
    # "9" is invalid → the invalid branch (menu again, retry 1); "" is silence (retry 2);
    # "1" matches → billing (a webhook: the step waits for its answer).
    steps, s = run(f, [Digits("9"), NoInput(), Digits("1")])
    assert steps[0][0] == Say("Thanks for calling Acme.")
    assert isinstance(steps[0][1], Gather) and steps[0][1].digits == 1
    assert [type(c) for c in steps[1]] == [Gather]
    assert [type(c) for c in steps[2]] == [Gather]
    assert isinstance(steps[3][0], Webhook) and steps[3][0].payload["digits"] == "1"
    assert s.node == "billing" and s.waiting == "webhook" and s.retries == {}
    inputs = [e for e in s.transcript if "input" in e]
    assert [(e["input"], e["result"], e["branch"]) for e in inputs] == [
        ("9", "invalid", "menu"),
        ("", "no_input", "menu"),
        ("1", "match", "billing"),
    ]


def test_gather_retries_spent_take_no_input():
    f = flow(main_menu())
    steps, s = run(f, [NoInput(), Digits("7"), NoInput()])  # retries = 2: the third miss
    assert steps[-1] == [Say("Goodbye."), Hangup("hangup")]
    assert s.ended == "hangup"
    last = [e for e in s.transcript if "input" in e][-1]
    assert last["exhausted"] is True and last["branch"] == "goodbye"


def test_gather_without_no_input_branch_hangs_up_and_finish_key_and_variable():
    f = flow(
        {
            "start": "acct",
            "nodes": {
                "acct": {
                    "gather": {"say": "Account?", "retries": 0, "variable": "account"},
                    "next": "thanks",
                },
                "thanks": {"say": "Account {{account}}."},
            },
        }
    )
    steps, s = run(f, [Digits("1234#")])
    assert steps[1] == [Say("Account 1234."), Hangup("flow_end")]
    assert s.variables["account"] == "1234"
    _, s = run(f, [NoInput()])
    assert s.ended == "no_input"


def test_record_stores_the_recording_and_no_input_branch():
    f = flow(
        {
            "start": "vm",
            "nodes": {
                "vm": {
                    "record": {"say": "Leave a message.", "max_length": 30},
                    "next": "ok",
                    "no_input": "none",
                },
                "ok": {"say": "Got it."},
                "none": {"say": "Nothing heard."},
            },
        }
    )
    steps, s = run(f, [Recorded("sandbox://r/1", 4.0)])
    assert steps[0] == [Record((Say("Leave a message."),), 30, True, "#", 5)]
    assert steps[1][0] == Say("Got it.")
    assert s.recordings == ({"node": "vm", "url": "sandbox://r/1", "duration": 4.0},)
    assert s.variables["recording_url"] == "sandbox://r/1"
    steps, _ = run(f, [NoInput()])
    assert steps[1][0] == Say("Nothing heard.")


def test_webhook_answer_sets_variables_and_names_the_next_node_error_goes_on_error():
    doc = {
        "start": "hook",
        "nodes": {
            "hook": {
                "webhook": {"url": "https://a.example/h"},
                "next": "a",
                "on_error": "err",
                "branches": ["b"],
            },
            "a": {"say": "A {{balance}}"},
            "b": {"say": "B {{balance}}"},
            "err": {"say": "Sorry.", "next": "err2"},
            "err2": {"say": "Really."},
        },
    }
    f = flow(doc)
    steps, s = run(f, [WebhookAnswer(True, {"set": {"balance": 12}, "next": "b"})])
    assert steps[1][0] == Say("B 12") and s.variables["balance"] == 12
    steps, _ = run(f, [WebhookAnswer(True, {})])
    assert steps[1][0] == Say("A ")
    steps, _ = run(f, [WebhookAnswer(False, error="timeout")])
    assert steps[1][0] == Say("Sorry.")
    for bad in ({"next": "nowhere"}, {"next": "err2"}, {"set": [1]}):  # → on_error
        steps, _ = run(f, [WebhookAnswer(True, bad)])
        assert steps[1][0] == Say("Sorry."), bad


def test_condition_business_hours_on_the_given_clock():
    f = flow(
        {
            "start": "is_open",
            "nodes": {
                "is_open": {
                    "condition": {
                        "business_hours": {
                            "time_zone": "America/New_York",
                            "open": "09:00",
                            "close": "17:00",
                            "holidays": ["2026-12-25"],
                        }
                    },
                    "true": "open",
                    "false": "closed",
                },
                "open": {"say": "We are open."},
                "closed": {"say": "We are closed."},
            },
        }
    )
    assert run(f, [], WED_NOON)[0][0][0] == Say("We are open.")
    assert run(f, [], WED_NOON.astimezone(UTC))[0][0][0] == Say("We are open.")
    assert run(f, [], WED_NIGHT)[0][0][0] == Say("We are closed.")
    assert run(f, [], SAT_NOON)[0][0][0] == Say("We are closed.")
    xmas = datetime(2026, 12, 25, 12, 0, tzinfo=NY)  # a Friday, a holiday
    assert run(f, [], xmas)[0][0][0] == Say("We are closed.")


def test_condition_variable_tests():
    def verdict(test: dict, variables: dict) -> bool:
        f = flow(
            {
                "start": "s",
                "nodes": {
                    "s": {"set": variables or {"_": 0}, "next": "c"},
                    "c": {"condition": {"test": test}, "true": "y", "false": "n"},
                    "y": {"say": "yes"},
                    "n": {"say": "no"},
                },
            }
        )
        return run(f, [])[0][0][0] == Say("yes")

    assert verdict({"var": "tier", "eq": "gold"}, {"tier": "gold"})
    assert not verdict({"var": "tier", "eq": "gold"}, {"tier": "silver"})
    assert verdict({"var": "tier", "ne": "gold"}, {"tier": "silver"})
    assert verdict({"var": "n", "eq": 1}, {"n": "1"})  # digits are strings
    assert verdict({"var": "tier", "in": ["gold", "vip"]}, {"tier": "vip"})
    assert verdict({"var": "balance", "gt": 10}, {"balance": 12.5})
    assert not verdict({"var": "balance", "lt": 10}, {"balance": "abc"})
    assert verdict({"var": "tier", "exists": False}, {})
    assert verdict({"var": "tier", "exists": True}, {"tier": "x"})


def test_transfer_refused_takes_the_fallback_and_agent_and_bridge_end_the_ivr():
    f = flow(
        {
            "start": "xfer",
            "fallback": "sorry",
            "nodes": {
                "xfer": {"transfer": {"to": "+12125550143"}},
                "sorry": {"say": "No one can take your call.", "next": "bot"},
                "bot": {"agent": {"system_prompt": "Help."}},
            },
        }
    )
    steps, s = run(f, [TransferVerdict("refused", "dnc")])
    assert steps[0] == [Transfer("+12125550143", "+14155550100", 30, "transactional")]
    assert steps[1] == [
        Say("No one can take your call."),
        Bridge("agent", {"system_prompt": "Help."}),
    ]
    assert s.ended == "agent"
    _, s = run(f, [TransferVerdict("transferred")])
    assert s.ended == "transferred"
    g = flow({"start": "b", "nodes": {"b": {"bridge_to": "sip:agent@ultravox"}}})
    (cmds,), s = run(g, [])
    assert cmds == [Bridge("sip", {"uri": "sip:agent@ultravox"})] and s.ended == "bridged"


def test_transfer_refused_without_fallback_hangs_up_never_bypasses():
    f = flow({"start": "x", "nodes": {"x": {"transfer": {"to": "+12125550143"}}}})
    steps, s = run(f, [TransferVerdict("refused", "dnc")])
    assert steps[1] == [Hangup("transfer_refused")]
    assert s.ended == "transfer_refused"


def test_hangup_node_caller_hangup_and_inputs_after_the_end():
    f = flow(main_menu())
    _, s = run(f, [CallerHangup()])
    assert s.ended == "caller_hangup"
    commands, after, _ = step(f, s, Digits("1"), WED_NOON)
    assert commands == [] and after.ended == "caller_hangup"  # nothing happens after the end
    h = flow({"start": "h", "nodes": {"h": {"hangup": True}}})
    (cmds,), s = run(h, [])
    assert cmds == [Hangup("hangup")]


def test_an_input_the_node_does_not_wait_for_is_ignored_and_the_step_is_deterministic():
    f = flow(main_menu())
    s = new_session()
    _, s, _ = step(f, s, CallStarted(), WED_NOON)
    commands, s2, notes = step(f, s, WebhookAnswer(True, {}), WED_NOON)
    assert commands == [] and s2.node == "menu" and s2.waiting == "gather"
    assert notes[0]["ignored"] == "WebhookAnswer"
    assert step(f, s, Digits("2"), WED_NOON) == step(f, s, Digits("2"), WED_NOON)
    assert Session.from_json(s.to_json()) == s


def test_resume_asks_the_waiting_node_again_without_counting_a_miss():
    f = flow(main_menu())
    _, s = run(f, [Digits("9")])  # one miss so far
    commands, after, notes = step(f, s, Resume("w2"), WED_NOON)
    assert [type(c) for c in commands] == [Gather] and after.retries == {"menu": 1}
    assert notes[0] == {"resumed": "w2", "node": "menu"} and after.waiting == "gather"
    commands, after, _ = step(f, after, Digits("2"), WED_NOON)
    assert after.ended == "agent"
