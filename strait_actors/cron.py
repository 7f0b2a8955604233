"""Cron schedules (engine.md §7.1): a 5-field expression read in a time zone, its matches as instants.

The expression matches wall-clock times; each match becomes an instant by these rules, which make
every tick fire exactly once across daylight-saving changes:

- a wall time the clock skips (spring forward: 02:30 on a day that jumps from 02:00 to 03:00) fires
  at the instant it would have been under the old offset (03:30 new time); two matches that land
  on one instant fire once.
- a wall time the clock shows twice (fall back) fires at its first occurrence only, unless the
  expression's hour field is `*`: a schedule that runs every hour keeps its pace in real time, so
  it also fires in the repeated hour.

A tick's fire key names the job and the instant's minute (`cron:job:<id>:<unix minute>`): the run
it creates carries it as its idempotency key, so however many schedulers see the tick, one run
is made of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

# a daylight-saving change moves clocks by at most this much (2 h in a few historical zones)
_MAX_SHIFT = timedelta(hours=2)


@lru_cache(maxsize=4096)
def zone(name: str | None) -> tzinfo:
    """The time zone of a job (`None`/empty: UTC). Raises ZoneInfoNotFoundError for unknown names."""
    return ZoneInfo(name) if name else UTC


_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def _every_hour(expr: str) -> bool:
    fields = _ALIASES.get(expr.strip().lower(), expr).split()
    return len(fields) > 1 and fields[1] == "*"


def _instants(expr: str, wall: datetime, tz: tzinfo) -> list[datetime]:
    """The instants at which the wall-clock match `wall` (naive) fires."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if tz is UTC or not _every_hour(expr):
        return [first]
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    # two instants that both read back as `wall`: the hour shown twice (in a skipped hour they do not)
    if second != first and second.astimezone(tz).replace(tzinfo=None) == wall:
        return [first, second]
    return [first]


def _near_shift(tz: tzinfo, at: datetime) -> bool:
    if tz is UTC:
        return False
    return (at - _MAX_SHIFT).astimezone(tz).utcoffset() != (at + _MAX_SHIFT).astimezone(tz).utcoffset()


def next_fire(expr: str, tz_name: str | None, after: datetime) -> datetime:
    """The first instant strictly after `after` (aware) at which the schedule fires, in UTC."""
    tz = zone(tz_name)
    wall = after.astimezone(tz).replace(tzinfo=None)
    if not _near_shift(tz, after):  # wall time runs with real time here: the next match is it
        t: datetime = croniter(expr, wall).get_next(datetime)
        return t.replace(tzinfo=tz).astimezone(UTC)
    # near a change: matches a little before `wall` may map after it, and one wall time may map to two
    it = croniter(expr, wall - _MAX_SHIFT)
    best: datetime | None = None
    while True:
        t = it.get_next(datetime)
        first = t.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if best is not None and first > best:  # instants only grow from here on
            return best
        for instant in _instants(expr, t, tz):
            if instant > after and (best is None or instant < best):
                best = instant


def latest_fire(expr: str, tz_name: str | None, at: datetime, not_before: datetime) -> datetime:
    """The last instant at or before `at` at which the schedule fires (the one tick a scheduler back
    from downtime fires), never earlier than `not_before` (a tick known to be due)."""
    tz = zone(tz_name)
    near = _near_shift(tz, at)
    wall = at.astimezone(tz).replace(tzinfo=None) + (_MAX_SHIFT if near else timedelta(0))
    it = croniter(expr, wall + timedelta(seconds=1))
    best = not_before
    for _ in range(1000):
        t = it.get_prev(datetime)
        for instant in _instants(expr, t, tz):
            if best < instant <= at:
                best = instant
        first = t.replace(tzinfo=tz, fold=0).astimezone(UTC)
        # far from a change instants fall with wall time (the first one at or before `at` is it);
        # near one, a wall time maps at most _MAX_SHIFT later
        if (first <= at) if not near else (first + _MAX_SHIFT <= best):
            break
    return best


def window_opening(expr: str, tz_name: str | None, ref: datetime) -> datetime | None:
    """An execution window (engine.md §2.6): None when the minute of `ref` matches `expr` in the
    zone (the run goes out as asked), else the next instant it matches (the run waits for it)."""
    tz = zone(tz_name)
    wall = ref.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    if croniter.match(_ALIASES.get(expr.strip().lower(), expr), wall):
        return None
    return next_fire(expr, tz_name, ref)


def fire_key(job_id: str, instant: datetime) -> str:
    """The tick's key: the job and the instant's unix minute."""
    return f"cron:job:{job_id}:{int(instant.timestamp()) // 60 * 60}"
