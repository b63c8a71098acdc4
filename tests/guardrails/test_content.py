"""Content scanning: SHAFT terms, blocked terms, URL shorteners, opt-out language, segments."""

from __future__ import annotations

import copy
import json
import time
import tomllib
from typing import Any

import pytest

from guardrails.content import ContentScanner, check_content, scanner_for
from guardrails.rules import DEFAULT_RULES_PATH, Rules, load_rules, parse_rules
from guardrails.verdicts import Allow, Deny, DenyCode

RULES: Rules = load_rules()
OPT_OUT = " Reply STOP to opt out."


@pytest.mark.parametrize(
    ("text", "rule", "span_text"),
    [
        ("Your order #123 has shipped.", None, None),
        ("Happy hour starts at 5!", "content.shaft.alcohol", "Happy hour"),
        ("HAPPY   HOUR at 5", "content.shaft.alcohol", "HAPPY   HOUR"),
        ("New vape flavours in store", "content.shaft.tobacco", "vape"),
        ("We stock the AR-15 you asked about", "content.shaft.firearms", "AR-15"),
        ("try our chewing tobacco", "content.shaft.tobacco", "chewing tobacco"),
        ("CBD gummies 20% off", "content.shaft.cannabis", "CBD"),
        ("white power rally", "content.shaft.hate", "white power"),
        ("hot nudes near you", "content.shaft.sex", "nudes"),
        # word boundaries: terms inside longer words do not match
        ("The project has begun; see the forum after login", None, None),
        ("Ginger ale and a bus schedule", None, None),
        ("Weeding the garden, then the gunnery museum", None, None),
        # URL shorteners, with or without scheme, any case, path included in the span
        ("Track it: bit.ly/3xYz", "content.url_shortener", "bit.ly/3xYz"),
        ("Track it: https://TinyURL.com/abc?x=1 now", "content.url_shortener",
         "https://TinyURL.com/abc?x=1"),
        ("see www.bit.ly/q", "content.url_shortener", "www.bit.ly/q"),
        ("go to t.co/abc", "content.url_shortener", "t.co/abc"),
        # ... but not look-alikes
        ("mail john@t.co or visit at.com and t.com and mybit.ly", None, None),
        ("https://example.com/bit.ly/x", None, None),
    ],
)  # fmt: skip
def test_terms_and_shorteners(text: str, rule: str | None, span_text: str | None) -> None:
    verdict = check_content(text, channel="sms", purpose="transactional", rules=RULES)
    if rule is None:
        assert isinstance(verdict, Allow), verdict
        return
    assert isinstance(verdict, Deny)
    assert verdict.code == DenyCode.CONTENT_BLOCKED
    assert verdict.rule == rule
    violation = verdict.inputs["violations"][0]
    start, end = violation["span"]["start"], violation["span"]["end"]
    assert text[start:end] == span_text == violation["text"]
    json.dumps(verdict.inputs)


@pytest.mark.parametrize(
    ("text", "first", "purpose", "channel", "allowed"),
    [
        ("Spring sale: 20% off everything.", True, "marketing", "sms", False),
        ("Spring sale: 20% off everything." + OPT_OUT, True, "marketing", "sms", True),
        ("Spring sale! Text STOP to unsubscribe", True, "marketing", "sms", True),
        ("Spring sale! Reply \"STOP\" to end", True, "marketing", "sms", True),
        ("Spring sale! STOP to opt-out", True, "marketing", "sms", True),
        ("Spring sale! Reply END to cancel", True, "marketing", "sms", True),
        ("Spring sale! Please don't stop shopping", True, "marketing", "sms", False),
        ("Spring sale: 20% off everything.", False, "marketing", "sms", True),  # not the first
        ("Your code is 123456", True, "transactional", "sms", True),  # not marketing
        ("Spring sale: 20% off everything.", True, "marketing", "whatsapp", False),
        ("Spring sale: 20% off everything.", True, "marketing", "voice", True),  # not scanned
    ],
)  # fmt: skip
def test_opt_out_language_on_first_marketing_message(
    text: str, first: bool, purpose: str, channel: str, allowed: bool
) -> None:
    verdict = check_content(
        text,
        channel=channel,  # type: ignore[arg-type]
        purpose=purpose,  # type: ignore[arg-type]
        rules=RULES,
        first_marketing_message=first,
    )
    assert isinstance(verdict, Allow) is allowed, verdict
    if not allowed:
        assert isinstance(verdict, Deny)
        assert verdict.rule == "content.opt_out_language"
        assert verdict.inputs["violations"][0]["span"] is None


