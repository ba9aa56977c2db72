"""Maintenance windows: the `rollout.windows` configuration and its pure evaluation (rollout/windows.py)."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from baseroll import config
from baseroll.config import ConfigError
from baseroll.config.windows import parse_windows
from baseroll.fleet.view import ServiceView
from baseroll.rollout import windows as W

EAST = ServiceView("projects/shop-prod/locations/us-east1/services/cart", (), labels={"team": "shop"})
WEST = ServiceView("projects/shop-prod/locations/us-west1/services/cart", ())
BERLIN = "Europe/Berlin"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rules(*items: dict) -> tuple:
    return parse_windows([{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "time_zone": "UTC", **i}
                          for i in items])


# ------------------------------------------------------------------------------------------- config


def test_windows_and_approval_parse_from_the_rollout_section():
    cfg = config.parse({"projects": ["shop-prod"], "regions": ["us-east1"], "allowed_registries": ["r.test"],
                        "base_tracks": [{"name": "py", "image": "r.test/b/py:3"}],
                        "rollout": {"approval": "after-canary", "windows": [
                            {"match": {"region": "us-east1", "label": "team=shop"}, "days": ["Fri", "sat"],
                             "start": "22:00", "end": "02:00", "time_zone": BERLIN}]}})
    (rule,) = cfg.rollout.windows
    assert cfg.rollout.approval == "after-canary"
    assert (rule.days, rule.start, rule.end, rule.region, rule.label) == (frozenset({4, 5}), 1320, 120, "us-east1",
                                                                        ("team", "shop"))
    assert config.parse({"projects": ["p-12345"], "regions": ["us-east1"], "allowed_registries": ["r.test"],
                         "base_tracks": [{"name": "py", "image": "r.test/b/py:3"}]}).rollout.windows == ()


@pytest.mark.parametrize("item, message", [
    ({"days": ["fri"], "start": "22:00", "end": "02:00"}, "time_zone: required"),
    ({"days": ["fri"], "start": "22:00", "end": "02:00", "time_zone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"days": ["fri"], "start": "22:00", "end": "02:00", "time_zone": "../etc/passwd"}, "not an IANA time zone"),
    ({"days": ["friday"], "start": "22:00", "end": "02:00", "time_zone": "UTC"}, "'friday' is not one of mon"),
    ({"days": [], "start": "22:00", "end": "02:00", "time_zone": "UTC"}, "days: a non-empty list"),
    ({"days": ["fri"], "start": "25:00", "end": "02:00", "time_zone": "UTC"}, "start: a time HH:MM"),
    ({"days": ["fri"], "start": "9:00", "end": "02:00", "time_zone": "UTC"}, "start: a time HH:MM"),
    ({"days": ["fri"], "start": "24:00", "end": "02:00", "time_zone": "UTC"}, "24:00 is only an end"),
    ({"days": ["fri"], "start": "10:00", "end": "10:00", "time_zone": "UTC"}, "00:00-24:00"),
    ({"days": ["fri"], "start": "1", "end": "2", "time_zone": "UTC", "cron": "x"}, "cron: unknown setting"),
    ({"match": {"label": "team"}, "days": ["fri"], "start": "01:00", "end": "02:00", "time_zone": "UTC"},
     'label: a label as "key=value"'),
    ({"match": {"region": "moon"}, "days": ["fri"], "start": "01:00", "end": "02:00", "time_zone": "UTC"},
     "'moon' is not a region"),
    ({"match": {"zone": "x"}, "days": ["fri"], "start": "01:00", "end": "02:00", "time_zone": "UTC"},
     "match.zone: unknown setting"),
])
def test_bad_window_rules_name_the_field(item, message):
    with pytest.raises(ConfigError, match="rollout.windows\\[0\\]") as err:
        parse_windows([item])
    assert message in str(err.value)


def test_bad_approval_mode_is_refused():
    from baseroll.config.windows import parse_approval
    with pytest.raises(ConfigError, match="rollout.approval: one of none, after-canary, every-wave"):
        parse_approval("sometimes")


# ------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("instant, expected", [
    ("2026-12-04T20:59", False),  # Fri 21:59 Berlin (CET, +01:00)
    ("2026-12-04T21:00", True),   # Fri 22:00: opens
    ("2026-12-05T00:59", True),   # Sat 01:59: still the Friday night range
    ("2026-12-05T01:00", False),  # Sat 02:00: closed
    ("2026-12-05T21:30", False),  # Sat 22:30: Saturday is not a listed day
    ("2026-12-07T22:00", False),  # Mon 23:00
])
def test_an_overnight_range_belongs_to_the_day_it_starts(instant, expected):
    fri_night = parse_windows([{"days": ["fri"], "start": "22:00", "end": "02:00", "time_zone": BERLIN}])
    assert W.is_open(fri_night, EAST, utc(instant)) is expected


def test_a_service_no_rule_matches_is_unrestricted():
    east_only = rules({"match": {"region": "us-east1"}, "start": "01:00", "end": "02:00"})
    noon = utc("2026-12-04T12:00")
    assert W.is_open(east_only, WEST, noon) and W.next_open(east_only, WEST, noon) == noon
    assert not W.is_open(east_only, EAST, noon)
    assert W.describe(east_only, WEST, noon) == "no window (any time)"


def test_several_matching_rules_are_a_union():
    both = rules({"match": {"region": "us-east1"}, "start": "01:00", "end": "02:00"},
                 {"match": {"label": "team=shop"}, "start": "12:00", "end": "13:00"})
    assert W.is_open(both, EAST, utc("2026-12-04T01:30"))  # the region's rule
    assert W.is_open(both, EAST, utc("2026-12-04T12:30"))  # the label's rule
    assert not W.is_open(both, EAST, utc("2026-12-04T06:00"))
    assert W.next_open(both, EAST, utc("2026-12-04T06:00")) == utc("2026-12-04T12:00")


def test_back_to_back_rules_close_at_the_end_of_the_last():
    chained = rules({"start": "20:00", "end": "24:00"}, {"start": "00:00", "end": "03:00"})
    assert W.open_until(chained, WEST, utc("2026-12-04T21:00")) == utc("2026-12-05T03:00")
    assert W.open_until(chained, WEST, utc("2026-12-04T10:00")) is None


def test_next_open_skips_to_the_next_listed_day():
    mondays = parse_windows([{"days": ["mon"], "start": "09:00", "end": "10:00", "time_zone": "America/New_York"}])
    # Friday 2026-12-04 noon UTC -> Monday 2026-12-07 09:00 EST = 14:00 UTC.
    assert W.next_open(mondays, WEST, utc("2026-12-04T12:00")) == utc("2026-12-07T14:00")
    assert W.next_open(mondays, WEST, utc("2026-12-07T14:30")) == utc("2026-12-07T14:30")  # open now
    assert W.next_open(mondays, WEST, utc("2026-12-07T15:00")) == utc("2026-12-14T14:00")


def test_dst_moves_the_utc_instant_but_not_the_wall_clock():
    nightly = parse_windows([{"days": ["sat", "sun"], "start": "01:00", "end": "04:00", "time_zone": BERLIN}])
    # Europe/Berlin springs forward on Sun 2026-03-29 (02:00 CET -> 03:00 CEST).
    assert W.next_open(nightly, WEST, utc("2026-03-28T12:00")) == utc("2026-03-29T00:00")  # Sun 01:00 CET
    assert W.open_until(nightly, WEST, utc("2026-03-29T00:30")) == utc("2026-03-29T02:00")  # Sun 04:00 CEST
    # A week later both ends are in CEST (+02:00).
    assert W.next_open(nightly, WEST, utc("2026-04-01T12:00")) == utc("2026-04-03T23:00")  # Sat 01:00 CEST
    # Falls back on Sun 2026-10-25 (03:00 CEST -> 02:00 CET): that night is an hour longer.
    assert W.open_until(nightly, WEST, utc("2026-10-24T23:30")) == utc("2026-10-25T03:00")
    assert W.next_open(nightly, WEST, utc("2026-10-24T22:59")) == utc("2026-10-24T23:00")


def test_a_range_inside_the_skipped_hour_never_opens_that_day():
    # 02:15-02:45 does not exist in Berlin on 2026-03-29; zoneinfo reads both in CET, the range stays 30 min.
    gap = parse_windows([{"days": ["sun"], "start": "02:15", "end": "02:45", "time_zone": BERLIN}])
    assert W.next_open(gap, WEST, utc("2026-03-28T12:00")) == utc("2026-03-29T01:15")
    # 02:30-03:00: the end (03:00 CEST = 01:00Z) comes before the start (02:30 CET = 01:30Z): empty.
    empty = parse_windows([{"days": ["sun"], "start": "02:30", "end": "03:00", "time_zone": BERLIN}])
    assert W.next_open(empty, WEST, utc("2026-03-28T12:00")) == utc("2026-04-05T00:30")  # a week later, CEST


def test_next_open_looks_past_a_week_whose_range_a_jump_empties(monkeypatch):
    empty = parse_windows([{"days": ["sun"], "start": "02:30", "end": "03:00", "time_zone": BERLIN}])
    monday = utc("2026-03-23T00:00")  # the only Sunday within 8 days is the spring-forward one
    assert W.next_open(empty, WEST, monday) == utc("2026-04-05T00:30")
    monkeypatch.setattr(W, "SEARCH_DAYS", 8)  # the bound is what ends the search
    assert W.next_open(empty, WEST, monday) is None
    assert W.describe(empty, WEST, monday) == "closed; no window opens within 8 days"


def test_a_naive_instant_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        W.is_open(rules({"start": "01:00", "end": "02:00"}), WEST, datetime(2026, 1, 1))


def test_split_open_and_earliest_open_for_a_held_wave():
    east_nights = rules({"match": {"region": "us-east1"}, "start": "22:00", "end": "23:00"})
    noon = utc("2026-12-04T12:00")
    open_now, closed = W.split_open(east_nights, [EAST, WEST], noon)
    assert (open_now, closed) == ([WEST], [EAST])
    assert W.earliest_open(east_nights, closed, noon) == utc("2026-12-04T22:00")
    assert W.earliest_open(east_nights, [], noon) is None


def test_describe_shows_the_rules_wall_clock_and_utc():
    fri_night = parse_windows([{"days": ["fri"], "start": "22:00", "end": "02:00", "time_zone": BERLIN}])
    assert W.describe(fri_night, EAST, utc("2026-12-04T12:00")) == \
        "closed; opens Fri 2026-12-04 22:00 Europe/Berlin (2026-12-04T21:00Z)"
    assert W.describe(fri_night, EAST, utc("2026-12-04T22:00")) == \
        "open until Sat 2026-12-05 02:00 Europe/Berlin (2026-12-05T01:00Z)"


def test_at_reads_a_clock_as_an_aware_utc_instant():
    assert W.at(1_764_892_800.0) == utc("2025-12-05T00:00")
    assert W.is_open(rules({"start": "00:00", "end": "01:00"}), WEST, W.at(1_764_892_800.0))


def test_a_place_from_a_name_is_matched_like_its_view():
    by_label = rules({"match": {"region": "us-east1", "label": "team=shop"}, "start": "01:00", "end": "02:00"})
    noon = utc("2026-12-04T12:00")
    assert W.label_keys(by_label) == {"team"} and W.label_keys(rules({"start": "01:00", "end": "02:00"})) == set()
    held = W.place(EAST.name, {"team": "shop"})
    assert (held.project, held.region) == ("shop-prod", "us-east1")
    assert not W.is_open(by_label, held, noon)
    assert W.is_open(by_label, W.place(EAST.name), noon)  # without the label no rule matches it
    assert W.place("projects/p/locations/europe-west1/jobs/nightly").region == "europe-west1"
    with pytest.raises(ValueError, match="not a full resource name"):
        W.place("cart")
