"""Classify an inbound SMS as opt-out, opt-in, help or nothing.

47 CFR 64.1200(a)(10) (FCC 24-24, CG Docket 02-278) lets a consumer revoke
consent "by any reasonable means"; replying "stop", "quit", "end", "revoke",
"opt out", "cancel" or "unsubscribe" is per se reasonable, and other wording
counts when a reasonable person would read it as a revocation. Missing a
revocation is a TCPA violation; honouring a false one costs one subscriber
(who gets the one confirmation text and can reply START). So this errs toward
honouring, with a few deliberate, documented exceptions.

Decisions:

* `opt_out`: the whole message (trimmed, case-folded, accents and inner
  whitespace normalised) is exactly a keyword: the seven in the rule plus
  STOPALL (carrier practice) plus configured extras ("no mas", ...).
* `probable_opt_out` (honoured as an opt-out too, flagged for review):
  - a keyword with punctuation or emoji around it: "stop.", "Stop!", "opt-out";
  - STOP, STOPALL, UNSUBSCRIBE, REVOKE, OPT OUT (or an extra) anywhere in the
    text: "please stop", "unsubscribe me", "STOP HELP";
  - explicit phrases: "stop texting me", "don't text me", "remove me",
    "take me off your list", "leave me alone", "wrong number", "no more texts";
  - END, CANCEL, QUIT in a short message of filler words ("cancel please",
    "end now") or aimed at the messages ("cancel these texts");
  - a one-word message one typo away from STOP, STOPALL, UNSUBSCRIBE, CANCEL
    or REVOKE ("Stopp", "STPO", "unsubscibe"), for words of four letters or
    more; for STOP only an extra, missing or swapped letter counts, since a
    changed letter mostly makes another word ("shop", "step").
* Not an opt-out (returns `none`), on purpose:
  - a keyword or phrase negated right before it: "don't stop the music",
    "never stop", "don't stop texting me";
  - "stop" in place idioms: "stop by", "stop in", "stop over", "bus stop",
    "pit stop", "one stop", "non-stop";
  - END / CANCEL / QUIT about something else: "cancel my appointment",
    "see you at the end of the day". These are answers to a conversation
    (often a transactional one), not revocations; they go to a human/agent.
* `opt_in`: exactly START, UNSTOP or YES (punctuation allowed). Never guessed
  from longer text: a wrong opt-in is the costly mistake.
* `help`: exactly HELP or INFO (punctuation allowed).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from guardrails.rules import OptOutRules

OPT_OUT_KEYWORDS: tuple[str, ...] = (
    "stop",
    "quit",
    "end",
    "revoke",
    "opt out",
    "cancel",
    "unsubscribe",
    "stopall",
)
OPT_IN_KEYWORDS: tuple[str, ...] = ("start", "unstop", "yes")
HELP_KEYWORDS: tuple[str, ...] = ("help", "info")

# Keywords that mean "stop messaging me" wherever they appear.
_STRONG: frozenset[str] = frozenset(
    {"stop", "stopall", "unsubscribe", "unsub", "revoke", "opt out", "optout"}
)
# Keywords with common other meanings ("end of the day", "cancel my order").
_WEAK: frozenset[str] = frozenset({"end", "cancel", "quit"})
_FILLER: frozenset[str] = frozenset(
    "please pls plz now it this that all thanks thank you u me them these those right asap "
    "ok okay already immediately".split()
)
_MESSAGES = (
    r"(?:text|texts|txt|txts|texting|message|messages|messaging|msg|msgs|sms|alerts?|"
    r"notifications?|subscriptions?|updates|reminders|spam|spamming)"
)
_PHRASES = re.compile(
    "|".join(
        (
            rf"\b(?:stop|quit|cease)\s+(?:sending\s+(?:me\s+)?)?{_MESSAGES}\b",
            r"\b(?:stop|quit|cease)\s+(?:contacting|calling|bothering|harassing)\b",
            rf"\b(?:do\s+not|don\s?t|dont|never|no\s+more)\s+(?:(?!stop|quit|cease|end)\w+\s+)?"
            rf"(?:{_MESSAGES}|"
            r"text|contact|call|message|send)\b",
            rf"\bno\s+more\s+{_MESSAGES}\b",
            r"\b(?:remove|delete|drop|take)\s+(?:me|my\s+number|this\s+number|us)\b",
            r"\bopt\s+me\s+out\b",
            r"\bleave\s+me\s+alone\b",
            r"\bwrong\s+(?:number|person|phone)\b",
            rf"\b(?:end|cancel|quit)\s+(?:(?:the|these|those|all|my|your|this)\s+)*{_MESSAGES}\b",
        )
    )
)
_NEGATIONS: frozenset[str] = frozenset({"dont", "never", "not", "non", "no", "without"})
_NEGATED_CONTRACTIONS: frozenset[str] = frozenset(
    {"don", "won", "can", "didn", "doesn", "shouldn", "wouldn", "couldn", "isn", "aren"}
)
_STOP_IDIOM_NEXT: frozenset[str] = frozenset({"by", "in", "over"})
_STOP_IDIOM_PREV: frozenset[str] = frozenset({"bus", "pit", "one", "truck", "full", "rest", "non"})

# Whole-message typos of these ("Stopp", "STPO", "unsubscibe") are honoured too.
_TYPO_TARGETS: tuple[str, ...] = ("stop", "stopall", "unsubscribe", "cancel", "revoke")

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)
_TOKEN = re.compile(r"[^\W_]+")


class Intent(StrEnum):
    """What an inbound message asks for."""

    OPT_OUT = "opt_out"
    PROBABLE_OPT_OUT = "probable_opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    NONE = "none"


@dataclass(frozen=True)
class KeywordMatch:
    """The classification, the keyword or phrase behind it, and why."""

    intent: Intent
    keyword: str | None
    reason: str

    @property
    def is_opt_out(self) -> bool:
        """True for both certain and probable opt-outs: both must be honoured."""
        return self.intent in (Intent.OPT_OUT, Intent.PROBABLE_OPT_OUT)


def _fold(text: str) -> str:
    """NFKC, drop zero-width characters and accents, case-fold."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _normalise_keywords(words: Iterable[str]) -> frozenset[str]:
    return frozenset(" ".join(_TOKEN.findall(_fold(w))) for w in words if _TOKEN.search(w))


