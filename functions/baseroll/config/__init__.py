"""Configuration: one YAML document, validated with clear errors, overridable by environment.

Functions read it from `BASEROLL_CONFIG` (a path) or `BASEROLL_CONFIG_YAML` (the document
itself); `BASEROLL_PROJECTS`, `BASEROLL_REGIONS` and `BASEROLL_CLOUD_RUN_ENDPOINT` override
single fields so one deployment's settings need no file edit.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from baseroll.config.credentials import _credentials
from baseroll.config.fields import _known, _list
from baseroll.config.model import (
    POLICIES,
    BaseTrack,
    Config,
    ConfigError,
    FailureBudget,
    Labels,
    RegistryCredential,
    RolloutSettings,
    SigningPolicy,
    VerifySettings,
)
from baseroll.config.rollout import _rollout
from baseroll.contracts import ids
from baseroll.images import refs
from baseroll.images.refs import RefError

__all__ = ['BaseTrack', 'Config', 'ConfigError', 'FailureBudget', 'Labels', 'POLICIES', 'RegistryCredential', 'RolloutSettings', 'SigningPolicy', 'VerifySettings', 'load', 'parse']


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


LABEL_KEYS = ("opt_out", "cohort", "app_tag", "verify", "verify_path", "verify_execution")
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")


def _labels(doc: Any) -> Labels:
    if not isinstance(doc, Mapping):
        raise ConfigError("labels: must be a mapping")
    _known(doc, "labels.", LABEL_KEYS)
    labels = Labels(**{k: doc[k] for k in LABEL_KEYS if k in doc})
    for key in (labels.opt_out, labels.cohort, labels.app_tag, labels.verify, labels.verify_path,
                labels.verify_execution):
        if not isinstance(key, str) or not ids.LABEL_KEY.fullmatch(key):
            raise ConfigError(f"labels: {key!r} is not a valid Cloud Run label key")
    return labels


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
