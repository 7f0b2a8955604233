"""Cron schedules as instants (engine.md §7.1): every wall-clock match fires once across daylight-
saving changes, in zones north and south and with a 30-minute shift; catch-up picks the latest tick."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from strait_actors import cron
from strait_actors.store import schedules


def fires(expr: str, tz: str, day: str) -> list[datetime]:
    """Every instant the schedule fires during the local calendar day."""
    z = ZoneInfo(tz)
    d = date.fromisoformat(day)
    start = datetime.combine(d, datetime.min.time(), z).astimezone(UTC)
    end = datetime.combine(d + timedelta(days=1), datetime.min.time(), z).astimezone(UTC)
    out, t = [], start - timedelta(microseconds=1)
    while (t := cron.next_fire(expr, tz, t)) < end:
        out.append(t)
    return out


def local(ts: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(ZoneInfo(tz)).strftime("%H:%M%z") for t in ts]


# (zone, spring-forward day, fall-back day)
ZONES = [
    ("America/New_York", "2026-03-08", "2026-11-01"),  # 02:00 -> 03:00, 02:00 -> 01:00
    ("Europe/Berlin", "2026-03-29", "2026-10-25"),  # 02:00 -> 03:00, 03:00 -> 02:00
    ("Australia/Sydney", "2026-10-04", "2026-04-05"),  # the southern hemisphere: October forward
]


@pytest.mark.parametrize(("tz", "spring", "fall"), ZONES)
def test_a_daily_tick_fires_once_on_both_change_days(tz: str, spring: str, fall: str) -> None:
    for day in (spring, fall):
        for expr in ("30 2 * * *", "30 1 * * *", "0 3 * * *", "0 12 * * *"):
            assert len(fires(expr, tz, day)) == 1, (tz, day, expr, local(fires(expr, tz, day), tz))


def test_wall_times_the_clock_skips_or_repeats() -> None:
    ny = "America/New_York"
    # 02:30 does not exist on 8 March: it fires at the instant 02:30 EST would be (03:30 EDT)
    assert local(fires("30 2 * * *", ny, "2026-03-08"), ny) == ["03:30-0400"]
    # 01:30 is shown twice on 1 November: the first one only
    assert local(fires("30 1 * * *", ny, "2026-11-01"), ny) == ["01:30-0400"]
    assert local(fires("30 2 * * *", ny, "2026-11-01"), ny) == ["02:30-0500"]


@pytest.mark.parametrize(("tz", "spring", "fall"), [*ZONES, ("Australia/Lord_Howe", "2026-10-04", "2026-04-05")])
def test_an_every_hour_schedule_keeps_its_pace_in_real_time(tz: str, spring: str, fall: str) -> None:
    for day, hours in ((spring, 23), (fall, 25)):
        got = fires("*/15 * * * *", tz, day)
        if tz == "Australia/Lord_Howe":  # a 30-minute change: half an hour fewer / more
            hours = 23.5 if day == spring else 24.5
        assert len(got) == hours * 4, (tz, day, len(got))
        assert {b - a for a, b in itertools.pairwise(got)} == {timedelta(minutes=15)}
        assert len({cron.fire_key("j", t) for t in got}) == len(got)  # every tick its own key


def test_utc_and_plain_days() -> None:
    assert len(fires("* * * * *", "UTC", "2026-03-08")) == 1440
    assert local(fires("0 9 * * 1-5", "Europe/Berlin", "2026-12-05"), "Europe/Berlin") == []  # a Saturday
    assert local(fires("@daily", "Asia/Kolkata", "2026-12-07"), "Asia/Kolkata") == ["00:00+0530"]
    after = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert cron.next_fire("0 * * * *", None, after) == datetime(2026, 12, 7, 11, 0, tzinfo=UTC)  # strictly after


def test_latest_fire_is_the_last_tick_at_or_before_now() -> None:
    at = datetime(2026, 12, 7, 10, 7, 30, tzinfo=UTC)
    due = datetime(2026, 12, 1, tzinfo=UTC)
    assert cron.latest_fire("*/5 * * * *", None, at, due) == datetime(2026, 12, 7, 10, 5, tzinfo=UTC)
    assert cron.latest_fire("*/5 * * * *", None, at.replace(minute=5, second=0), due) == at.replace(minute=5, second=0)
    # never before the tick known to be due
    assert cron.latest_fire("0 0 1 1 *", None, at, due) == due
    # in the repeated hour of New York's fall-back (06:40Z is 01:40 EST, the second 01:40)
    ny_at, floor = datetime(2026, 11, 1, 6, 40, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)
    assert cron.latest_fire("*/15 * * * *", "America/New_York", ny_at, floor) == datetime(
        2026, 11, 1, 6, 30, tzinfo=UTC
    )
    assert cron.latest_fire("30 1 * * *", "America/New_York", ny_at, floor) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_a_schedule_that_never_matches_is_parked() -> None:
    assert schedules._next("0 0 30 2 *", None, datetime(2026, 1, 1, tzinfo=UTC)) == schedules.NEVER
    assert cron.fire_key("abc", datetime(2026, 1, 1, 0, 0, 59, tzinfo=UTC)) == "cron:job:abc:1767225600"
