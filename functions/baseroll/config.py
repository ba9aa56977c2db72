"""Configuration: one YAML document, validated with clear errors, overridable by environment.

Functions read it from `BASEROLL_CONFIG` (a path) or `BASEROLL_CONFIG_YAML` (the document
itself); `BASEROLL_PROJECTS`, `BASEROLL_REGIONS` and `BASEROLL_CLOUD_RUN_ENDPOINT` override
single fields so one deployment's settings need no file edit.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import refs
from .refs import ImageRef, RefError

_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DRIFT_POLICIES = ("apply-or-refuse", "keep-app", "ignore")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class BaseTrack:
    name: str
    image: ImageRef  # registry/repository:tag that the track follows

    @property
    def repository(self) -> ImageRef:
        return self.image.with_tag(None)


@dataclass(frozen=True)
class Labels:
    opt_out: str = "baseroll-opt-out"  # value "true" opts a service out
    cohort: str = "baseroll-cohort"  # value "canary" puts a service in the first wave
    base: str = "baseroll-base"  # explicit base track name, when images carry no annotations


@dataclass(frozen=True)
class RolloutSettings:
    ready_timeout_s: float = 300.0
    concurrency: int = 8
    drift_policy: str = "apply-or-refuse"


@dataclass(frozen=True)
class Config:
    projects: tuple[str, ...]
    regions: tuple[str, ...]
    base_tracks: tuple[BaseTrack, ...]
    allowed_registries: frozenset[str]
    plain_http_registries: frozenset[str] = frozenset()
    labels: Labels = field(default_factory=Labels)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    cloud_run_endpoint: str | None = None  # None = Google's; set for the local stand-in

    @property
    def tracked_tags(self) -> set[ImageRef]:
        return {t.image for t in self.base_tracks}

    def track_for(self, image: ImageRef) -> BaseTrack | None:
        for track in self.base_tracks:
            if track.image == image:
                return track
        return None


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


def parse(doc: Any) -> Config:
    """Validate a parsed YAML document into a Config; raise ConfigError naming the bad field."""
    if not isinstance(doc, Mapping):
        raise ConfigError("config must be a mapping")
    projects = _list(doc, "projects")
    for p in projects:
        if not isinstance(p, str) or not _PROJECT.match(p):
            raise ConfigError(f"projects: {p!r} is not a project id")
    regions = _list(doc, "regions")
    for r in regions:
        if not isinstance(r, str) or not _REGION.match(r):
            raise ConfigError(f"regions: {r!r} is not a region (e.g. us-central1)")
    allowed = _list(doc, "allowed_registries")
    plain = _list(doc, "plain_http_registries", required=False)
    for host in [*allowed, *plain]:
        if not isinstance(host, str) or "/" in host or not host:
            raise ConfigError(f"registries: {host!r} must be host[:port]")
    allowed_set = frozenset(h.lower() for h in allowed)
    if not set(h.lower() for h in plain) <= allowed_set:
        raise ConfigError("plain_http_registries: every entry must also be in allowed_registries")
    tracks = []
    for i, item in enumerate(_list(doc, "base_tracks")):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item.get("name"):
            raise ConfigError(f"base_tracks[{i}]: needs a name")
        try:
            image = refs.parse(item.get("image", ""))
        except RefError as exc:
            raise ConfigError(f"base_tracks[{i}].image: {exc}") from None
        if image.tag is None or image.digest is not None:
            raise ConfigError(f"base_tracks[{i}].image: a track follows a tag (host/repo:tag), got {image}")
        if image.registry not in allowed_set:
            raise ConfigError(f"base_tracks[{i}].image: registry {image.registry} is not in allowed_registries")
        tracks.append(BaseTrack(name=item["name"], image=image))
    if len({t.name for t in tracks}) != len(tracks):
        raise ConfigError("base_tracks: names must be unique")
    label_doc = doc.get("labels") or {}
    if not isinstance(label_doc, Mapping):
        raise ConfigError("labels: must be a mapping")
    labels = Labels(**{k: label_doc[k] for k in ("opt_out", "cohort", "base") if k in label_doc})
    for key in (labels.opt_out, labels.cohort, labels.base):
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise ConfigError(f"labels: {key!r} is not a valid Cloud Run label key")
    ro = doc.get("rollout") or {}
    if not isinstance(ro, Mapping):
        raise ConfigError("rollout: must be a mapping")
    drift = ro.get("drift_policy", "apply-or-refuse")
    if drift not in DRIFT_POLICIES:
        raise ConfigError(f"rollout.drift_policy: one of {DRIFT_POLICIES}, got {drift!r}")
    rollout = RolloutSettings(
        ready_timeout_s=float(_number(ro, "ready_timeout_s", 300, 1, 3600)),
        concurrency=int(_number(ro, "concurrency", 8, 1, 256)),
        drift_policy=drift,
    )
    endpoint = doc.get("cloud_run_endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
        raise ConfigError("cloud_run_endpoint: must be an http(s) URL")
    return Config(
        projects=tuple(projects),
        regions=tuple(regions),
        base_tracks=tuple(tracks),
        allowed_registries=allowed_set,
        plain_http_registries=frozenset(h.lower() for h in plain),
        labels=labels,
        rollout=rollout,
        cloud_run_endpoint=endpoint,
    )


def load(env: Mapping[str, str] | None = None) -> Config:
    """Load from the environment (see module doc)."""
    env = os.environ if env is None else env
    if env.get("BASEROLL_CONFIG_YAML"):
        text = env["BASEROLL_CONFIG_YAML"]
    elif env.get("BASEROLL_CONFIG"):
        path = Path(env["BASEROLL_CONFIG"])
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"BASEROLL_CONFIG: cannot read {path}: {exc.strerror}") from None
    else:
        raise ConfigError("no configuration: set BASEROLL_CONFIG (a path) or BASEROLL_CONFIG_YAML")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from None
    if isinstance(doc, dict):
        doc = dict(doc)
        for key, var in (("projects", "BASEROLL_PROJECTS"), ("regions", "BASEROLL_REGIONS"),
                         ("cloud_run_endpoint", "BASEROLL_CLOUD_RUN_ENDPOINT")):
            if env.get(var):
                doc[key] = env[var]
    return parse(doc)
