"""CAN-SPAM for marketing email: an unsubscribe link and a postal address in every part.

15 U.S.C. 7704(a)(3) and (a)(5): a commercial email must offer a working way to opt out and
carry the sender's valid physical postal address. Trunkline adds the RFC 8058 headers
(List-Unsubscribe, List-Unsubscribe-Post) itself, but a header is not shown by every mail
client, so the body must carry a link too: our own (`{{ unsubscribe_url }}`, filled in per
message) or the sender's preference centre (a link whose address or text says unsubscribe /
opt out). Each part the message has (text, HTML) is checked, since a client shows one of them.

Transactional email (receipts, codes, account notices) is exempt, as the Act exempts
"transactional or relationship messages". Pure: everything is in the arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

from guardrails.verdicts import Allow, Deny, DenyCode

RULE_UNSUBSCRIBE = "content.email.unsubscribe_link"
RULE_POSTAL = "content.email.postal_address"
_URL = re.compile(r"(?:https?://|mailto:)[^\s<>\"')\]]+", re.IGNORECASE)


@dataclass(frozen=True)
class EmailContentRules:
    """`unsubscribe_words`: what a link's address or text must say; `postal_patterns`: regular
    expressions, any of which matching the visible text counts as a postal address."""

    unsubscribe_words: tuple[str, ...]
    postal_patterns: tuple[str, ...]

    @property
    def words(self) -> re.Pattern[str]:
        return _compiled("|".join(self.unsubscribe_words))

    @property
    def postal(self) -> re.Pattern[str]:
        return _compiled("|".join(f"(?:{p})" for p in self.postal_patterns))


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


class _Html(HTMLParser):
    """The visible text of an HTML part and its links (href, the text inside the anchor)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.links: list[tuple[str, list[str]]] = []
        self._open: list[tuple[str, list[str]]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "a":
            self._open.append((dict(attrs).get("href") or "", []))
        elif tag in ("br", "p", "div", "tr", "li"):
            self.text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag == "a" and self._open:
            self.links.append(self._open.pop())

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        for _, inner in self._open:
            inner.append(data)


def _html_facts(html: str) -> tuple[str, list[tuple[str, str]]]:
    parser = _Html()
    parser.feed(html)
    parser.close()
    links = [(href, " ".join(inner)) for href, inner in parser.links + parser._open]
    return "".join(parser.text), links


def _text_links(text: str) -> list[tuple[str, str]]:
    """Each URL of a text part with the line it stands on (its 'anchor text')."""
    out = []
    for line in text.splitlines():
        out.extend((m.group(), line) for m in _URL.finditer(line))
    return out


def _has_unsubscribe(
    links: list[tuple[str, str]], ours: str | None, words: re.Pattern[str]
) -> bool:
    for href, label in links:
        if not _URL.match(href.strip()):
            continue  # javascript:, #anchors, empty: not a way out
        if ours and href.strip() == ours:
            return True
        if words.search(href) or words.search(label):
            return True
    return False


def check_email_content(
    *,
    text: str | None,
    html: str | None,
    purpose: str,
    unsubscribe_url: str | None,
    rules: EmailContentRules,
) -> Allow | Deny:
    """Deny marketing email lacking an unsubscribe link or a postal address in a part."""
    inputs: dict[str, Any] = {
        "check": "content",
        "channel": "email",
        "purpose": purpose,
        "parts": [p for p, v in (("text", text), ("html", html)) if v],
    }
    if purpose != "marketing":
        inputs["skipped"] = "transactional email is exempt from CAN-SPAM's requirements"
        return Allow(inputs=inputs)
    parts: list[tuple[str, str, list[tuple[str, str]]]] = []
    if text:
        parts.append(("text", text, _text_links(text)))
    if html:
        visible, links = _html_facts(html)
        parts.append(("html", visible, links))
    for name, visible, links in parts:
        if not _has_unsubscribe(links, unsubscribe_url, rules.words):
            inputs["part"] = name
            return Deny(
                code=DenyCode.UNSUBSCRIBE_LINK_REQUIRED,
                reason=f"marketing email without an unsubscribe link in its {name} part "
                "(CAN-SPAM, 15 U.S.C. 7704(a)(3)): add {{ unsubscribe_url }} or a link to "
                "your own opt-out page",
                rule=RULE_UNSUBSCRIBE,
                inputs=inputs,
            )
        if rules.postal.search(visible) is None:
            inputs["part"] = name
            return Deny(
                code=DenyCode.POSTAL_ADDRESS_REQUIRED,
                reason=f"marketing email without the sender's postal address in its {name} "
                "part (CAN-SPAM, 15 U.S.C. 7704(a)(5)(A)(iii))",
                rule=RULE_POSTAL,
                inputs=inputs,
            )
    return Allow(inputs=inputs)
