"""The rules file's `[area_code_zones]`: where libphonenumber's prefix data is wrong or gives
one zone for an area code spanning two, every zone of the area code applies."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import phonenumbers
import pytest
from phonenumbers import timezone as pn_timezone

from guardrails.calling_hours import check_calling_hours, resolve_recipient
from guardrails.rules import DEFAULT_RULES_PATH, RulesError, load_rules, parse_rules
from guardrails.verdicts import Allow, Defer

RULES = load_rules()
with DEFAULT_RULES_PATH.open("rb") as fh:
    TABLE = tomllib.load(fh)["area_code_zones"]


@pytest.mark.parametrize("npa", sorted(TABLE))
def test_each_entry_records_what_libphonenumber_says_and_corrects_it(npa):
    """A libphonenumber update that changes its answer fails here: review the entry then."""
    entry = TABLE[npa]
    number = phonenumbers.parse(f"+1{npa}5550100")
    says = sorted(pn_timezone.time_zones_for_number(number))
    assert says == sorted(entry["phonenumbers"]), (npa, says)
    assert sorted(entry["zones"]) != says or len(set(pn_timezone.time_zones_for_number(
        phonenumbers.parse(f"+1{npa}2345678")))) < len(entry["zones"]), npa  # fmt: skip
    recipient = resolve_recipient(f"+1{npa}5550100", rules=RULES)
    assert recipient.zones == tuple(sorted(entry["zones"]))
    assert recipient.zone_source == "area_code"
    assert len(recipient.zones) >= 2  # every entry so far is an area code spanning two zones


def test_known_multi_zone_area_codes_are_listed():
    for npa in ("208", "270", "423", "541", "605", "701", "812", "850", "906", "928"):
        assert len(RULES.zones_for_npa(npa) or ()) >= 2, npa


def test_western_kentucky_at_0730_central_is_closed_though_libphonenumber_says_eastern():
    # Tue 2026-11-24 13:30 UTC: 08:30 in New York (open), 07:30 in Chicago (closed)
    now = datetime(2026, 11, 24, 13, 30, tzinfo=UTC)
    assert pn_timezone.time_zones_for_number(phonenumbers.parse("+12705550100")) == (
        "America/New_York",
    )
    verdict = check_calling_hours(
        "+12705550100", now, channel="sms", purpose="marketing", rules=RULES
    )
    assert isinstance(verdict, Defer), verdict
    assert verdict.until == datetime(2026, 11, 24, 14, 0, tzinfo=UTC)  # 08:00 Central
    assert verdict.inputs["zones"] == ["America/Chicago", "America/New_York"]
    assert verdict.inputs["zone_source"] == "area_code"


def test_navajo_nation_keeps_daylight_saving_time_the_rest_of_arizona_does_not():
    # 2026-07-01 03:30 UTC: 20:30 in Phoenix (MST all year), 21:30 in Denver (MDT): closed
    now = datetime(2026, 7, 1, 3, 30, tzinfo=UTC)
    verdict = check_calling_hours(
        "+19285550100", now, channel="voice", purpose="marketing", rules=RULES
    )
    assert isinstance(verdict, Defer)
    closed = {c["zone"] for c in verdict.inputs["closed_by"]}
    assert closed == {"America/Denver"}
    # a Phoenix-only number (602) is still open then
    assert isinstance(
        check_calling_hours("+16025550100", now, channel="voice", purpose="marketing", rules=RULES),
        Allow,
    )


def test_a_state_s_zones_include_the_overrides():
    assert RULES.zones_for_state("IN") == ("America/Chicago", "America/New_York")
    assert "America/Denver" in RULES.zones_for_state("NE")


def test_the_table_is_validated():
    base = {k: v for k, v in TABLE.items()}
    with DEFAULT_RULES_PATH.open("rb") as fh:
        data = tomllib.load(fh)
    for bad in (
        {"2x0": {"zones": ["America/Chicago"]}},
        {"270": {"zones": []}},
        {"270": {"zones": ["Mars/Olympus_Mons"]}},
        {"270": {"zones": ["America/Chicago"], "typo": 1}},
    ):
        with pytest.raises(RulesError, match="area_code_zones"):
            parse_rules(data | {"area_code_zones": bad})
    assert parse_rules(data | {"area_code_zones": base}).zones_for_npa("270")