def _negated(tokens: list[str], i: int) -> bool:
    prev = tokens[i - 1] if i >= 1 else ""
    prev2 = tokens[i - 2] if i >= 2 else ""
    if prev in _NEGATIONS:
        return True
    if prev == "t" and prev2 in _NEGATED_CONTRACTIONS:  # "don't" tokenises as "don", "t"
        return True
    return prev2 == "do" and prev == "not"


def _stop_idiom(tokens: list[str], i: int) -> bool:
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    prev = tokens[i - 1] if i >= 1 else ""
    return nxt in _STOP_IDIOM_NEXT or prev in _STOP_IDIOM_PREV


def _find_keyword(tokens: list[str], keywords: frozenset[str]) -> tuple[str, int] | None:
    """First non-negated occurrence of a (possibly multi-word) keyword."""
    by_len = sorted({len(k.split()) for k in keywords}, reverse=True)
    for i in range(len(tokens)):
        for n in by_len:
            candidate = " ".join(tokens[i : i + n])
            if candidate in keywords and not _negated(tokens, i):
                if candidate == "stop" and _stop_idiom(tokens, i):
                    continue
                return candidate, i
    return None


def classify(
    text: str,
    *,
    extra_opt_out: Iterable[str] = (),
    extra_opt_in: Iterable[str] = (),
    extra_help: Iterable[str] = (),
) -> KeywordMatch:
    """Classify one inbound message body (see the module docstring for the policy)."""
    folded = _fold(text)
    exact = " ".join(folded.split())
    tokens = _TOKEN.findall(folded)
    loose = " ".join(tokens)

    extras = _normalise_keywords(extra_opt_out)
    opt_out = _normalise_keywords(OPT_OUT_KEYWORDS) | extras
    opt_in = _normalise_keywords((*OPT_IN_KEYWORDS, *extra_opt_in))
    help_words = _normalise_keywords((*HELP_KEYWORDS, *extra_help))

    if not tokens:
        return KeywordMatch(Intent.NONE, None, "no words")
    if exact in opt_out:
        return KeywordMatch(Intent.OPT_OUT, exact, "whole message is an opt-out keyword")
    if exact in opt_in:
        return KeywordMatch(Intent.OPT_IN, exact, "whole message is an opt-in keyword")
    if exact in help_words:
        return KeywordMatch(Intent.HELP, exact, "whole message is a help keyword")

    if loose in opt_out or loose.replace(" ", "") in opt_out | {"optout"}:
        return KeywordMatch(
            Intent.PROBABLE_OPT_OUT, loose, "opt-out keyword with punctuation or symbols"
        )
    if loose in opt_in:
        return KeywordMatch(Intent.OPT_IN, loose, "opt-in keyword with punctuation or symbols")
    if loose in help_words:
        return KeywordMatch(Intent.HELP, loose, "help keyword with punctuation or symbols")

    strong = _find_keyword(tokens, _STRONG | extras)
    if strong is not None:
        return KeywordMatch(
            Intent.PROBABLE_OPT_OUT, strong[0], f"opt-out keyword {strong[0]!r} in the message"
        )
    for phrase in _PHRASES.finditer(loose):
        if not _negated(tokens, loose.count(" ", 0, phrase.start())):
            return KeywordMatch(
                Intent.PROBABLE_OPT_OUT, phrase.group(), f"revocation phrase {phrase.group()!r}"
            )
    weak = _find_keyword(tokens, _WEAK)
    if weak is not None and len(tokens) <= 3:
        others = tokens[: weak[1]] + tokens[weak[1] + 1 :]
        if all(t in _FILLER for t in others):
            return KeywordMatch(
                Intent.PROBABLE_OPT_OUT,
                weak[0],
                f"short message built on opt-out keyword {weak[0]!r}",
            )
    if len(tokens) == 1 and len(tokens[0]) >= 4:
        for keyword in _TYPO_TARGETS:
            # Substituting a letter in a 4-letter word mostly makes another word
            # ("shop", "step", "atop"): only inserts, deletes and swaps count there.
            if _within_one_edit(tokens[0], keyword, substitutions=len(keyword) > 4):
                return KeywordMatch(
                    Intent.PROBABLE_OPT_OUT,
                    keyword,
                    f"{tokens[0]!r} looks like a typo of {keyword!r}",
                )
    return KeywordMatch(Intent.NONE, None, "no opt-out, opt-in or help keyword")


def _within_one_edit(word: str, target: str, *, substitutions: bool = True) -> bool:
    """Optimal-string-alignment distance <= 1 (one insert, delete, substitute or swap)."""
    if word == target:
        return True
    if abs(len(word) - len(target)) > 1:
        return False
    if len(word) == len(target):
        diffs = [i for i, (a, b) in enumerate(zip(word, target, strict=True)) if a != b]
        if len(diffs) == 1:
            return substitutions
        return (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and word[diffs[0]] == target[diffs[1]]
            and word[diffs[1]] == target[diffs[0]]
        )
    short, long = (word, target) if len(word) < len(target) else (target, word)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


def classify_with_rules(text: str, rules: OptOutRules) -> KeywordMatch:
    """`classify` with the extra keywords from the rules file's `[optout]` section."""
    return classify(
        text,
        extra_opt_out=rules.extra_opt_out,
        extra_opt_in=rules.extra_opt_in,
        extra_help=rules.extra_help,
    )
