"""Calling hours: may this call or text reach this number now, and if not, when?

Pure logic: the clock is the `now` argument and the rules are a parsed
`Rules`, so a verdict can be replayed exactly from its stored inputs.

How a recipient is placed:

* Time zones come from the number (libphonenumber's prefix data), except for
  the area codes of the rules file's `[area_code_zones]` table (where that data
  is wrong, or gives one zone for an area code spanning two): those use every
  zone the table lists. A number in several zones (e.g. +1 208 Idaho: Boise
  and Los Angeles) is treated as being in all of them: the window must be open
  in EVERY zone.
* The state comes from the NANP area code (table in the rules file); a known
  address state adds its own rules and, when configured, its zones. With two
  states, both states' rules apply, so the stricter combination wins.
* A non-geographic number (e.g. toll-free) uses the address state's zones
  when known, else every zone libphonenumber gives for the country: for +1
  that is Guam to American Samoa, which leaves one ~90-minute slot a day
  (22:00-23:30 UTC). A number with no zone at all is denied (fail closed).

Defer times: openness only changes at window starts/ends and midnights in
one of the recipient's zones, so the earliest open instant is one of the
window starts in one of those zones. Those candidates are generated for the
next `defer_horizon_days` and the first one where every rule is open in every
zone wins. Wall-clock times are converted with zoneinfo, so DST transition
days have their real length; a window starting on a non-existent wall-clock
time (inside a spring-forward gap) resolves with the pre-transition offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as pn_timezone

from gateway.core.phone import is_known, typed_e164
from guardrails.rules import Channel, FrequencyCap, HoursRule, Purpose, Rules, npa_of
from guardrails.verdicts import Allow, Defer, Deny, DenyCode

WhenClosed = Literal["defer", "deny"]
ZoneSource = Literal[
    "number", "number+address", "area_code", "area_code+address", "address", "country", "unknown"
]

_UNKNOWN_ZONE = "Etc/Unknown"


@dataclass(frozen=True)
class Recipient:
    """Where a number is, as far as calling-hour rules are concerned."""

    e164: str
    zones: tuple[str, ...]
    zone_source: ZoneSource
    npa: str | None
    npa_state: str | None
    address_state: str | None

    @property
    def states(self) -> tuple[str, ...]:
        """Every state whose rules apply (area-code state first)."""
        return tuple(dict.fromkeys(s for s in (self.npa_state, self.address_state) if s))


@dataclass(frozen=True)
class Closure:
    """One rule closed in one zone at one instant, and why."""

    rule: str
    zone: str
    local_time: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "zone": self.zone,
            "local_time": self.local_time,
            "why": self.why,
        }


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_NumberFacts = tuple[phonenumbers.PhoneNumber, str, tuple[str, ...], int]
_PARSED: dict[str, _NumberFacts] = {}
_PARSED_MAX = 65536


def is_parsed(number: str) -> bool:
    """Has this process parsed `number` already (so placing it costs no pattern matching:
    the API's validation parsed and typed it, or this module placed it before)?"""
    return number in _PARSED or is_known(number)


def _number_facts(number: str) -> _NumberFacts:
    """Parse, format, zones and type of a number: pure, slow unless the API validated the
    number in this process (~40 µs: phonenumbers' pattern matching), so cached."""
    found = _PARSED.get(number)
    if found is None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        found = _PARSED[number] = _parse_number(number)
    return found


def _parse_number(number: str) -> _NumberFacts:
    try:
        parsed, e164, ntype = typed_e164(number)  # the API has just done it, usually
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not an E.164 phone number: {number!r}") from exc
    # pn_timezone.time_zones_for_number, with the number's type worked out once, not twice
    if ntype == phonenumbers.PhoneNumberType.UNKNOWN:
        found: Sequence[str] = ()
    elif phonenumbers.is_number_type_geographical(ntype, parsed.country_code):
        found = pn_timezone.time_zones_for_geographical_number(parsed)
    else:
        found = pn_timezone.time_zones_for_number(parsed)
    zones = tuple(z for z in found if z != _UNKNOWN_ZONE)
    return parsed, e164, zones, ntype


def resolve_recipient(number: str, *, rules: Rules, address_state: str | None = None) -> Recipient:
    """Parse an E.164 number and work out its zones and states.

    Raises ValueError for text that is not a phone number or a malformed
    address state; an unknown-but-well-formed state simply has no rules.
    """
    parsed, e164, number_zones, ntype = _number_facts(number)
    if address_state is not None:
        address_state = address_state.strip().upper()
        if len(address_state) != 2 or not address_state.isalpha():
            raise ValueError(f"address_state must be a two-letter code, got {address_state!r}")
    npa = npa_of(parsed)
    npa_state = rules.state_for_npa(npa) if npa else None
    overridden = rules.zones_for_npa(npa) if npa else None
    if overridden:
        number_zones = overridden

    geographic = bool(number_zones) and phonenumbers.is_number_type_geographical(
        ntype, parsed.country_code
    )
    address_zones = rules.zones_for_state(address_state) if address_state else ()

    zones: tuple[str, ...]
    source: ZoneSource
    if geographic:
        base: ZoneSource = "area_code" if overridden else "number"
        if address_zones and rules.include_address_state_zones:
            zones = tuple(sorted({*number_zones, *address_zones}))
            source = "area_code+address" if overridden else "number+address"
        else:
            zones, source = tuple(sorted(number_zones)), base
    elif address_zones:
        zones, source = address_zones, "address"
    elif number_zones:
        zones, source = tuple(sorted(number_zones)), "country"
    else:
        zones, source = (), "unknown"
    return Recipient(
        e164=e164,
        zones=zones,
        zone_source=source,
        npa=npa,
        npa_state=npa_state,
        address_state=address_state,
    )


def _closures_at(
    instant: datetime, zones: Sequence[str], applied: Sequence[HoursRule], rules: Rules
) -> list[Closure]:
    """Every (rule, zone) pair that is closed at `instant`."""
    local = [(z, instant.astimezone(_zone(z))) for z in zones]
    stamps = {z: t.isoformat(timespec="minutes") for z, t in local}
    return _closures_of(local, stamps, applied, rules)


def _closures_of(
    local: Sequence[tuple[str, datetime]],
    stamps: dict[str, str],
    applied: Sequence[HoursRule],
    rules: Rules,
) -> list[Closure]:
    """`_closures_at` for an instant already converted to each zone's local time."""
    found: list[Closure] = []
    for zone_name, when in local:
        for rule in applied:
            why = _why_closed(rule, when, rules)
            if why:
                found.append(Closure(rule.id, zone_name, stamps[zone_name], why))
    return found


def _why_closed(rule: HoursRule, local: datetime, rules: Rules) -> str | None:
    for cal_name in rule.closed_on:
        holiday = rules.calendars[cal_name].holiday_on(local.date())
        if holiday:
            return f"holiday: {holiday} ({cal_name})"
    window = rule.week[local.weekday()]
    if window is None:
        return f"closed on {local:%A}s"
    if not window.contains(local.time()):
        return f"outside {window} local time"
    return None


def _window_starts(
    now: datetime, zones: Sequence[str], applied: Sequence[HoursRule], horizon_days: int
) -> list[datetime]:
    """Candidate opening instants (UTC), sorted: every window start in every zone."""
    candidates: set[datetime] = set()
    for zone_name in zones:
        tz = _zone(zone_name)
        first_day: date = now.astimezone(tz).date()
        for offset in range(horizon_days + 1):
            day = first_day + timedelta(days=offset)
            for rule in applied:
                window = rule.week[day.weekday()]
                if window is not None:
                    start = datetime.combine(day, window.start, tzinfo=tz).astimezone(UTC)
                    if start > now:
                        candidates.add(start)
    return sorted(candidates)


def next_open(
    recipient: Recipient,
    now: datetime,
    *,
    channel: Channel,
    purpose: Purpose,
    rules: Rules,
) -> datetime | None:
    """Earliest instant >= `now` (UTC) when every applicable rule is open in every zone."""
    now = _as_utc(now)
    applied = rules.rules_for(recipient.states, channel, purpose)
    if not recipient.zones:
        return None
    if not _closures_at(now, recipient.zones, applied, rules):
        return now
    for candidate in _window_starts(now, recipient.zones, applied, rules.defer_horizon_days):
        if not _closures_at(candidate, recipient.zones, applied, rules):
            return candidate
    return None


def applicable_frequency_caps(
    recipient: Recipient, *, channel: Channel, purpose: Purpose, rules: Rules
) -> list[FrequencyCap]:
    """Per-number caps (e.g. Florida's 3 per 24 h on one subject) the chain must count."""
    return rules.frequency_caps(recipient.states, channel, purpose)


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


@dataclass(frozen=True)
class _Plan:
    """What calling hours know about a (number, address state, channel, purpose) before the
    clock is read: pure, so computed once per process and reused by every check of it."""

    recipient: Recipient
    applied: tuple[HoursRule, ...]
    frequency_caps: tuple[FrequencyCap, ...]
    # [(UTC minute, the Allow's inputs but "now")]: open for all of that minute (see
    # `_open_this_minute`), so the next checks in it copy the answer instead of working it out.
    open_minute: list[tuple[datetime, dict[str, Any]]] = field(
        default_factory=list, compare=False, repr=False
    )


@lru_cache(maxsize=65536)
def _plan(
    number: str, address_state: str | None, channel: Channel, purpose: Purpose, rules: Rules
) -> _Plan:
    recipient = resolve_recipient(number, rules=rules, address_state=address_state)
    return _Plan(recipient, *_applied(rules, recipient.states, channel, purpose))


@lru_cache(maxsize=1024)
def _applied(
    rules: Rules, states: tuple[str, ...], channel: Channel, purpose: Purpose
) -> tuple[tuple[HoursRule, ...], tuple[FrequencyCap, ...]]:
    """The rules and caps for a recipient's states: a handful of combinations, where each
    new number (most are) otherwise went through every rule twice (~4 of its ~13 µs)."""
    return (
        tuple(rules.rules_for(states, channel, purpose)),
        tuple(rules.frequency_caps(states, channel, purpose)),
    )


def frequency_caps_for(
    number: str, address_state: str | None, channel: Channel, purpose: Purpose, rules: Rules
) -> tuple[FrequencyCap, ...]:
    """`applicable_frequency_caps` of the number's recipient, from the same per-process cache
    as the calling-hours check (raises ValueError for a number it cannot place)."""
    return _plan(number, address_state, channel, purpose, rules).frequency_caps


def check_calling_hours(
    number: str,
    now: datetime,
    *,
    channel: Channel,
    purpose: Purpose,
    rules: Rules,
    address_state: str | None = None,
    exempt_transactional: bool = False,
    when_closed: WhenClosed = "defer",
) -> Allow | Deny | Defer:
    """Allow, or Deny/Defer (caller's choice via `when_closed`) outside calling hours.

    `exempt_transactional` is the tenant's policy flag; it never exempts
    marketing. Defer carries the earliest open instant; when none exists
    within the horizon (or the zone cannot be determined) the answer is Deny.
    """
    now = _as_utc(now)
    if when_closed not in ("defer", "deny"):
        raise ValueError(f"when_closed must be 'defer' or 'deny', got {when_closed!r}")
    plan = _plan(number, address_state, channel, purpose, rules)
    exempt = purpose == "transactional" and exempt_transactional
    minute = now.replace(second=0, microsecond=0)
    if not exempt and plan.open_minute and plan.open_minute[0][0] == minute:
        inputs = dict(plan.open_minute[0][1])  # the same answer, at this instant
        inputs["now"] = now.isoformat()
        return Allow(inputs=inputs)
    recipient, applied = plan.recipient, plan.applied
    local = [(z, now.astimezone(_zone(z))) for z in recipient.zones]
    stamps = {z: t.isoformat(timespec="minutes") for z, t in local}
    inputs: dict[str, Any] = {
        "check": "calling_hours",
        "rules_version": rules.version,
        "now": now.isoformat(),
        "number": recipient.e164,
        "channel": channel,
        "purpose": purpose,
        "npa": recipient.npa,
        "states": {
            "area_code": recipient.npa_state,
            "address": recipient.address_state,
            "applied": list(recipient.states),
        },
        "zones": list(recipient.zones),
        "zone_source": recipient.zone_source,
        "local_times": stamps,
        "rules_applied": [r.id for r in applied],
        "frequency_caps": [
            {"rule": c.rule, "max": c.max, "window_hours": c.window_hours, "scope": c.scope}
            for c in plan.frequency_caps
        ],
    }

    if exempt:
        inputs["exempt_transactional"] = True
        return Allow(inputs=inputs)
    if not applied:
        _open_this_minute(plan, minute, local, inputs)
        return Allow(inputs=inputs)
    if not recipient.zones:
        inputs["closed_by"] = []
        return Deny(
            code=DenyCode.OUTSIDE_CALLING_HOURS,
            reason=f"time zone of {recipient.e164} is unknown; calling hours cannot be verified",
            rule="calling_hours.unknown_zone",
            inputs=inputs,
        )

    closures = _closures_of(local, stamps, applied, rules)
    if not closures:
        _open_this_minute(plan, minute, local, inputs)
        return Allow(inputs=inputs)

    inputs["closed_by"] = [c.as_dict() for c in closures]
    rule_ids = ",".join(dict.fromkeys(c.rule for c in closures))
    first = closures[0]
    reason = (
        f"outside calling hours for {recipient.e164}: {first.rule} is closed "
        f"({first.why}; {first.local_time} {first.zone})"
    )
    opening = next_open(recipient, now, channel=channel, purpose=purpose, rules=rules)
    inputs["next_open"] = opening.isoformat() if opening else None
    inputs["when_closed"] = when_closed
    if when_closed == "defer" and opening is not None:
        return Defer(until=opening, reason=reason, rule=rule_ids, inputs=inputs)
    if opening is None:
        reason += (
            f"; no instant in the next {rules.defer_horizon_days} days is open in every zone "
            f"({', '.join(recipient.zones)})"
        )
    return Deny(code=DenyCode.OUTSIDE_CALLING_HOURS, reason=reason, rule=rule_ids, inputs=inputs)


def _open_this_minute(
    plan: _Plan, minute: datetime, local: Sequence[tuple[str, datetime]], inputs: dict[str, Any]
) -> None:
    """Remember that `plan` is open for the whole UTC `minute`. True for every instant in it:
    windows start and end on whole local minutes (rules.py), holidays on local dates, and each
    zone's offset is a whole number of minutes (checked) that changes only at a whole minute.
    The nested values are shared by the copies: inputs are only read after a decision."""
    for _, when in local:
        offset = when.utcoffset()
        if offset is None or offset.seconds % 60 or offset.microseconds:
            return
    plan.open_minute[:] = [(minute, dict(inputs))]
