"""Load and validate the guardrail rules file (config/guardrails.toml).

The rules are data, not code, so legal changes ship as a reviewed edit with a
version bump. Everything is validated at load time (unknown keys, bad times,
unknown holiday calendars, duplicate area codes, regexes that do not compile)
so that a bad file stops the daemon at start-up instead of failing a send at
2 a.m. The parsed `Rules` is immutable and hashable, so checks can cache
compiled forms per rules object.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, time, timedelta
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers.tzdata import TIMEZONE_DATA

Channel = Literal["voice", "sms", "whatsapp"]
Purpose = Literal["marketing", "transactional"]
CHANNELS: tuple[Channel, ...] = ("voice", "sms", "whatsapp")
PURPOSES: tuple[Purpose, ...] = ("marketing", "transactional")
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
OBSERVED = ("none", "nearest_weekday", "next_weekday", "sunday_to_monday")
CAP_SCOPES = ("same_subject", "any")
VERIFICATION = ("text", "secondary")
ALL_STATES = "*"

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[1] / "config" / "guardrails.toml"

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_NPA = re.compile(r"^[2-9][0-8]\d$")
_STATE = re.compile(r"^[A-Z]{2}$")


class RulesError(ValueError):
    """The rules file is malformed; the message names the offending key."""


# --------------------------------------------------------------------- holidays


def easter_sunday(year: int) -> date:
    """Western (Gregorian) Easter Sunday, anonymous Gregorian algorithm."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def nth_weekday(year: int, month: int, weekday: int, nth: int) -> date:
    """The `nth` `weekday` (0 = Monday) of a month; nth = -1 is the last one."""
    if nth > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (nth - 1))
    next_month = date(year + month // 12, month % 12 + 1, 1)
    last = next_month - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7 + 7 * (-nth - 1))


@dataclass(frozen=True)
class HolidayDay:
    """One recurring holiday: a fixed date, an nth weekday, or an Easter offset."""

    name: str
    month: int | None = None
    day: int | None = None
    weekday: int | None = None
    nth: int | None = None
    easter: int | None = None
    offset: int = 0
    years: Literal["all", "even", "odd"] = "all"
    observed: str = "none"

    def dates(self, year: int) -> tuple[date, ...]:
        """The day(s) this holiday closes in `year`: the date and any shifted one."""
        if (self.years == "even" and year % 2) or (self.years == "odd" and not year % 2):
            return ()
        if self.easter is not None:
            actual = easter_sunday(year) + timedelta(days=self.easter)
        elif self.day is not None:
            assert self.month is not None
            actual = date(year, self.month, self.day)
        else:
            assert self.month is not None and self.weekday is not None and self.nth is not None
            actual = nth_weekday(year, self.month, self.weekday, self.nth)
        actual += timedelta(days=self.offset)
        wd = actual.weekday()
        shifted: date | None = None
        if self.observed == "nearest_weekday" and wd >= 5:
            shifted = actual + timedelta(days=-1 if wd == 5 else 1)
        elif self.observed == "next_weekday" and wd >= 5:
            shifted = actual + timedelta(days=7 - wd)
        elif self.observed == "sunday_to_monday" and wd == 6:
            shifted = actual + timedelta(days=1)
        return (actual,) if shifted is None else (actual, shifted)


@dataclass(frozen=True, eq=False)
class HolidayCalendar:
    """A named set of legal holidays, computed per year on demand (and cached)."""

    name: str
    source: str
    days: tuple[HolidayDay, ...]
    extra_dates: tuple[tuple[date, str], ...] = ()

    def holiday_on(self, d: date) -> str | None:
        """Name of the holiday falling on `d`, or None."""
        return _calendar_year(self, d.year).get(d)

    def in_year(self, year: int) -> dict[date, str]:
        """All holiday dates of `year` with their names."""
        return dict(_calendar_year(self, year))


