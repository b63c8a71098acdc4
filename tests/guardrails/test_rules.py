"""The rules file: it loads, validation rejects bad files, holidays compute, area codes stay complete."""

from __future__ import annotations

import copy
import tomllib
from datetime import date
from typing import Any

import phonenumbers
import pytest
from phonenumbers.geodata import GEOCODE_DATA

from guardrails.rules import (
    DEFAULT_RULES_PATH,
    Rules,
    RulesError,
    easter_sunday,
    load_rules,
    nth_weekday,
    parse_rules,
)

RAW: dict[str, Any] = tomllib.loads(DEFAULT_RULES_PATH.read_text())
RULES: Rules = load_rules()


def test_shipped_file_loads() -> None:
    assert RULES.version
    assert RULES.source.endswith("guardrails.toml")
    ids = [r.id for r in RULES.hours_rules]
    assert ids[0] == "us.tcpa.64.1200c1"
    assert {"fl.501.616.6", "al.770-X-5-.17", "la.rs.45.811", "ms.77-3-723"} <= set(ids)
    for rule in RULES.hours_rules:
        assert rule.citation and rule.note, rule.id
        assert rule.verification in ("text", "secondary")


def test_federal_window_applies_everywhere() -> None:
    [federal] = [r for r in RULES.hours_rules if r.id == "us.tcpa.64.1200c1"]
    assert "*" in federal.states
    assert {str(w) for w in federal.week} == {"08:00-21:00"}
    assert RULES.rules_for([], "sms", "marketing") == [federal]


def test_state_rule_selection() -> None:
    ids = [r.id for r in RULES.rules_for(["OK"], "voice", "marketing")]
    assert ids == ["us.tcpa.64.1200c1", "ok.775C.4", "ok.755.1.C2a"]
    ids = [r.id for r in RULES.rules_for(["OK"], "sms", "marketing")]
    assert ids == ["us.tcpa.64.1200c1", "ok.775C.4"]


@pytest.mark.parametrize(
    ("year", "easter"),
    [(2000, date(2000, 4, 23)), (2019, date(2019, 4, 21)), (2024, date(2024, 3, 31)),
     (2025, date(2025, 4, 20)), (2026, date(2026, 4, 5)), (2038, date(2038, 4, 25))],
)  # fmt: skip
def test_easter(year: int, easter: date) -> None:
    assert easter_sunday(year) == easter


def test_nth_weekday() -> None:
    assert nth_weekday(2025, 1, 0, 3) == date(2025, 1, 20)  # MLK day
    assert nth_weekday(2025, 5, 0, -1) == date(2025, 5, 26)  # Memorial Day
    assert nth_weekday(2025, 11, 3, 4) == date(2025, 11, 27)  # Thanksgiving
    assert nth_weekday(2025, 12, 0, -1) == date(2025, 12, 29)


@pytest.mark.parametrize(
    ("calendar", "day", "name"),
    [
        ("us_federal", date(2025, 1, 20), "Birthday of Martin Luther King, Jr."),
        ("us_federal", date(2025, 6, 19), "Juneteenth National Independence Day"),
        ("us_federal", date(2026, 7, 3), "Independence Day (observed)"),  # July 4 is a Saturday
        ("us_federal", date(2026, 7, 4), "Independence Day"),
        ("us_federal", date(2022, 12, 26), "Christmas Day (observed)"),  # Dec 25 is a Sunday
        ("us_federal", date(2021, 12, 31), "New Year's Day (observed)"),  # shifts across years
        ("us_federal", date(2025, 11, 27), "Thanksgiving Day"),
        ("us_federal", date(2025, 11, 28), None),
        ("la_state", date(2025, 3, 4), "Mardi Gras"),
        ("la_state", date(2025, 4, 18), "Good Friday"),
        ("la_state", date(2025, 8, 30), "Huey P. Long Day"),
        ("la_state", date(2025, 1, 8), "Battle of New Orleans"),
        ("al_state", date(2025, 4, 28), "Confederate Memorial Day"),
        ("al_state", date(2025, 6, 2), "Birthday of Jefferson Davis"),
        ("ri_state", date(2025, 8, 11), "Victory Day"),
        ("ri_state", date(2024, 11, 5), "Election Day"),  # even years only
        ("ri_state", date(2025, 11, 4), None),
        ("ri_state", date(2025, 5, 5), "Rhode Island Independence Day (observed)"),
    ],
)
def test_holiday_calendars(calendar: str, day: date, name: str | None) -> None:
    assert RULES.calendars[calendar].holiday_on(day) == name


