"""Content scanning for SMS and WhatsApp bodies.

Why: US carriers filter (and can suspend a sender for) SHAFT content, public
URL shorteners and marketing without opt-out instructions, and every extra
segment is billed. Catching these before the provider call turns a silent
carrier block into an explicit, auditable Deny naming the rule and the span.

Everything is compiled once per `ContentRules` (all terms of all blocked
categories into one alternation with named groups), so a scan is a handful of
regex passes over the text whatever the size of the term lists.

Matching: case-insensitive; a term matches only as a whole word or phrase
(not inside a longer word: "gun" does not match "begun"); whitespace inside a
term matches any run of whitespace. No Unicode folding or leetspeak handling:
spans are offsets into the text exactly as given.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.core.segments import SegmentCount, count_segments, segment_starts
from guardrails.rules import Channel, ContentRules, Purpose, Rules
from guardrails.verdicts import Allow, Deny, DenyCode

RULE_BLOCKED_TERM = "content.blocked_term"
RULE_SHAFT = "content.shaft"  # + ".<category>"
RULE_URL_SHORTENER = "content.url_shortener"
RULE_OPT_OUT_LANGUAGE = "content.opt_out_language"
RULE_MAX_SEGMENTS = "content.max_segments"

_MAX_REPORTED = 20


@dataclass(frozen=True)
class ContentViolation:
    """One finding. `start`/`end` index into the scanned text (None: no span)."""

    rule: str
    reason: str
    start: int | None = None
    end: int | None = None
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "reason": self.reason,
            "span": None if self.start is None else {"start": self.start, "end": self.end},
            "text": self.text,
        }


_WORD = re.compile(r"\w+")


def _term_pattern(term: str) -> str:
    words = term.strip().split()
    body = r"\s+".join(re.escape(w) for w in words)
    return rf"(?<!\w){body}(?!\w)"


def _alternation(terms: list[str]) -> str:
    # Longest first so "chewing tobacco" wins over "tobacco" at the same spot.
    ordered = sorted(set(terms), key=lambda t: (-len(t), t))
    return "|".join(_term_pattern(t) for t in ordered)


class _TermIndex:
    """Term lists compiled for speed: a dict from a term's first word to a small
    anchored regex, so a scan costs one word-tokenising pass plus a lookup per word instead
    of trying every term at every position (Python's `re` has no trie)."""

    def __init__(self, terms: list[tuple[str, str]]) -> None:
        by_first: dict[str, list[tuple[str, str]]] = {}
        odd: list[tuple[str, str]] = []  # terms not starting with a word character
        for rule, term in terms:
            m = _WORD.match(term.strip())
            (by_first.setdefault(m.group().lower(), []) if m else odd).append((rule, term))
        self._by_first = {key: self._compile(group) for key, group in by_first.items()}
        self._keys = frozenset(self._by_first)
        self._odd = self._compile(odd) if odd else None

    @staticmethod
    def _compile(group: list[tuple[str, str]]) -> tuple[re.Pattern[str], dict[str, str]]:
        rules = sorted({rule for rule, _ in group})
        names = {f"r{i}": rule for i, rule in enumerate(rules)}
        parts = [
            f"(?P<{name}>{_alternation([t for r, t in group if r == rule])})"
            for name, rule in names.items()
        ]
        return re.compile("|".join(parts), re.IGNORECASE), names

    def finditer(self, text: str) -> list[tuple[str, int, int]]:
        hits: list[tuple[str, int, int]] = []
        # Fast exit for the common clean message: one C-level pass and a set test.
        if self._odd is None and self._keys.isdisjoint(map(str.lower, _WORD.findall(text))):
            return hits
        end_of_last = 0
        for word in _WORD.finditer(text):
            if word.start() < end_of_last:
                continue
            entry = self._by_first.get(word.group().lower())
            if entry is None:
                continue
            pattern, names = entry
            m = pattern.match(text, word.start())
            if m:
                hits.append((names[m.lastgroup or ""], m.start(), m.end()))
                end_of_last = m.end()
        if self._odd is not None:
            pattern, names = self._odd
            hits.extend(
                (names[m.lastgroup or ""], m.start(), m.end()) for m in pattern.finditer(text)
            )
            hits.sort(key=lambda h: h[1])
        return hits


class ContentScanner:
    """Compiled form of `ContentRules`; build once, scan many times."""

    def __init__(self, cfg: ContentRules) -> None:
        self.cfg = cfg
        terms: list[tuple[str, str]] = [(RULE_BLOCKED_TERM, t) for t in cfg.blocked_terms]
        lists = dict(cfg.shaft_terms)
        for category in cfg.shaft_blocked:
            terms.extend((f"{RULE_SHAFT}.{category}", t) for t in lists.get(category, ()))
        self._terms = _TermIndex(terms) if terms else None

        self._shortener = None
        # "Does the text hold any shortener domain at all?" as one pass (the same test as
        # `any(d in lowered for d in domains)`), before the exact pattern runs.
        self._shortener_hint = re.compile("|".join(re.escape(d) for d in cfg.url_shorteners))
        if cfg.block_url_shorteners and cfg.url_shorteners:
            domains = "|".join(
                re.escape(d) for d in sorted(cfg.url_shorteners, key=len, reverse=True)
            )
            self._shortener = re.compile(
                rf"(?<![\w.@/-])(?:https?://)?(?:www\.)?(?:{domains})(?![\w-]|\.[a-z0-9])(?:/\S*)?",
                re.IGNORECASE,
            )
        self._opt_out = (
            re.compile("|".join(f"(?:{p})" for p in cfg.opt_out_patterns), re.IGNORECASE)
            if cfg.opt_out_patterns
            else None
        )

    def scan(
        self,
        text: str,
        *,
        channel: Channel,
        purpose: Purpose,
        first_marketing_message: bool = False,
        segment_count: SegmentCount | None = None,
    ) -> list[ContentViolation]:
        """All findings, term hits in text order first, then message-level ones."""
        cfg = self.cfg
        if channel not in cfg.channels:
            return []
        found: list[ContentViolation] = []
        if self._terms is not None:
            for rule, start, end in self._terms.finditer(text):
                what = "blocked term" if rule == RULE_BLOCKED_TERM else rule.rsplit(".", 1)[1]
                hit = text[start:end]
                found.append(ContentViolation(rule, f"{what} content: {hit!r}", start, end, hit))
        lowered = text.lower()
        if self._shortener is not None and self._shortener_hint.search(lowered):
            for m in self._shortener.finditer(text):
                found.append(
                    ContentViolation(
                        RULE_URL_SHORTENER,
                        f"public URL shortener {m.group()!r}; use a branded domain",
                        *m.span(),
                        m.group(),
                    )
                )
        found.sort(key=lambda v: (v.start or 0, v.rule))
        if (
            purpose == "marketing"
            and first_marketing_message
            and cfg.require_opt_out_on_first_marketing
            and channel in cfg.opt_out_channels
            and (self._opt_out is None or self._opt_out.search(text) is None)
        ):
            found.append(
                ContentViolation(
                    RULE_OPT_OUT_LANGUAGE,
                    "first marketing message to this number has no opt-out instructions "
                    "(e.g. 'Reply STOP to unsubscribe')",
                )
            )
        if channel == "sms":
            count = segment_count or count_segments(text)
            if count.segments > cfg.max_segments:
                start = segment_starts(text)[cfg.max_segments]
                found.append(
                    ContentViolation(
                        RULE_MAX_SEGMENTS,
                        f"{count.segments} {count.encoding} segments exceed the limit of "
                        f"{cfg.max_segments}",
                        start,
                        len(text),
                        text[start:],
                    )
                )
        return found

    def check(
        self,
        text: str,
        *,
        channel: Channel,
        purpose: Purpose,
        first_marketing_message: bool = False,
        rules_version: str | None = None,
    ) -> Allow | Deny:
        """Deny on the first finding (all findings are listed in `inputs`)."""
        count = count_segments(text) if channel == "sms" else None
        found = self.scan(
            text,
            channel=channel,
            purpose=purpose,
            first_marketing_message=first_marketing_message,
            segment_count=count,
        )
        inputs: dict[str, Any] = {
            "check": "content",
            "rules_version": rules_version,
            "channel": channel,
            "purpose": purpose,
            "first_marketing_message": first_marketing_message,
            "length": len(text),
        }
        if count is not None:
            inputs["segments"] = count.segments
            inputs["encoding"] = count.encoding
        if not found:
            return Allow(inputs=inputs)
        inputs["violations"] = [v.as_dict() for v in found[:_MAX_REPORTED]]
        inputs["violation_count"] = len(found)
        first = found[0]
        return Deny(
            code=DenyCode.CONTENT_BLOCKED,
            reason=first.reason,
            rule=first.rule,
            inputs=inputs,
        )


@lru_cache(maxsize=32)
def scanner_for(cfg: ContentRules) -> ContentScanner:
    """The compiled scanner for a rules object (cached by identity)."""
    return ContentScanner(cfg)


def check_content(
    text: str,
    *,
    channel: Channel,
    purpose: Purpose,
    rules: Rules,
    first_marketing_message: bool = False,
) -> Allow | Deny:
    """Scan an outbound SMS/WhatsApp body against the `[content]` rules.

    The verdict is a pure function of its arguments, and one body usually goes to many
    numbers (a campaign, a notification): it is computed once per process and copied for
    each caller, whose event it becomes (a scan and segment count were ~10 % of the
    chain's CPU per action)."""
    verdict = _checked(text, channel, purpose, rules, first_marketing_message)
    if isinstance(verdict, Allow):
        return Allow(inputs=dict(verdict.inputs))
    return copy.deepcopy(verdict)


@lru_cache(maxsize=4096)
def _checked(
    text: str, channel: Channel, purpose: Purpose, rules: Rules, first_marketing_message: bool
) -> Allow | Deny:
    return scanner_for(rules.content).check(
        text,
        channel=channel,
        purpose=purpose,
        first_marketing_message=first_marketing_message,
        rules_version=rules.version,
    )
