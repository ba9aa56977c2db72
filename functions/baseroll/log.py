"""Structured JSON logs: one line per decision, with the `severity` field Cloud Logging reads."""
from __future__ import annotations

import json
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Any, TextIO

_lock = threading.Lock()
_use_stderr = False  # stdout is what Cloud Logging reads from a function; the CLI logs to stderr
_SEVERITIES = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")
_threshold = 0  # lines below this severity rank are dropped (`baseroll --json` keeps only errors)
# Never let a credential reach a log line, whatever a caller passes in.
_SECRET_KEYS = re.compile(r"(authorization|token|password|secret|credential)", re.I)
_BEARER = re.compile(r"(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _BEARER.sub(r"\1 [redacted]", value)
    if isinstance(value, dict):
        return {k: ("[redacted]" if _SECRET_KEYS.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _scrub(str(value))  # an exception or bytes could carry a token: scrub its text


def emit(event: str, severity: str = "INFO", *, stream: TextIO | None = None, **fields: Any) -> dict[str, Any]:
    """Write one JSON line: {"severity", "message": event, "time", **fields}. Returns the record."""
    record: dict[str, Any] = {
        "severity": severity,
        "message": event,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    record.update(_scrub({k: v for k, v in fields.items() if v is not None}))
    if _rank(severity) < _threshold:
        return record
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _lock:
        out = stream or (sys.stderr if _use_stderr else sys.stdout)
        out.write(line + "\n")
        out.flush()
    return record


def to_stderr(enabled: bool = True) -> None:
    """Send log lines to stderr (the CLI keeps stdout for its tables and --json)."""
    global _use_stderr
    _use_stderr = enabled


def only_from(severity: str) -> None:
    """Drop log lines below `severity` (one of DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL)."""
    global _threshold
    _threshold = _rank(severity)


def _rank(severity: str) -> int:
    return _SEVERITIES.index(severity) if severity in _SEVERITIES else 0


def info(event: str, **fields: Any) -> dict[str, Any]:
    return emit(event, "INFO", **fields)


def notice(event: str, **fields: Any) -> dict[str, Any]:
    return emit(event, "NOTICE", **fields)


def warning(event: str, **fields: Any) -> dict[str, Any]:
    return emit(event, "WARNING", **fields)


def error(event: str, **fields: Any) -> dict[str, Any]:
    return emit(event, "ERROR", **fields)
