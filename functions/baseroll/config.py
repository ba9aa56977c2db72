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

from baseroll.contracts import ids
from baseroll.images import refs
from baseroll.images.rebase import DRIFT_POLICIES
from baseroll.images.refs import ImageRef, RefError

POLICIES = ("report", "require")  # what to do with a rebased image, whose new digest no signature covers


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class BaseTrack:
    name: str
    image: ImageRef  # registry/repository:tag that the track follows
    # fnmatch-style patterns of the repository's other tags that are versions of this track
    # (e.g. "3.12.*", "3.12-*"): an app built on one of them is this track's, though the track tag moved on.
    version_tags: tuple[str, ...] = ()

    @property
    def repository(self) -> ImageRef:
        return self.image.with_tag(None)


@dataclass(frozen=True)
class SigningPolicy:
    policy: str = "report"  # report: deploy and say the old signature does not carry; require: signed only
    request_topic: str | None = None  # where sign requests go (a signing step subscribes to it)


@dataclass(frozen=True)
class Labels:
    opt_out: str = "baseroll-opt-out"  # value "true" opts a service out
    cohort: str = "baseroll-cohort"  # value "canary" puts a service in the first wave
    app_tag: str = "baseroll-app-tag"  # the app tag a digest-pinned service was deployed from


@dataclass(frozen=True)
class FailureBudget:
    """Failures a wave may have before the rollout halts: a count, or a fraction of the wave."""

    count: int | None = 0
    fraction: float | None = None

    def exceeded(self, failures: int, wave_size: int) -> bool:
        if self.fraction is not None:
            return failures > self.fraction * wave_size
        return failures > (self.count or 0)


@dataclass(frozen=True)
class RolloutSettings:
    ready_timeout_s: float = 240.0  # fits an update, a rollback and both gates in one invocation
    pinned_traffic: str = "follow"  # follow | skip: a service whose traffic is not all on LATEST
    concurrency: int = 8  # tasks released at once per project x region before pacing takes over
    drift_policy: str = "apply-or-refuse"
    waves: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)  # cumulative fractions after the canary cohort
    failure_budget: FailureBudget = field(default_factory=FailureBudget)
    write_quota_per_min: int = 60  # Admin API writes per project x region
    region_quota: Mapping[str, int] = field(default_factory=dict)  # per-region overrides
    invocation_budget_s: float = 480.0  # stay inside the 540 s limit of an event-driven function
    poll_interval_s: float = 2.0
    dry_run: bool = False  # every trigger only plans and reports: a whole deployment in observe mode

    def quota_for(self, region: str) -> int:
        return int(self.region_quota.get(region, self.write_quota_per_min))


@dataclass(frozen=True)
class RegistryCredential:
    """One registry's username and where its password is: an environment variable or a file, as a
    Secret Manager secret reaches a function. The password itself never sits in the configuration."""

    host: str
    username: str
    password_env: str | None = None
    password_file: str | None = None
    # Hosts this registry may name as its token realm besides itself; each must be allow-listed too.
    token_hosts: tuple[str, ...] = ()


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
    cloud_run_transport: str = "grpc"  # google-cloud-run's default and production's; "rest" selectable
    pubsub_project: str | None = None  # project of the baseroll-* topics; None = first of `projects`
    signatures: SigningPolicy = field(default_factory=SigningPolicy)
    # Where rollout records and track lineage live (Firestore, native mode): project (None = the
    # topics' project) and database.
    store_project: str | None = None
    store_database: str = "(default)"
    registry_credentials: tuple[RegistryCredential, ...] = ()

    @property
    def topic_project(self) -> str:
        return self.pubsub_project or self.projects[0]

    @property
    def record_project(self) -> str:
        return self.store_project or self.topic_project

    @property
    def token_hosts(self) -> dict[str, tuple[str, ...]]:
        return {c.host: c.token_hosts for c in self.registry_credentials if c.token_hosts}

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
    _known(doc, "", TOP_LEVEL_KEYS)
    # Fields are checked in this order, so the first error reported stays the same.
    projects = _matching(doc, "projects", ids.PROJECT_ID, "a project id")
    regions = _matching(doc, "regions", ids.REGION, "a region (e.g. us-central1)")
    allowed, plain = _registries(doc)
    return Config(
        projects=projects,
        regions=regions,
        base_tracks=_tracks(doc, allowed),
        allowed_registries=allowed,
        plain_http_registries=plain,
        labels=_labels(doc.get("labels") or {}),
        rollout=_rollout(doc.get("rollout") or {}),
        **_store(doc.get("store") or {}),
        pubsub_project=_pubsub_project(doc.get("pubsub_project")),
        cloud_run_endpoint=_endpoint(doc.get("cloud_run_endpoint")),
        cloud_run_transport=_transport(doc.get("cloud_run_transport", "grpc")),
        signatures=_signatures(doc.get("signatures") or {}),
        registry_credentials=_credentials(_list(doc, "registry_credentials", required=False), allowed),
    )