@lru_cache(maxsize=1024)
def _calendar_year(calendar: HolidayCalendar, year: int) -> Mapping[date, str]:
    result: dict[date, str] = {}
    # Neighbouring years too: New Year's Day on a Saturday is observed on 31 December.
    for y in (year - 1, year, year + 1):
        for holiday in calendar.days:
            actual, *shifted = holiday.dates(y) or (None,)
            if actual is None:
                continue
            if actual.year == year:
                result.setdefault(actual, holiday.name)
            for d in shifted:
                if d.year == year:
                    result.setdefault(d, f"{holiday.name} (observed)")
    for d, name in calendar.extra_dates:
        if d.year == year:
            result.setdefault(d, name)
    return result


# ------------------------------------------------------------------ hours rules


@dataclass(frozen=True)
class Window:
    """A half-open local-time window [start, end) within one day."""

    start: time
    end: time

    def contains(self, t: time) -> bool:
        return self.start <= t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class FrequencyCap:
    """At most `max` contacts per recipient number per `window_hours` (counted elsewhere)."""

    rule: str
    citation: str
    max: int
    window_hours: int
    scope: Literal["same_subject", "any"]
    channels: frozenset[str]
    purposes: frozenset[str]


@dataclass(frozen=True)
class HoursRule:
    """One calling-hours rule: windows by weekday plus holiday closures."""

    id: str
    states: frozenset[str]
    citation: str
    verification: str
    note: str
    channels: frozenset[str]
    purposes: frozenset[str]
    # index 0 = Monday; None = closed all day
    week: tuple[Window | None, ...]
    closed_on: tuple[str, ...]
    frequency_cap: FrequencyCap | None

    def applies(self, states: Iterable[str], channel: str, purpose: str) -> bool:
        return (
            channel in self.channels
            and purpose in self.purposes
            and (ALL_STATES in self.states or not self.states.isdisjoint(states))
        )


# ------------------------------------------------------------- content / optout


@dataclass(frozen=True, eq=False)
class ContentRules:
    """Parsed `[content]` section; compiled once by guardrails.content."""

    channels: frozenset[str]
    max_segments: int
    blocked_terms: tuple[str, ...]
    block_url_shorteners: bool
    url_shorteners: tuple[str, ...]
    require_opt_out_on_first_marketing: bool
    opt_out_channels: frozenset[str]
    opt_out_patterns: tuple[str, ...]
    shaft_blocked: tuple[str, ...]
    shaft_terms: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class OptOutRules:
    """Parsed `[optout]` section: extra keywords on top of the built-in ones."""

    extra_opt_out: tuple[str, ...] = ()
    extra_opt_in: tuple[str, ...] = ()
    extra_help: tuple[str, ...] = ()


# ------------------------------------------------------------------------ rules


@dataclass(frozen=True, eq=False)
class Rules:
    """The whole parsed rules file (compared and hashed by identity)."""

    version: str
    defer_horizon_days: int
    include_address_state_zones: bool
    calendars: Mapping[str, HolidayCalendar]
    hours_rules: tuple[HoursRule, ...]
    area_codes: Mapping[str, str]  # npa -> state
    content: ContentRules
    optout: OptOutRules
    source: str = ""
    # npa -> every zone the area code spans, where libphonenumber is wrong or gives one
    area_code_zones: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def zones_for_npa(self, npa: str) -> tuple[str, ...] | None:
        """The override table's zones for an area code (all of them apply), or None: then
        libphonenumber's per-prefix data decides."""
        return self.area_code_zones.get(npa)

    def state_for_npa(self, npa: str) -> str | None:
        """US state/DC/territory of a NANP area code, or None (Canada, Caribbean, unknown)."""
        return self.area_codes.get(npa)

    def known_states(self) -> frozenset[str]:
        return frozenset(self.area_codes.values())

    def rules_for(self, states: Iterable[str], channel: str, purpose: str) -> list[HoursRule]:
        """Calling-hours rules that apply to a recipient in `states` (plus the "*" rules)."""
        wanted = frozenset(states)
        return [r for r in self.hours_rules if r.applies(wanted, channel, purpose)]

    def frequency_caps(
        self, states: Iterable[str], channel: str, purpose: str
    ) -> list[FrequencyCap]:
        """Per-number caps that apply; the chain counts contacts against each."""
        wanted = frozenset(states)
        caps: list[FrequencyCap] = []
        for rule in self.hours_rules:
            cap = rule.frequency_cap
            if cap is None or not (ALL_STATES in rule.states or not rule.states.isdisjoint(wanted)):
                continue
            if channel in cap.channels and purpose in cap.purposes:
                caps.append(cap)
        return caps

    def zones_for_state(self, state: str) -> tuple[str, ...]:
        """IANA zones a state's area codes map to (libphonenumber data, with the override
        table's zones for the area codes it lists), sorted."""
        return _state_zones(self, state)


