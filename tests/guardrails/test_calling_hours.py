"""Calling hours at fixed clocks: zones, multi-zone numbers, state rules, DST, holidays, defer times."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails.calling_hours import (
    applicable_frequency_caps,
    check_calling_hours,
    next_open,
    resolve_recipient,
)
from guardrails.rules import Rules, load_rules
from guardrails.verdicts import Allow, Defer, Deny, DenyCode

RULES: Rules = load_rules()

NY = "America/New_York"
CHI = "America/Chicago"
DEN = "America/Denver"
LA = "America/Los_Angeles"
BOI = "America/Boise"
PHX = "America/Phoenix"
HNL = "Pacific/Honolulu"
ANC = "America/Anchorage"


def at(local: str, zone: str) -> datetime:
    """An aware instant from a wall-clock time in `zone` ("2025-03-10 07:59")."""
    return datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone))


@dataclass(frozen=True)
class Case:
    id: str
    number: str
    now: datetime
    expect: type
    until: datetime | None = None  # for Defer
    rule: str | None = None  # substring of the verdict's rule
    channel: str = "voice"
    purpose: str = "marketing"
    address_state: str | None = None
    exempt: bool = False
    when_closed: str = "defer"


CASES = [
    # --- federal window, single-zone numbers (2025-03-12 is a Wednesday) ---
    Case("ny-07:59", "+12125550123", at("2025-03-12 07:59", NY), Defer,
         at("2025-03-12 08:00", NY), "us.tcpa"),
    Case("ny-08:00-open", "+12125550123", at("2025-03-12 08:00", NY), Allow),
    Case("ny-20:59-open", "+12125550123", at("2025-03-12 20:59", NY), Allow),
    Case("ny-21:00-closed", "+12125550123", at("2025-03-12 21:00", NY), Defer,
         at("2025-03-13 08:00", NY), "us.tcpa"),
    Case("ca-415-07:30", "+14155550123", at("2025-01-15 07:30", LA), Defer,
         at("2025-01-15 08:00", LA)),
    Case("ca-415-utc-clock", "+14155550123", datetime(2025, 1, 15, 16, 30, tzinfo=UTC), Allow),
    Case("chicago-312-21:30", "+13125550123", at("2025-03-12 21:30", CHI), Defer,
         at("2025-03-13 08:00", CHI)),
    Case("denver-303-noon", "+13035550123", at("2025-03-12 12:00", DEN), Allow),
    Case("honolulu-808-07:00", "+18085550123", at("2025-07-01 07:00", HNL), Defer,
         datetime(2025, 7, 1, 18, 0, tzinfo=UTC)),
    Case("honolulu-808-when-ny-is-late", "+18085550123", at("2025-07-01 22:00", NY), Allow),
    # --- numbers in several zones: open only when open in every zone ---
    # 907: Anchorage and Adak (one hour behind)
    Case("ak-907-08:30-anchorage", "+19075550123", at("2025-03-10 08:30", ANC), Defer,
         at("2025-03-10 09:00", ANC), "us.tcpa"),
    Case("ak-907-20:30-anchorage", "+19075550123", at("2025-03-10 20:30", ANC), Allow),
    # 208 (parts): Boise and Los Angeles
    Case("id-208-08:30-boise", "+12083201234", at("2025-03-12 08:30", BOI), Defer,
         at("2025-03-12 09:00", BOI)),
    Case("id-208-21:30-boise-still-20:30-la", "+12083201234", at("2025-03-12 21:30", BOI), Defer,
         at("2025-03-13 09:00", BOI)),
    # 928 283 (Navajo Nation): Denver and Phoenix differ only in summer
    Case("az-928-july-07:30-phoenix", "+19282831234", at("2025-07-09 07:30", PHX), Defer,
         at("2025-07-09 08:00", PHX)),
    Case("az-928-july-20:30-phoenix", "+19282831234", at("2025-07-09 20:30", PHX), Defer,
         at("2025-07-10 08:00", PHX)),
    Case("az-928-january-20:30", "+19282831234", at("2025-01-15 20:30", PHX), Allow),
    # --- stricter states ---
    Case("fl-305-20:30-outside", "+13055550123", at("2025-03-12 20:30", NY), Defer,
         at("2025-03-13 08:00", NY), "fl.501.616.6"),
    Case("fl-305-20:30-deny", "+13055550123", at("2025-03-12 20:30", NY), Deny,
         rule="fl.501.616.6", when_closed="deny"),
    Case("fl-305-19:59-open", "+13055550123", at("2025-03-12 19:59", NY), Allow),
    Case("fl-305-sms-too", "+13055550123", at("2025-03-12 20:30", NY), Defer,
         at("2025-03-13 08:00", NY), "fl.501.616.6", channel="sms"),
    Case("md-301-20:15", "+13015550123", at("2025-03-12 20:15", NY), Defer,
         at("2025-03-13 08:00", NY), "md."),
    Case("ok-405-voice-08:30-adad", "+14055550123", at("2025-03-12 08:30", CHI), Defer,
         at("2025-03-12 09:00", CHI), "ok.755.1"),
    Case("ok-405-sms-08:30", "+14055550123", at("2025-03-12 08:30", CHI), Allow,
         channel="sms"),
    Case("ok-405-sms-20:30", "+14055550123", at("2025-03-12 20:30", CHI), Defer,
         at("2025-03-13 08:00", CHI), "ok.775C.4", channel="sms"),
    Case("tx-214-sunday-11:00", "+12145550123", at("2025-03-16 11:00", CHI), Defer,
         at("2025-03-16 12:00", CHI), "tx."),
    Case("ri-401-saturday-17:30", "+14015550123", at("2025-03-08 17:30", NY), Defer,
         at("2025-03-10 09:00", NY), "ri."),
    Case("ri-401-victory-day", "+14015550123", at("2025-08-11 12:00", NY), Defer,
         at("2025-08-12 09:00", NY), "ri."),
    Case("sd-605-voice-saturday", "+16055550123", at("2025-03-15 12:00", CHI), Defer,
         at("2025-03-17 10:00", CHI), "sd."),
    Case("sd-605-sms-saturday", "+16055550123", at("2025-03-15 12:00", CHI), Allow,
         channel="sms"),
    # --- DST: spring forward 2025-03-09, fall back 2025-11-02 (US) ---
    Case("dst-spring-defer-across", "+12125550123", at("2025-03-08 22:00", NY), Defer,
         datetime(2025, 3, 9, 12, 0, tzinfo=UTC)),  # 08:00 EDT, not 13:00Z
    Case("dst-spring-day-07:30-edt", "+12125550123", datetime(2025, 3, 9, 11, 30, tzinfo=UTC),
         Defer, datetime(2025, 3, 9, 12, 0, tzinfo=UTC)),
    Case("dst-spring-day-08:00-edt", "+12125550123", datetime(2025, 3, 9, 12, 0, tzinfo=UTC),
         Allow),
    Case("dst-fall-defer-across", "+12125550123", at("2025-11-01 22:00", NY), Defer,
         datetime(2025, 11, 2, 13, 0, tzinfo=UTC)),  # 08:00 EST
    Case("dst-fall-day-07:30-est", "+12125550123", datetime(2025, 11, 2, 12, 30, tzinfo=UTC),
         Defer, datetime(2025, 11, 2, 13, 0, tzinfo=UTC)),
    Case("dst-fall-ambiguous-01:30", "+12125550123", datetime(2025, 11, 2, 6, 30, tzinfo=UTC),
         Defer, datetime(2025, 11, 2, 13, 0, tzinfo=UTC)),
    Case("dst-honolulu-no-dst", "+18085550123", at("2025-03-09 07:59", HNL), Defer,
         datetime(2025, 3, 9, 18, 0, tzinfo=UTC)),
    # --- day-of-week and holiday bans ---
    Case("al-205-sunday", "+12055550123", at("2025-03-09 12:00", CHI), Defer,
         at("2025-03-10 08:00", CHI), "al."),
    Case("al-205-saturday-19:59", "+12055550123", at("2025-03-08 19:59", CHI), Allow),
    Case("al-205-saturday-20:00-skips-sunday", "+12055550123", at("2025-03-08 20:00", CHI),
         Defer, at("2025-03-10 08:00", CHI), "al."),
    Case("al-205-jefferson-davis-birthday", "+12055550123", at("2025-06-02 10:00", CHI), Defer,
         at("2025-06-03 08:00", CHI), "al."),
    Case("al-205-juneteenth-federal", "+12055550123", at("2025-06-19 10:00", CHI), Defer,
         at("2025-06-20 08:00", CHI), "al."),
    Case("la-504-good-friday", "+15045550123", at("2025-04-18 12:00", CHI), Defer,
         at("2025-04-19 08:00", CHI), "la."),
    Case("la-504-mardi-gras", "+15045550123", at("2025-03-04 12:00", CHI), Defer,
         at("2025-03-05 08:00", CHI), "la."),
    Case("la-504-deny-on-holiday", "+15045550123", at("2025-04-18 12:00", CHI), Deny,
         rule="la.", when_closed="deny"),
    # Huey P. Long Day (Sat) + Sunday + Labor Day (Mon): first open slot is Tuesday
    Case("la-504-three-day-closure", "+15045550123", at("2025-08-30 12:00", CHI), Defer,
         at("2025-09-02 08:00", CHI), "la."),
    Case("la-504-ordinary-saturday", "+15045550123", at("2025-07-12 12:00", CHI), Allow),
    Case("ms-601-sunday", "+16015550123", at("2025-03-09 12:00", CHI), Defer,
         at("2025-03-10 08:00", CHI), "ms."),
    # --- address state: both states' rules apply, and the address state's zones ---
    Case("ny-number-fl-address-20:30", "+12125550123", at("2025-03-12 20:30", NY), Defer,
         at("2025-03-13 09:00", NY), "fl.", address_state="FL"),  # 08:00 CDT in the panhandle
    Case("fl-number-ny-address-still-fl", "+13055550123", at("2025-03-12 20:30", NY), Defer,
         at("2025-03-13 08:00", NY), "fl.", address_state="NY"),
    Case("ny-number-al-address-sunday", "+12125550123", at("2025-03-09 12:00", NY), Defer,
         at("2025-03-10 09:00", NY), "al.", address_state="al"),
    Case("ny-number-ny-address-open", "+12125550123", at("2025-03-12 20:30", NY), Allow,
         address_state="NY"),
    # --- purpose: transactional exemption is a tenant flag, never for marketing ---
    Case("transactional-exempt", "+13055550123", at("2025-03-12 22:00", NY), Allow,
         purpose="transactional", exempt=True),
    Case("transactional-not-exempt", "+13055550123", at("2025-03-12 22:00", NY), Defer,
         at("2025-03-13 08:00", NY), "us.tcpa", purpose="transactional"),
    Case("marketing-ignores-exempt-flag", "+13055550123", at("2025-03-12 22:00", NY), Defer,
         at("2025-03-13 08:00", NY), purpose="marketing", exempt=True),
    Case("transactional-exempt-sunday-al", "+12055550123", at("2025-03-09 12:00", CHI), Allow,
         purpose="transactional", exempt=True),
    # --- outside the US: the baseline window still applies, no state rules ---
    Case("toronto-416-07:00", "+14165550123", at("2025-03-12 07:00", "America/Toronto"), Defer,
         at("2025-03-12 08:00", "America/Toronto")),
    Case("london-noon", "+442079460123", at("2025-03-12 12:00", "Europe/London"), Allow),
    # --- toll-free: no geography; with an address state its zones are used ---
    Case("toll-free-with-address", "+18005550123", at("2025-03-12 12:00", NY), Allow,
         address_state="NY"),
    Case("toll-free-all-nanp-zones", "+18005550123", at("2025-03-12 12:00", NY), Defer,
         datetime(2025, 3, 12, 22, 0, tzinfo=UTC)),  # 08:00 in Guam; 18:00 EDT
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_calling_hours_table(case: Case) -> None:
    verdict = check_calling_hours(
        case.number,
        case.now,
        channel=case.channel,  # type: ignore[arg-type]
        purpose=case.purpose,  # type: ignore[arg-type]
        rules=RULES,
        address_state=case.address_state,
        exempt_transactional=case.exempt,
        when_closed=case.when_closed,  # type: ignore[arg-type]
    )
    assert isinstance(verdict, case.expect), verdict
    json.dumps(verdict.inputs)  # stored with the verdict: must be JSON
    assert verdict.inputs["rules_version"] == RULES.version
    if isinstance(verdict, Defer):
        assert case.until is not None
        assert verdict.until == case.until, (
            verdict.until.astimezone(case.until.tzinfo),
            case.until,
        )
        assert verdict.until.tzinfo is UTC
        assert verdict.until > case.now.astimezone(UTC)
    if isinstance(verdict, Deny):
        assert verdict.code == DenyCode.OUTSIDE_CALLING_HOURS
    if case.rule is not None:
        assert isinstance(verdict, Defer | Deny)
        assert case.rule in verdict.rule
        assert verdict.inputs["closed_by"]


def test_inputs_record_local_time_zone_and_states() -> None:
    verdict = check_calling_hours(
        "+13055550123",
        at("2025-03-12 20:30", NY),
        channel="voice",
        purpose="marketing",
        rules=RULES,
        address_state="GA",
    )
    assert isinstance(verdict, Defer)
    inputs = verdict.inputs
    assert inputs["zones"] == [NY]  # Georgia is one zone too
    assert inputs["local_times"] == {NY: "2025-03-12T20:30-04:00"}
    assert inputs["states"] == {"area_code": "FL", "address": "GA", "applied": ["FL", "GA"]}
    assert inputs["npa"] == "305"
    assert "fl.501.616.6" in inputs["rules_applied"]
    assert inputs["closed_by"][0]["rule"] == "fl.501.616.6"
    assert inputs["closed_by"][0]["why"] == "outside 08:00-20:00 local time"
    assert inputs["next_open"] == "2025-03-13T12:00:00+00:00"
    assert inputs["frequency_caps"] == [
        {"rule": "fl.501.616.6", "max": 3, "window_hours": 24, "scope": "same_subject"}
    ]


def test_multi_zone_number_resolves_every_zone() -> None:
    recipient = resolve_recipient("+12083201234", rules=RULES)
    assert recipient.zones == (BOI, LA)
    assert recipient.zone_source == "area_code"  # 208 spans two zones: config/guardrails.toml
    assert recipient.npa_state == "ID"
    both = resolve_recipient("+12125550123", rules=RULES, address_state="FL")
    assert both.zones == (CHI, NY)
    assert both.zone_source == "number+address"
    assert both.states == ("NY", "FL")


def test_frequency_caps_exposed_for_marketing_only() -> None:
    fl = resolve_recipient("+13055550123", rules=RULES)
    caps = applicable_frequency_caps(fl, channel="sms", purpose="marketing", rules=RULES)
    assert [(c.rule, c.max, c.window_hours, c.scope) for c in caps] == [
        ("fl.501.616.6", 3, 24, "same_subject")
    ]
    assert applicable_frequency_caps(fl, channel="sms", purpose="transactional", rules=RULES) == []
    ny = resolve_recipient("+12125550123", rules=RULES, address_state="MD")
    assert [c.rule for c in applicable_frequency_caps(
        ny, channel="voice", purpose="marketing", rules=RULES
    )] == ["md.cl.14-4501"]  # fmt: skip


def test_rejects_naive_clock_and_garbage() -> None:
    kwargs = {"channel": "voice", "purpose": "marketing", "rules": RULES}
    with pytest.raises(ValueError, match="timezone-aware"):
        check_calling_hours("+12125550123", datetime(2025, 3, 12, 12), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"E\.164"):
        check_calling_hours("not a number", at("2025-03-12 12:00", NY), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two-letter"):
        check_calling_hours(
            "+12125550123",
            at("2025-03-12 12:00", NY),
            address_state="Florida",
            **kwargs,  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="when_closed"):
        check_calling_hours(
            "+12125550123",
            at("2025-03-12 12:00", NY),
            when_closed="later",
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("number", ["+13705550123", "+80012345678"])
def test_unknown_zone_fails_closed(number: str) -> None:
    # An unassigned NANP area code / a global (UIFN) number has no zone: deny, don't guess.
    verdict = check_calling_hours(
        number, at("2025-03-12 12:00", NY), channel="sms", purpose="marketing", rules=RULES
    )
    assert isinstance(verdict, Deny)
    assert verdict.rule == "calling_hours.unknown_zone"
    assert verdict.inputs["zone_source"] == "unknown"


def test_deny_when_no_opening_within_horizon() -> None:
    # Rhode Island opens Monday 09:00 at the earliest; with a 1-day horizon a
    # Saturday evening has no opening, so even when_closed="defer" denies.
    short = load_rules()
    object.__setattr__(short, "defer_horizon_days", 1)
    verdict = check_calling_hours(
        "+14015550123", at("2025-03-08 17:30", NY), channel="voice", purpose="marketing",
        rules=short,
    )  # fmt: skip
    assert isinstance(verdict, Deny)
    assert "no instant in the next 1 days" in verdict.reason
    assert verdict.inputs["next_open"] is None


NUMBERS = [
    "+12125550123", "+13055550123", "+12055550123", "+15045550123", "+19075550123",
    "+12083201234", "+19282831234", "+14015550123", "+12145550123", "+16055550123",
    "+18085550123", "+14055550123",
]  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(
    number=st.sampled_from(NUMBERS),
    minutes=st.integers(min_value=0, max_value=366 * 24 * 60),
    channel=st.sampled_from(["voice", "sms"]),
    address_state=st.sampled_from([None, "FL", "AL", "CA", "RI"]),
)
def test_defer_is_the_earliest_open_instant(
    number: str, minutes: int, channel: str, address_state: str | None
) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    kwargs = {"channel": channel, "purpose": "marketing", "rules": RULES,
              "address_state": address_state}  # fmt: skip
    verdict = check_calling_hours(number, now, **kwargs)  # type: ignore[arg-type]
    if isinstance(verdict, Allow):
        return
    assert isinstance(verdict, Defer)
    # open at `until` ...
    assert isinstance(check_calling_hours(number, verdict.until, **kwargs), Allow)  # type: ignore[arg-type]
    # ... and still closed one minute before (unless that is before `now`)
    before = verdict.until - timedelta(minutes=1)
    if before >= now:
        assert not isinstance(check_calling_hours(number, before, **kwargs), Allow)  # type: ignore[arg-type]
    recipient = resolve_recipient(number, rules=RULES, address_state=address_state)
    assert next_open(recipient, now, channel=channel, purpose="marketing", rules=RULES) == (  # type: ignore[arg-type]
        verdict.until
    )


def test_the_open_minute_memo_answers_as_a_fresh_check_would() -> None:
    """Checks of one number in one minute reuse the first open answer (issue 14): every
    instant, seconds apart across window starts, ends and a DST change, gets what a check
    with nothing remembered gives, but its own `now`."""
    from guardrails.calling_hours import _plan

    start = at("2025-03-09 07:58", NY)  # the spring-forward day
    instants = [start + timedelta(seconds=13 * i) for i in range(0, 5 * 3600 // 13)]
    instants += [at("2025-03-09 20:58", NY) + timedelta(seconds=7 * i) for i in range(60)]
    for number, state in (("+12125550100", None), ("+12085550100", None), ("+18005550100", "FL")):
        for purpose in ("marketing", "transactional"):
            warm = [
                check_calling_hours(
                    number, t, channel="sms", purpose=purpose, rules=RULES, address_state=state
                )
                for t in instants
            ]
            for t, got in zip(instants, warm, strict=True):
                _plan.cache_clear()
                fresh = check_calling_hours(
                    number, t, channel="sms", purpose=purpose, rules=RULES, address_state=state
                )
                assert got == fresh, (number, purpose, t)
                assert got.inputs["now"] == t.astimezone(UTC).isoformat()
