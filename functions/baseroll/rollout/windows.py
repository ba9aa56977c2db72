"""Maintenance windows, evaluated: may a service be written now, and when may it next.

Pure: rules come from the configuration (`config.windows.WindowRule`), the instant is an aware UTC
datetime the caller reads from its clock. The rules (README.md#maintenance-windows):

- A service no rule matches is unrestricted: always open.
- A service several rules match is open when any of them is open (their union), so a set of rules
  with the same `match` reads as one schedule ("weeknights 22:00-02:00, and all of Sunday").
- A rule opens on each of its `days` at `start`, local time in its `time_zone`, and closes at `end`
  the same day, or the next day when `end` is not after `start` (an overnight range).
- Local times are turned into instants by Python's zoneinfo with fold=0: a start or end that a
  daylight-saving jump skips (02:30 on a spring-forward night in Europe/Berlin) means the same wall
  time in the offset before the jump, one that occurs twice (fall back) its first occurrence. A
  range left empty or reversed by a jump opens not at all that day.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol, TypeVar

from baseroll.config.windows import DAYS, WindowRule

# Every weekly schedule opens within a week, unless a daylight-saving jump empties that week's range:
# two weeks and a day (for an overnight range) always find the next opening of a weekly rule.
SEARCH_DAYS = 15


class Located(Protocol):
    """What a rule matches on: a service view (fleet.view.ServiceView) or anything shaped like one."""

    @property
    def project(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


V = TypeVar("V", bound=Located)


@dataclass(frozen=True)
class Place:
    """Where a service lives and the labels rules may match: for callers that hold a name, not a view
    (a stored wave plan keeps only the labels `label_keys` names)."""

    project: str
    region: str
    labels: Mapping[str, str] = field(default_factory=dict)


def place(service_name: str, labels: Mapping[str, str] | None = None) -> Place:
    """The Place of `projects/P/locations/R/<kind>/NAME`."""
    parts = service_name.split("/")
    if len(parts) < 4 or parts[0] != "projects" or parts[2] != "locations":
        raise ValueError(f"{service_name!r} is not a full resource name (projects/P/locations/R/...)")
    return Place(parts[1], parts[3], dict(labels or {}))


def label_keys(windows: Sequence[WindowRule]) -> set[str]:
    """The label keys any rule matches on: all a stored plan needs to keep of a member's labels."""
    return {w.label[0] for w in windows if w.label is not None}


def at(epoch_s: float) -> datetime:
    """The instant of a clock reading (`Clock.now()`, epoch seconds), as the functions here take it."""
    return datetime.fromtimestamp(epoch_s, UTC)


def rules_for(windows: Sequence[WindowRule], service: Located) -> list[WindowRule]:
    return [w for w in windows if w.matches(service.project, service.region, service.labels)]


def _utc(now_utc: datetime) -> datetime:
    if now_utc.tzinfo is None:
        raise ValueError("rollout.windows: the instant must be timezone-aware (UTC)")
    return now_utc.astimezone(UTC)


def _at(rule: WindowRule, day: date, minutes: int) -> datetime:
    """The instant of local `day` + `minutes` in the rule's zone (24:00 is the next day's 00:00)."""
    if minutes == 24 * 60:
        day, minutes = day + timedelta(days=1), 0
    return datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=rule.zone).astimezone(UTC)


def _intervals(rule: WindowRule, now: datetime, first: int, last: int) -> Iterator[tuple[datetime, datetime]]:
    """The rule's open intervals (UTC) starting on local days first..last relative to `now`'s local day."""
    today = now.astimezone(rule.zone).date()
    for offset in range(first, last + 1):
        day = today + timedelta(days=offset)
        if day.weekday() not in rule.days:
            continue
        end_day = day if rule.end > rule.start else day + timedelta(days=1)
        start, end = _at(rule, day, rule.start), _at(rule, end_day, rule.end)
        if start < end:
            yield start, end


def is_open(windows: Sequence[WindowRule], service: Located, now_utc: datetime) -> bool:
    """True when `service` may be written at `now_utc`."""
    return open_until(windows, service, now_utc) is not None


def open_until(windows: Sequence[WindowRule], service: Located, now_utc: datetime) -> datetime | None:
    """When the window `service` is in now closes (datetime.max for an unrestricted service); None
    when it is closed. Overlapping or back-to-back intervals of its rules count as one."""
    now = _utc(now_utc)
    rules = rules_for(windows, service)
    if not rules:
        return datetime.max.replace(tzinfo=UTC)
    until = None
    for start, end in sorted(span for rule in rules for span in _intervals(rule, now, -1, SEARCH_DAYS)):
        reached = until or now
        if start <= reached < end:
            until = end
    return until


def next_open(windows: Sequence[WindowRule], service: Located, now_utc: datetime) -> datetime | None:
    """`now_utc` when `service` may be written now, else the next instant it may (within
    SEARCH_DAYS); None when none of its rules opens in that time (a range every day of which a
    daylight-saving jump empties)."""
    now = _utc(now_utc)
    if is_open(windows, service, now):
        return now
    starts = [start for rule in rules_for(windows, service)
              for start, _ in _intervals(rule, now, 0, SEARCH_DAYS) if start > now]
    return min(starts, default=None)


def split_open(windows: Sequence[WindowRule], services: Iterable[V], now_utc: datetime) -> tuple[list[V], list[V]]:
    """(the services that may be written now, those that must wait), in the given order."""
    open_now: list[V] = []
    closed: list[V] = []
    for svc in services:
        (open_now if is_open(windows, svc, now_utc) else closed).append(svc)
    return open_now, closed


def earliest_open(windows: Sequence[WindowRule], services: Iterable[Located], now_utc: datetime) -> datetime | None:
    """The first instant any of `services` may be written (when a held wave can go on); None if never."""
    found = [t for t in (next_open(windows, s, now_utc) for s in services) if t is not None]
    return min(found, default=None)


def describe(windows: Sequence[WindowRule], service: Located, now_utc: datetime) -> str:
    """One line for dry runs and `status`: whether the service may be written now, and until or from when."""
    rules = rules_for(windows, service)
    if not rules:
        return "no window (any time)"
    zone = rules[0].zone
    until = open_until(windows, service, now_utc)
    if until is not None:
        return f"open until {_local(until, zone)}"
    nxt = next_open(windows, service, now_utc)
    if nxt is None:
        return f"closed; no window opens within {SEARCH_DAYS} days"
    return f"closed; opens {_local(nxt, zone)}"


def _local(instant: datetime, zone: object) -> str:
    """`Fri 22:00 Europe/Berlin (21:00Z)`: the rule's wall clock first, UTC beside it."""
    local = instant.astimezone(zone)  # type: ignore[arg-type]
    return f"{DAYS[local.weekday()].capitalize()} {local:%Y-%m-%d %H:%M} {zone} ({instant:%Y-%m-%dT%H:%MZ})"
