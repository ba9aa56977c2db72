"""Shared helpers for parsing what reaches baseroll: one error type, strict JSON objects, image references."""
from __future__ import annotations

import json
from typing import Any

from baseroll.images import refs


class EventError(ValueError):
    """A malformed event: acknowledged, logged with this reason, otherwise ignored."""


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and int-digit limits are ValueErrors
        raise EventError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise EventError(f"{what} is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise EventError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def image_ref(value: Any, path: str) -> refs.ImageRef:
    """`value` as an image reference, or an EventError naming the field at `path`."""
    if not isinstance(value, str):
        raise EventError(f"{path}: must be a string, got {type(value).__name__}")
    try:
        return refs.parse(value)
    except refs.RefError as exc:
        raise EventError(f"{path}: {exc}") from None
