"""Typed readers of one configuration field each, raising ConfigError that names the field."""
from __future__ import annotations

from typing import Any, Mapping

from baseroll.config.model import ConfigError


def _list(doc: Mapping[str, Any], key: str, *, required: bool = True) -> list[Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{key}: required")
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list")
    if required and not value:
        raise ConfigError(f"{key}: must not be empty")
    return value


def _number(doc: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"rollout.{key}: must be a number in [{lo}, {hi}], got {value!r}")
    return value


def _known(doc: Mapping[str, Any], prefix: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting (known: {', '.join(keys)})")


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"rollout.{key}: true or false, got {value!r}")
    return value


def _choice(doc: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = doc.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"rollout.{key}: one of {choices}, got {value!r}")
    return str(value)
