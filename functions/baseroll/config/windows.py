"""`rollout.windows` and `rollout.approval`: when baseroll may write to a service, and where it waits for a person.

A window rule names which services it restricts (`match`: project, region, one label; every given
field must hold; an empty match restricts every service), the days it opens on and a local time
range in an IANA time zone. A range whose end is not after its start runs past midnight into the
next day (22:00-02:00 opens Friday 22:00 for a rule on `fri`). Evaluation is `rollout.windows`.
"""
from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baseroll.config.fields import _known
from baseroll.config.model import ConfigError
from baseroll.contracts import ids

APPROVALS = ("none", "after-canary", "every-wave")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
MAX_WINDOWS = 100
_TIME = re.compile(r"(?P<h>[01][0-9]|2[0-3]):(?P<m>[0-5][0-9])|(?P<midnight>24:00)")
_RULE_KEYS = ("match", "days", "start", "end", "time_zone")
_MATCH_KEYS = ("project", "region", "label")


@dataclass(frozen=True)
class WindowRule:
    """One rule: on `days`, from `start` to `end` (minutes after local midnight) in `time_zone`."""

    days: frozenset[int]  # 0 = Monday
    start: int
    end: int  # <= start: the range ends on the next day
    time_zone: str
    project: str | None = None
    region: str | None = None
    label: tuple[str, str] | None = None

    def matches(self, project: str, region: str, labels: Mapping[str, str]) -> bool:
        if self.project is not None and project != self.project:
            return False
        if self.region is not None and region != self.region:
            return False
        return self.label is None or labels.get(self.label[0]) == self.label[1]

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)  # cached by zoneinfo; validated when parsed


def parse_approval(value: Any) -> str:
    if value not in APPROVALS:
        raise ConfigError(f"rollout.approval: one of {', '.join(APPROVALS)}, got {value!r}")
    return str(value)


def parse_windows(value: Any) -> tuple[WindowRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("rollout.windows: a list of {match, days, start, end, time_zone}")
    if len(value) > MAX_WINDOWS:
        raise ConfigError(f"rollout.windows: at most {MAX_WINDOWS} rules, got {len(value)}")
    return tuple(_rule(item, f"rollout.windows[{i}]") for i, item in enumerate(value))


def _rule(item: Any, path: str) -> WindowRule:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{path}: a mapping with days, start, end, time_zone (and an optional match)")
    _known(item, f"{path}.", _RULE_KEYS)
    start, end = _time(item.get("start"), f"{path}.start"), _time(item.get("end"), f"{path}.end")
    if start == end:
        raise ConfigError(f"{path}: start and end are both {item.get('start')}; for a whole day use 00:00-24:00")
    if start == 24 * 60:
        raise ConfigError(f"{path}.start: 24:00 is only an end")
    project, region, label = _match(item.get("match"), f"{path}.match")
    return WindowRule(_days(item.get("days"), f"{path}.days"), start, end, _zone(item.get("time_zone"), path),
                      project, region, label)


def _time(value: Any, path: str) -> int:
    m = _TIME.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"{path}: a time HH:MM (00:00-23:59, or 24:00 as an end), got {value!r}")
    return 24 * 60 if m["midnight"] else int(m["h"]) * 60 + int(m["m"])


def _days(value: Any, path: str) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: a non-empty list of {', '.join(DAYS)}")
    out = set()
    for day in value:
        if not isinstance(day, str) or day.lower() not in DAYS:
            raise ConfigError(f"{path}: {day!r} is not one of {', '.join(DAYS)}")
        out.add(DAYS.index(day.lower()))
    return frozenset(out)


def _zone(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}.time_zone: required, an IANA time zone name such as Europe/Berlin or UTC")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{path}.time_zone: {value!r} is not an IANA time zone name (e.g. Europe/Berlin, UTC)") \
            from None
    return value


def _match(value: Any, path: str) -> tuple[str | None, str | None, tuple[str, str] | None]:
    if value is None:
        return None, None, None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: a mapping of project, region, label")
    _known(value, f"{path}.", _MATCH_KEYS)
    project, region, label = value.get("project"), value.get("region"), value.get("label")
    if project is not None and (not isinstance(project, str) or not ids.PROJECT.fullmatch(project)):
        raise ConfigError(f"{path}.project: {project!r} is not a project id")
    if region is not None and (not isinstance(region, str) or not ids.REGION.fullmatch(region)):
        raise ConfigError(f"{path}.region: {region!r} is not a region (e.g. us-central1)")
    return project, region, None if label is None else _label(label, f"{path}.label")


def _label(value: Any, path: str) -> tuple[str, str]:
    key, sep, val = value.partition("=") if isinstance(value, str) else ("", "", "")
    if not sep or not ids.LABEL_KEY.fullmatch(key) or not ids.LABEL_VALUE.fullmatch(val):
        raise ConfigError(f"{path}: a label as \"key=value\", got {value!r}")
    return key, val