def test_frequency_caps_in_parsed_rules() -> None:
    caps = RULES.frequency_caps(["FL", "OK", "MD", "NY"], "voice", "marketing")
    assert sorted(c.rule for c in caps) == ["fl.501.616.6", "md.cl.14-4501", "ok.775C.4"]
    assert {(c.max, c.window_hours, c.scope) for c in caps} == {(3, 24, "same_subject")}
    assert RULES.frequency_caps(["NY"], "voice", "marketing") == []


def _broken(mutate: Any) -> dict[str, Any]:
    data = copy.deepcopy(RAW)
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(surprise=1), "unknown key"),
        (lambda d: d.pop("version"), "missing 'version'"),
        (lambda d: d["rules"][1].update(hours="20:00-08:00"), "must start before it ends"),
        (lambda d: d["rules"][1].update(hours="8am-8pm"), "bad time"),
        (lambda d: d["rules"][1].update(hours={"funday": "08:00-20:00"}), "unknown key"),
        (lambda d: d["rules"][1].update(closed_on=["mars"]), "unknown holiday calendar"),
        (lambda d: d["rules"][1].update(states=["ZZ"]), "has no area codes"),
        (lambda d: d["rules"][1].update(channels=["fax"]), "unknown value"),
        (lambda d: d["rules"][1].update(verification="vibes"), "verification"),
        (lambda d: d["rules"][2].update(id=d["rules"][1]["id"]), "duplicate id"),
        (lambda d: d["rules"][1]["frequency_cap"].update(max=0), "must be positive"),
        (lambda d: d["rules"][1]["frequency_cap"].update(scope="galaxy"), "scope"),
        (lambda d: d["area_codes"]["NY"].append("305"), "listed under both"),
        (lambda d: d["area_codes"]["NY"].append("123"), "not a valid NANP area code"),
        (lambda d: d["holidays"]["us_federal"]["days"].append({"name": "x", "month": 13, "day": 1}),
         "month must be"),
        (lambda d: d["holidays"]["us_federal"]["days"].append({"name": "x", "month": 2, "day": 30}),
         "bad day"),
        (lambda d: d["holidays"]["us_federal"]["days"].append({"name": "x", "easter": 1, "day": 1}),
         "exactly one of"),
        (lambda d: d["holidays"]["us_federal"]["days"][0].update(observed="whenever"), "observed"),
        (lambda d: d["content"]["opt_out_language"]["patterns"].append("(unclosed"), r"patterns\[2\]"),
        (lambda d: d["content"]["shaft"]["blocked"].append("gambling"), "has no term list"),
        (lambda d: d["content"].update(max_segments=0), "max_segments"),
        (lambda d: d["calling_hours"].update(defer_horizon_days=0), "defer_horizon_days"),
    ],
)  # fmt: skip
def test_validation_rejects(mutate: Any, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules(_broken(mutate))


def test_load_rules_reports_toml_errors(tmp_path: Any) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = ")
    with pytest.raises(RulesError, match=r"bad\.toml"):
        load_rules(bad)


def _us_npas_known_to_libphonenumber() -> dict[str, str]:
    """NPA -> region for every NANP area code libphonenumber geocodes to the US or a territory."""
    regions = {"US", "PR", "VI", "GU", "MP", "AS"}
    npas = {key[1:4] for key in GEOCODE_DATA if key.startswith("1") and len(key) >= 4}
    found: dict[str, str] = {}
    for npa in npas:
        for exchange in ("234", "456", "555", "789"):
            number = phonenumbers.parse(f"+1{npa}{exchange}4567")
            if phonenumbers.is_valid_number(number):
                region = phonenumbers.region_code_for_number(number)
                if region in regions:
                    found[npa] = region
                break
    return found


def test_area_code_table_is_complete_and_consistent() -> None:
    """Fails when libphonenumber knows a US area code the table lacks (refresh the table)."""
    known = _us_npas_known_to_libphonenumber()
    missing = sorted(set(known) - set(RULES.area_codes))
    assert not missing, f"add these area codes to [area_codes]: {missing}"
    for npa, region in known.items():
        if region != "US":  # territories are their own 'state'
            assert RULES.state_for_npa(npa) == region, npa
    assert RULES.state_for_npa("416") is None  # Toronto: not a US jurisdiction
    assert RULES.state_for_npa("212") == "NY"
    assert RULES.state_for_npa("305") == "FL"
    # every one of the 50 states and DC has at least one area code
    assert len(RULES.known_states() - {"PR", "VI", "GU", "MP", "AS"}) == 51


def test_state_zones_come_from_the_area_codes() -> None:
    assert RULES.zones_for_state("FL") == ("America/Chicago", "America/New_York")
    assert RULES.zones_for_state("HI") == ("Pacific/Honolulu",)
    assert RULES.zones_for_state("ZZ") == ()
