"""Inbound keyword classification (47 CFR 64.1200(a)(10)): err toward honouring revocations."""

from __future__ import annotations

import pytest

from guardrails.optout import Intent, classify, classify_with_rules
from guardrails.rules import load_rules

RULES = load_rules()

CASES: list[tuple[str, Intent]] = [
    # exact keywords (whole trimmed message, any case) -> opt_out
    ("STOP", Intent.OPT_OUT),
    ("stop", Intent.OPT_OUT),
    ("  Stop \n", Intent.OPT_OUT),
    ("QUIT", Intent.OPT_OUT),
    ("End", Intent.OPT_OUT),
    ("REVOKE", Intent.OPT_OUT),
    ("opt out", Intent.OPT_OUT),
    ("OPT  OUT", Intent.OPT_OUT),
    ("Cancel", Intent.OPT_OUT),
    ("UNSUBSCRIBE", Intent.OPT_OUT),
    ("STOPALL", Intent.OPT_OUT),
    ("ＳＴＯＰ", Intent.OPT_OUT),  # full-width
    ("stop\u200b", Intent.OPT_OUT),  # zero-width space
    # near misses -> probable_opt_out (honoured)
    ("stop.", Intent.PROBABLE_OPT_OUT),
    ("Stop!", Intent.PROBABLE_OPT_OUT),
    ("STOP!!! 🛑", Intent.PROBABLE_OPT_OUT),
    ("'stop'", Intent.PROBABLE_OPT_OUT),
    ("opt-out", Intent.PROBABLE_OPT_OUT),
    ("optout", Intent.PROBABLE_OPT_OUT),
    ("please stop texting me", Intent.PROBABLE_OPT_OUT),
    ("Stop texting me please", Intent.PROBABLE_OPT_OUT),
    ("unsubscribe me", Intent.PROBABLE_OPT_OUT),
    ("I want to unsubscribe from this", Intent.PROBABLE_OPT_OUT),
    ("STOP HELP", Intent.PROBABLE_OPT_OUT),
    ("yes stop", Intent.PROBABLE_OPT_OUT),
    ("don't text me", Intent.PROBABLE_OPT_OUT),
    ("Don’t ever text this number again", Intent.PROBABLE_OPT_OUT),
    ("do not contact me", Intent.PROBABLE_OPT_OUT),
    ("remove me from your list", Intent.PROBABLE_OPT_OUT),
    ("take me off this list", Intent.PROBABLE_OPT_OUT),
    ("opt me out", Intent.PROBABLE_OPT_OUT),
    ("leave me alone", Intent.PROBABLE_OPT_OUT),
    ("wrong number", Intent.PROBABLE_OPT_OUT),
    ("no more texts", Intent.PROBABLE_OPT_OUT),
    ("cancel please", Intent.PROBABLE_OPT_OUT),
    ("END NOW", Intent.PROBABLE_OPT_OUT),
    ("quit it", Intent.PROBABLE_OPT_OUT),
    ("cancel these texts", Intent.PROBABLE_OPT_OUT),
    ("Stopp", Intent.PROBABLE_OPT_OUT),  # typos of a whole-message keyword
    ("STPO", Intent.PROBABLE_OPT_OUT),
    ("unsubscibe", Intent.PROBABLE_OPT_OUT),
    ("no mas", Intent.OPT_OUT),  # configured extra
    ("No más, gracias", Intent.PROBABLE_OPT_OUT),
    # deliberately NOT opt-outs
    ("don't stop the music", Intent.NONE),
    ("Don’t stop texting me!", Intent.NONE),
    ("never stop believing", Intent.NONE),
    ("I'll stop by tomorrow", Intent.NONE),
    ("Can you stop in at 5?", Intent.NONE),
    ("meet me at the bus stop", Intent.NONE),
    ("non-stop flights only", Intent.NONE),
    ("cancel my appointment", Intent.NONE),
    ("see you at the end of the day", Intent.NONE),
    ("I want to quit smoking", Intent.NONE),
    ("shop", Intent.NONE),  # one substituted letter from STOP makes another word
    ("step", Intent.NONE),
    ("hello", Intent.NONE),
    ("", Intent.NONE),
    ("👍", Intent.NONE),
    # opt-in / help
    ("START", Intent.OPT_IN),
    ("unstop", Intent.OPT_IN),
    ("Yes", Intent.OPT_IN),
    ("yes!", Intent.OPT_IN),
    ("HELP", Intent.HELP),
    ("info?", Intent.HELP),
    ("yes please send more", Intent.NONE),  # opt-in is never guessed
]


@pytest.mark.parametrize(("text", "intent"), CASES, ids=[repr(t) for t, _ in CASES])
def test_classification(text: str, intent: Intent) -> None:
    result = classify_with_rules(text, RULES.optout)
    assert result.intent == intent, result
    assert result.is_opt_out is (intent in (Intent.OPT_OUT, Intent.PROBABLE_OPT_OUT))


def test_configurable_extra_keywords() -> None:
    assert classify("ARRET").intent == Intent.NONE
    assert classify("ARRÊT", extra_opt_out=["arret"]).intent == Intent.OPT_OUT
    assert classify("subscribe", extra_opt_in=["subscribe"]).intent == Intent.OPT_IN
    assert classify("ayuda", extra_help=["ayuda"]).intent == Intent.HELP


def test_result_names_keyword_and_reason() -> None:
    result = classify("Please stop texting me")
    assert result.keyword == "stop"
    assert "stop" in result.reason