def test_max_segments_names_the_overflow() -> None:
    limit = RULES.content.max_segments
    fits = "a" * (153 * limit)
    assert isinstance(
        check_content(fits, channel="sms", purpose="transactional", rules=RULES), Allow
    )
    over = fits + "b"
    verdict = check_content(over, channel="sms", purpose="transactional", rules=RULES)
    assert isinstance(verdict, Deny)
    assert verdict.rule == "content.max_segments"
    span = verdict.inputs["violations"][0]["span"]
    assert (span["start"], span["end"]) == (153 * limit, len(over))
    assert verdict.inputs["segments"] == limit + 1
    # UCS-2 messages hit the limit sooner: 67 units per part
    emoji_over = "😀" * (33 * limit + 1)
    verdict = check_content(emoji_over, channel="sms", purpose="transactional", rules=RULES)
    assert isinstance(verdict, Deny) and verdict.inputs["encoding"] == "UCS-2"
    # WhatsApp has no segments
    assert isinstance(check_content(over, channel="whatsapp", purpose="transactional", rules=RULES),
                      Allow)  # fmt: skip


def test_all_violations_listed_first_one_decides() -> None:
    text = "Happy hour! Free beer, see bit.ly/x"
    verdict = check_content(
        text, channel="sms", purpose="marketing", rules=RULES, first_marketing_message=True
    )
    assert isinstance(verdict, Deny)
    rules = [v["rule"] for v in verdict.inputs["violations"]]
    assert rules == [
        "content.shaft.alcohol",
        "content.shaft.alcohol",
        "content.url_shortener",
        "content.opt_out_language",
    ]
    assert verdict.rule == "content.shaft.alcohol"
    assert verdict.inputs["violation_count"] == 4


def _with_content(**changes: Any) -> Rules:
    data = copy.deepcopy(tomllib.loads(DEFAULT_RULES_PATH.read_text()))
    for path, value in changes.items():
        table = data["content"]
        *parents, leaf = path.split("__")
        for p in parents:
            table = table[p]
        table[leaf] = value
    return parse_rules(data)


def test_configurable_blocked_terms_and_categories() -> None:
    rules = _with_content(
        blocked_terms=["acme rival", "$$$", "free money"],
        shaft__blocked=["firearms"],
        url_shorteners__block=False,
    )

    def verdict(text: str) -> Allow | Deny:
        return check_content(text, channel="sms", purpose="transactional", rules=rules)

    denied = verdict("Switch from ACME  Rival today")
    assert isinstance(denied, Deny) and denied.rule == "content.blocked_term"
    assert denied.inputs["violations"][0]["text"] == "ACME  Rival"
    odd = verdict("Win $$$ now")  # a term starting with a non-word character
    assert isinstance(odd, Deny) and odd.inputs["violations"][0]["text"] == "$$$"
    assert isinstance(verdict("Free beer and bit.ly/x"), Allow)  # alcohol, shorteners off
    assert isinstance(verdict("gun show"), Deny)


def test_scanner_is_compiled_once_per_rules() -> None:
    assert scanner_for(RULES.content) is scanner_for(RULES.content)
    assert isinstance(scanner_for(RULES.content), ContentScanner)


def test_scan_is_fast() -> None:
    text = ("Hi Sam, your appointment with Dr. Lee is confirmed for Tue at 10:30. "
            "Reply C to confirm or R to reschedule. ") * 2  # fmt: skip
    scanner = scanner_for(RULES.content)
    started = time.perf_counter()
    for _ in range(2000):
        scanner.check(text, channel="sms", purpose="marketing", first_marketing_message=True)
    per_message = (time.perf_counter() - started) / 2000
    assert per_message < 0.002  # typically ~0.1 ms; generous for slow CI machines