def _matching(doc: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    values = _list(doc, key)
    for value in values:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ConfigError(f"{key}: {value!r} is not {what}")
    return tuple(values)


def _registries(doc: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The allow-listed registry hosts, and those of them reached over plain HTTP."""
    allowed = _list(doc, "allowed_registries")
    plain = _list(doc, "plain_http_registries", required=False)
    for host in [*allowed, *plain]:
        if not isinstance(host, str) or "/" in host or not host:
            raise ConfigError(f"registries: {host!r} must be host[:port]")
    allowed_set = frozenset(h.lower() for h in allowed)
    plain_set = frozenset(h.lower() for h in plain)
    if not plain_set <= allowed_set:
        raise ConfigError("plain_http_registries: every entry must also be in allowed_registries")
    return allowed_set, plain_set


def _credentials(items: list[Any], allowed: frozenset[str]) -> tuple[RegistryCredential, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"registry_credentials[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: a mapping with host, username and password_env or password_file")
        _known(item, f"{where}.", CREDENTIAL_KEYS)
        host, user = item.get("host"), item.get("username")
        if not isinstance(host, str) or host.lower() not in allowed:
            raise ConfigError(f"{where}.host: {host!r} is not in allowed_registries")
        if not isinstance(user, str) or not user:
            raise ConfigError(f"{where}.username: required")
        env, path = item.get("password_env"), item.get("password_file")
        usable = isinstance(env, str) and _ENV_NAME.fullmatch(env) if path is None else (
            env is None and isinstance(path, str) and path.startswith("/"))
        if not usable:
            raise ConfigError(f"{where}: exactly one of password_env (an environment variable name) and "
                              "password_file (an absolute path)")
        token_hosts = _list(item, "token_hosts", required=False)
        for token_host in token_hosts:  # credentials go to a token host: it must be named twice, on purpose
            if not isinstance(token_host, str) or token_host.lower() not in allowed:
                raise ConfigError(f"{where}.token_hosts: {token_host!r} must also be in allowed_registries")
        out.append(RegistryCredential(host.lower(), user, env, path, tuple(h.lower() for h in token_hosts)))
    if len({c.host for c in out}) != len(out):
        raise ConfigError("registry_credentials: one entry per host")
    return tuple(out)


CREDENTIAL_KEYS = ("host", "username", "password_env", "password_file", "token_hosts")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _tracks(doc: Mapping[str, Any], allowed: frozenset[str]) -> tuple[BaseTrack, ...]:
    tracks = []
    for i, item in enumerate(_list(doc, "base_tracks")):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item.get("name"):
            raise ConfigError(f"base_tracks[{i}]: needs a name")
        if not ids.TRACK_NAME.fullmatch(item["name"]):
            raise ConfigError(f"base_tracks[{i}].name: {item['name']!r} is not a track name "
                              "(1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)")
        try:
            image = refs.parse(item.get("image", ""))
        except RefError as exc:
            raise ConfigError(f"base_tracks[{i}].image: {exc}") from None
        if image.tag is None or image.digest is not None:
            raise ConfigError(f"base_tracks[{i}].image: a track follows a tag (host/repo:tag), got {image}")
        if image.registry not in allowed:
            raise ConfigError(f"base_tracks[{i}].image: registry {image.registry} is not in allowed_registries")
        tracks.append(BaseTrack(name=item["name"], image=image, version_tags=_version_tags(item, i)))
    if len({t.name for t in tracks}) != len(tracks):
        raise ConfigError("base_tracks: names must be unique")
    return tuple(tracks)


def _version_tags(item: Mapping[str, Any], i: int) -> tuple[str, ...]:
    """`base_tracks[i].version_tags`: tag patterns (tag characters plus the wildcards * ? [ ])."""
    value = item.get("version_tags")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"base_tracks[{i}].version_tags: a list of tag patterns, e.g. [\"3.12.*\", \"3.12-*\"]")
    for pattern in value:
        if not isinstance(pattern, str) or not _TAG_PATTERN.fullmatch(pattern):
            raise ConfigError(f"base_tracks[{i}].version_tags: {pattern!r} is not a tag pattern")
    return tuple(value)


_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")


def _labels(doc: Any) -> Labels:
    if not isinstance(doc, Mapping):
        raise ConfigError("labels: must be a mapping")
    _known(doc, "labels.", ("opt_out", "cohort", "app_tag"))
    labels = Labels(**{k: doc[k] for k in ("opt_out", "cohort", "app_tag") if k in doc})
    for key in (labels.opt_out, labels.cohort, labels.app_tag):
        if not isinstance(key, str) or not ids.LABEL_KEY.fullmatch(key):
            raise ConfigError(f"labels: {key!r} is not a valid Cloud Run label key")
    return labels


def _rollout(doc: Any) -> RolloutSettings:
    if not isinstance(doc, Mapping):
        raise ConfigError("rollout: must be a mapping")
    _known(doc, "rollout.", ROLLOUT_KEYS)
    drift = doc.get("drift_policy", "apply-or-refuse")
    if drift not in DRIFT_POLICIES:
        raise ConfigError(f"rollout.drift_policy: one of {DRIFT_POLICIES}, got {drift!r}")
    return RolloutSettings(
        ready_timeout_s=_ready_timeout(doc),
        pinned_traffic=_choice(doc, "pinned_traffic", PINNED_TRAFFIC),
        concurrency=int(_number(doc, "concurrency", 8, 1, 256)),
        drift_policy=drift,
        waves=_waves(doc.get("waves", [0.01, 0.1, 0.5, 1.0])),
        failure_budget=_budget(doc.get("failure_budget", 0)),
        write_quota_per_min=int(_number(doc, "write_quota_per_min", 60, 1, 1_000_000)),
        region_quota=_region_quota(doc.get("region_quota") or {}),
        invocation_budget_s=float(_number(doc, "invocation_budget_s", 480, 1, 540)),
        poll_interval_s=float(_number(doc, "poll_interval_s", 2, 0.01, 60)),
        dry_run=_bool(doc, "dry_run"),
    )


def _store(doc: Any) -> dict[str, str]:
    if not isinstance(doc, Mapping):
        raise ConfigError("store: must be a mapping")
    _known(doc, "store.", ("project", "database"))
    out = {}
    if "project" in doc:
        if not isinstance(doc["project"], str) or not ids.PROJECT_ID.fullmatch(doc["project"]):
            raise ConfigError(f"store.project: {doc['project']!r} is not a project id")
        out["store_project"] = doc["project"]
    if "database" in doc:
        if not isinstance(doc["database"], str) or not ids.FIRESTORE_DATABASE.fullmatch(doc["database"]):
            raise ConfigError(f"store.database: {doc['database']!r} is not a Firestore database id")
        out["store_database"] = doc["database"]
    return out


def _pubsub_project(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not ids.PROJECT_ID.fullmatch(value)):
        raise ConfigError(f"pubsub_project: {value!r} is not a project id")
    return value


def _endpoint(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.startswith(("http://", "https://"))):
        raise ConfigError("cloud_run_endpoint: must be an http(s) URL")
    return value


def _transport(value: Any) -> str:
    if value not in CLOUD_RUN_TRANSPORTS:
        raise ConfigError(f"cloud_run_transport: one of {CLOUD_RUN_TRANSPORTS}, got {value!r}")
    return value


def _signatures(doc: Any) -> SigningPolicy:
    if not isinstance(doc, Mapping):
        raise ConfigError("signatures: must be a mapping")
    _known(doc, "signatures.", ("policy", "request_topic"))
    policy = doc.get("policy", "report")
    if policy not in POLICIES:
        raise ConfigError(f"signatures.policy: one of {POLICIES}, got {policy!r}")
    topic = doc.get("request_topic")
    if topic is not None and (not isinstance(topic, str) or not ids.TOPIC_ID.fullmatch(topic)):
        raise ConfigError(f"signatures.request_topic: {topic!r} is not a topic id")
    return SigningPolicy(policy, topic)


TOP_LEVEL_KEYS = ("projects", "regions", "allowed_registries", "plain_http_registries", "base_tracks", "labels",
                  "rollout", "cloud_run_endpoint", "pubsub_project", "store", "signatures",
                  "registry_credentials", "cloud_run_transport")
CLOUD_RUN_TRANSPORTS = ("grpc", "rest")
# The worker is an event-driven function: at most 540 s per invocation
# (https://cloud.google.com/functions/docs/configuring/timeout; docs/GOOGLE_APIS.md#cloud-run-admin-api-v2).
FUNCTION_TIMEOUT_S = 540.0
WORKER_MARGIN_S = 30.0  # the worker's reads before the update and its result after the gates
PINNED_TRAFFIC = ("follow", "skip")


def _ready_timeout(doc: Mapping[str, Any]) -> float:
    """A failed update is gated, rolled back and gated again inside one invocation: each gate may
    take the whole `ready_timeout_s`, so two of them and the margin must fit the function's limit."""
    value = float(_number(doc, "ready_timeout_s", 240, 1, 3600))
    most = (FUNCTION_TIMEOUT_S - WORKER_MARGIN_S) / 2
    if value > most:
        raise ConfigError(
            f"rollout.ready_timeout_s: at most {most:g} s, got {value:g}: an update and its readiness gate, then a "
            f"rollback and its gate, each up to ready_timeout_s, plus {WORKER_MARGIN_S:g} s of the worker's own "
            f"work must fit the {FUNCTION_TIMEOUT_S:g} s limit of an event-driven function")
    return value


def _choice(doc: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = doc.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"rollout.{key}: one of {choices}, got {value!r}")
    return str(value)


ROLLOUT_KEYS = ("ready_timeout_s", "pinned_traffic", "concurrency", "drift_policy", "waves", "failure_budget", "write_quota_per_min",
                "region_quota", "invocation_budget_s", "poll_interval_s", "dry_run")


def _known(doc: Mapping[str, Any], prefix: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting (known: {', '.join(keys)})")


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"rollout.{key}: true or false, got {value!r}")
    return value


def _waves(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("rollout.waves: a non-empty list of cumulative fractions, e.g. [0.01, 0.1, 0.5, 1.0]")
    waves = []
    for w in value:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
            raise ConfigError(f"rollout.waves: {w!r} is not a fraction in (0, 1]")
        waves.append(float(w))
    if waves != sorted(set(waves)) or waves[-1] != 1.0:
        raise ConfigError("rollout.waves: must be strictly increasing and end at 1.0")
    return tuple(waves)


def _budget(value: Any) -> FailureBudget:
    if isinstance(value, bool):
        raise ConfigError("rollout.failure_budget: a count (e.g. 1) or a percentage (e.g. '5%')")
    if isinstance(value, int) and value >= 0:
        return FailureBudget(count=value)
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            pct = -1
        if 0 <= pct <= 100:
            return FailureBudget(count=None, fraction=pct / 100)
    raise ConfigError(f"rollout.failure_budget: a count (e.g. 1) or a percentage (e.g. '5%'), got {value!r}")


def _region_quota(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ConfigError("rollout.region_quota: a mapping region -> writes per minute")
    out = {}
    for region, quota in value.items():
        if not isinstance(region, str) or not ids.REGION.fullmatch(region):
            raise ConfigError(f"rollout.region_quota: {region!r} is not a region")
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            raise ConfigError(f"rollout.region_quota.{region}: a positive integer")
        out[region] = quota
    return out


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
                         ("cloud_run_endpoint", "BASEROLL_CLOUD_RUN_ENDPOINT"),
                         ("cloud_run_transport", "BASEROLL_CLOUD_RUN_TRANSPORT")):
            if env.get(var):
                doc[key] = env[var]
    return parse(doc)