@lru_cache(maxsize=1024)
def _state_zones(rules: Rules, state: str) -> tuple[str, ...]:
    npas = [npa for npa, st in rules.area_codes.items() if st == state]
    zones: set[str] = set()
    for npa in npas:
        zones.update(rules.area_code_zones.get(npa, ()))
    prefixes = tuple("1" + npa for npa in npas if npa not in rules.area_code_zones)
    if prefixes:
        for key, value in TIMEZONE_DATA.items():
            if key.startswith(prefixes):
                zones.update(value)
    return tuple(sorted(zones))


# ---------------------------------------------------------------------- parsing


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and validate a rules file (default: the repository's config/guardrails.toml)."""
    p = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{p}: {exc}") from exc
    return parse_rules(data, source=str(p))


def _check_keys(where: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = set(table) - set(allowed)
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {sorted(unknown)}")


def _require(where: str, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in table:
        raise RulesError(f"{where}: missing {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RulesError(f"{where}.{key}: expected {kind}, got {type(value).__name__}")
    return value


def _str_list(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RulesError(f"{where}: expected a list of non-empty strings")
    return tuple(value)


def _parse_window(where: str, text: str) -> Window:
    parts = text.split("-")
    if len(parts) != 2:
        raise RulesError(f"{where}: window must look like 'HH:MM-HH:MM', got {text!r}")
    bounds: list[time] = []
    for part in parts:
        m = _HHMM.match(part.strip())
        if m is None:
            raise RulesError(f"{where}: bad time {part!r}")
        bounds.append(time(int(m.group(1)), int(m.group(2))))
    if bounds[0] >= bounds[1]:
        raise RulesError(f"{where}: window {text!r} must start before it ends (same day)")
    return Window(bounds[0], bounds[1])


def _parse_holiday(where: str, raw: Any) -> HolidayDay:
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where}: expected a table")
    _check_keys(
        where,
        raw,
        ("name", "month", "day", "weekday", "nth", "easter", "offset", "years", "observed"),
    )
    name = _require(where, raw, "name", str)
    kinds = [k for k in ("day", "weekday", "easter") if k in raw]
    if len(kinds) != 1:
        raise RulesError(f"{where} ({name}): give exactly one of day, weekday+nth, easter")
    month = raw.get("month")
    weekday = nth = None
    if kinds[0] in ("day", "weekday"):
        if not isinstance(month, int) or not 1 <= month <= 12:
            raise RulesError(f"{where} ({name}): month must be 1..12")
    if kinds[0] == "day":
        try:
            date(2024, month, raw["day"])  # leap year: accepts Feb 29
        except (TypeError, ValueError) as exc:
            raise RulesError(f"{where} ({name}): bad day: {exc}") from exc
    if kinds[0] == "weekday":
        if raw["weekday"] not in WEEKDAYS:
            raise RulesError(f"{where} ({name}): weekday must be one of {WEEKDAYS}")
        weekday = WEEKDAYS.index(raw["weekday"])
        nth = raw.get("nth")
        if nth not in (1, 2, 3, 4, 5, -1, -2):
            raise RulesError(f"{where} ({name}): nth must be 1..5 or -1/-2")
    if kinds[0] == "easter" and not isinstance(raw["easter"], int):
        raise RulesError(f"{where} ({name}): easter must be an integer day offset")
    offset = raw.get("offset", 0)
    if not isinstance(offset, int):
        raise RulesError(f"{where} ({name}): offset must be an integer")
    years = raw.get("years", "all")
    if years not in ("all", "even", "odd"):
        raise RulesError(f"{where} ({name}): years must be all, even or odd")
    observed = raw.get("observed", "none")
    if observed not in OBSERVED:
        raise RulesError(f"{where} ({name}): observed must be one of {OBSERVED}")
    return HolidayDay(
        name=name,
        month=month,
        day=raw.get("day"),
        weekday=weekday,
        nth=nth,
        easter=raw.get("easter"),
        offset=offset,
        years=years,
        observed=observed,
    )


def _parse_calendar(name: str, raw: Any) -> HolidayCalendar:
    where = f"holidays.{name}"
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where}: expected a table")
    _check_keys(where, raw, ("source", "days", "dates"))
    source = _require(where, raw, "source", str)
    days_raw = _require(where, raw, "days", list)
    days = tuple(_parse_holiday(f"{where}.days[{i}]", d) for i, d in enumerate(days_raw))
    extra: list[tuple[date, str]] = []
    for i, text in enumerate(raw.get("dates", [])):
        try:
            extra.append((date.fromisoformat(str(text)), f"{name} proclaimed day"))
        except ValueError as exc:
            raise RulesError(f"{where}.dates[{i}]: {exc}") from exc
    return HolidayCalendar(name=name, source=source, days=days, extra_dates=tuple(extra))


def _parse_set(where: str, raw: Any, allowed: tuple[str, ...]) -> frozenset[str]:
    values = _str_list(where, raw)
    bad = set(values) - set(allowed)
    if bad:
        raise RulesError(f"{where}: unknown value(s) {sorted(bad)}; allowed {allowed}")
    return frozenset(values)


def _parse_hours_rule(
    index: int, raw: Any, calendars: Mapping[str, HolidayCalendar], known_states: frozenset[str]
) -> HoursRule:
    where = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where}: expected a table")
    _check_keys(
        where,
        raw,
        (
            "id", "states", "citation", "verification", "note", "channels", "purposes",
            "hours", "closed_on", "frequency_cap",
        ),
    )  # fmt: skip
    rule_id = _require(where, raw, "id", str)
    where = f"rules[{rule_id}]"
    states = frozenset(_str_list(f"{where}.states", raw.get("states")))
    for st in states:
        if st != ALL_STATES and st not in known_states:
            raise RulesError(f"{where}.states: {st!r} has no area codes in [area_codes]")
    citation = _require(where, raw, "citation", str)
    verification = _require(where, raw, "verification", str)
    if verification not in VERIFICATION:
        raise RulesError(f"{where}.verification: must be one of {VERIFICATION}")
    channels = _parse_set(f"{where}.channels", raw.get("channels", list(CHANNELS)), CHANNELS)
    purposes = _parse_set(f"{where}.purposes", raw.get("purposes", list(PURPOSES)), PURPOSES)
    hours = raw.get("hours")
    week: list[Window | None]
    if isinstance(hours, str):
        week = [_parse_window(f"{where}.hours", hours)] * 7
    elif isinstance(hours, Mapping):
        _check_keys(f"{where}.hours", hours, WEEKDAYS)
        week = []
        for wd in WEEKDAYS:
            value = hours.get(wd, "closed")
            if not isinstance(value, str):
                raise RulesError(f"{where}.hours.{wd}: expected a window or 'closed'")
            week.append(None if value == "closed" else _parse_window(f"{where}.hours.{wd}", value))
    else:
        raise RulesError(f"{where}.hours: expected 'HH:MM-HH:MM' or a table by weekday")
    closed_on = _str_list(f"{where}.closed_on", raw.get("closed_on", []))
    for cal in closed_on:
        if cal not in calendars:
            raise RulesError(f"{where}.closed_on: unknown holiday calendar {cal!r}")
    cap: FrequencyCap | None = None
    if "frequency_cap" in raw:
        cw = f"{where}.frequency_cap"
        craw = raw["frequency_cap"]
        if not isinstance(craw, Mapping):
            raise RulesError(f"{cw}: expected a table")
        _check_keys(cw, craw, ("max", "window_hours", "scope", "channels", "purposes"))
        cap_max = _require(cw, craw, "max", int)
        window_hours = _require(cw, craw, "window_hours", int)
        if cap_max < 1 or window_hours < 1:
            raise RulesError(f"{cw}: max and window_hours must be positive")
        scope = _require(cw, craw, "scope", str)
        if scope not in CAP_SCOPES:
            raise RulesError(f"{cw}.scope: must be one of {CAP_SCOPES}")
        cap = FrequencyCap(
            rule=rule_id,
            citation=citation,
            max=cap_max,
            window_hours=window_hours,
            scope=scope,  # type: ignore[arg-type]
            channels=_parse_set(f"{cw}.channels", craw.get("channels", sorted(channels)), CHANNELS),
            purposes=_parse_set(f"{cw}.purposes", craw.get("purposes", sorted(purposes)), PURPOSES),
        )
    return HoursRule(
        id=rule_id,
        states=states,
        citation=citation,
        verification=verification,
        note=str(raw.get("note", "")),
        channels=channels,
        purposes=purposes,
        week=tuple(week),
        closed_on=closed_on,
        frequency_cap=cap,
    )


def _parse_content(raw: Any) -> ContentRules:
    where = "content"
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where}: expected a table")
    _check_keys(
        where,
        raw,
        (
            "channels",
            "max_segments",
            "blocked_terms",
            "url_shorteners",
            "opt_out_language",
            "shaft",
        ),
    )
    channels = _parse_set(f"{where}.channels", raw.get("channels", ["sms", "whatsapp"]), CHANNELS)
    max_segments = _require(where, raw, "max_segments", int)
    if max_segments < 1:
        raise RulesError(f"{where}.max_segments: must be >= 1")
    blocked_terms = _str_list(f"{where}.blocked_terms", raw.get("blocked_terms", []))
    short = raw.get("url_shorteners", {})
    _check_keys(f"{where}.url_shorteners", short, ("block", "domains"))
    domains = tuple(
        d.lower() for d in _str_list(f"{where}.url_shorteners.domains", short.get("domains", []))
    )
    opt = raw.get("opt_out_language", {})
    _check_keys(
        f"{where}.opt_out_language", opt, ("required_on_first_marketing", "channels", "patterns")
    )
    patterns = _str_list(f"{where}.opt_out_language.patterns", opt.get("patterns", []))
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RulesError(f"{where}.opt_out_language.patterns[{i}]: {exc}") from exc
    required = bool(opt.get("required_on_first_marketing", True))
    if required and not patterns:
        raise RulesError(f"{where}.opt_out_language: required but no patterns given")
    shaft = raw.get("shaft", {})
    _check_keys(f"{where}.shaft", shaft, ("blocked", "terms"))
    terms_raw = shaft.get("terms", {})
    if not isinstance(terms_raw, Mapping):
        raise RulesError(f"{where}.shaft.terms: expected a table")
    terms = tuple(
        (cat, _str_list(f"{where}.shaft.terms.{cat}", values))
        for cat, values in sorted(terms_raw.items())
    )
    blocked = _str_list(f"{where}.shaft.blocked", shaft.get("blocked", []))
    for cat in blocked:
        if cat not in terms_raw:
            raise RulesError(f"{where}.shaft.blocked: category {cat!r} has no term list")
    return ContentRules(
        channels=channels,
        max_segments=max_segments,
        blocked_terms=blocked_terms,
        block_url_shorteners=bool(short.get("block", True)),
        url_shorteners=domains,
        require_opt_out_on_first_marketing=required,
        opt_out_channels=_parse_set(
            f"{where}.opt_out_language.channels", opt.get("channels", ["sms", "whatsapp"]), CHANNELS
        ),
        opt_out_patterns=patterns,
        shaft_blocked=blocked,
        shaft_terms=terms,
    )


def _parse_area_codes(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise RulesError("area_codes: expected a non-empty table STATE = [npa, ...]")
    seen: dict[str, str] = {}
    for state, npas in raw.items():
        if not _STATE.match(state):
            raise RulesError(f"area_codes.{state}: state must be two upper-case letters")
        for npa in _str_list(f"area_codes.{state}", npas):
            if not _NPA.match(npa):
                raise RulesError(f"area_codes.{state}: {npa!r} is not a valid NANP area code")
            if npa in seen:
                raise RulesError(f"area_codes: {npa} listed under both {seen[npa]} and {state}")
            seen[npa] = state
    return dict(sorted(seen.items()))


def _parse_area_code_zones(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise RulesError("area_code_zones: expected a table NPA = { zones = [...], ... }")
    found: dict[str, tuple[str, ...]] = {}
    for npa, entry in raw.items():
        where = f"area_code_zones.{npa}"
        if not _NPA.match(npa):
            raise RulesError(f"{where}: {npa!r} is not a valid NANP area code")
        if not isinstance(entry, Mapping):
            raise RulesError(f"{where}: expected a table with `zones`")
        _check_keys(where, entry, ("zones", "phonenumbers", "note"))
        zones = _str_list(f"{where}.zones", entry.get("zones"))
        if not zones:
            raise RulesError(f"{where}.zones: list at least one zone")
        _str_list(f"{where}.phonenumbers", entry.get("phonenumbers", []))
        for name in zones:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise RulesError(f"{where}.zones: unknown time zone {name!r}") from exc
        found[npa] = tuple(sorted(set(zones)))
    return dict(sorted(found.items()))


def parse_rules(data: Mapping[str, Any], *, source: str = "") -> Rules:
    """Validate a decoded rules document and build `Rules`."""
    _check_keys(
        "rules file",
        data,
        (
            "version", "calling_hours", "holidays", "rules", "content", "optout", "area_codes",
            "area_code_zones",
        ),
    )  # fmt: skip
    version = _require("rules file", data, "version", str)
    ch = data.get("calling_hours", {})
    _check_keys("calling_hours", ch, ("defer_horizon_days", "include_address_state_zones"))
    horizon = ch.get("defer_horizon_days", 14)
    if not isinstance(horizon, int) or not 1 <= horizon <= 60:
        raise RulesError("calling_hours.defer_horizon_days: must be an integer 1..60")
    area_codes = _parse_area_codes(data.get("area_codes"))
    known_states = frozenset(area_codes.values())
    calendars = {
        name: _parse_calendar(name, raw) for name, raw in sorted(data.get("holidays", {}).items())
    }
    rules_raw = data.get("rules", [])
    if not isinstance(rules_raw, list) or not rules_raw:
        raise RulesError("rules: expected at least one [[rules]] table")
    hours_rules = tuple(
        _parse_hours_rule(i, r, calendars, known_states) for i, r in enumerate(rules_raw)
    )
    ids = [r.id for r in hours_rules]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RulesError(f"rules: duplicate id(s) {duplicates}")
    optout_raw = data.get("optout", {})
    _check_keys("optout", optout_raw, ("extra_opt_out", "extra_opt_in", "extra_help"))
    optout = OptOutRules(
        extra_opt_out=_str_list("optout.extra_opt_out", optout_raw.get("extra_opt_out", [])),
        extra_opt_in=_str_list("optout.extra_opt_in", optout_raw.get("extra_opt_in", [])),
        extra_help=_str_list("optout.extra_help", optout_raw.get("extra_help", [])),
    )
    return Rules(
        version=version,
        defer_horizon_days=horizon,
        include_address_state_zones=bool(ch.get("include_address_state_zones", True)),
        calendars=MappingProxyType(calendars),
        hours_rules=hours_rules,
        area_codes=MappingProxyType(area_codes),
        content=_parse_content(data.get("content", {})),
        optout=optout,
        source=source,
        area_code_zones=MappingProxyType(_parse_area_code_zones(data.get("area_code_zones", {}))),
    )


def npa_of(number: phonenumbers.PhoneNumber) -> str | None:
    """The area code of a NANP number (country code 1), else None."""
    if number.country_code != 1:
        return None
    national = str(number.national_number)
    return national[:3] if len(national) == 10 else None
