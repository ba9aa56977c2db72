"""baseroll's own messages on `baseroll-tasks` and `baseroll-results`: versioned JSON, parsed strictly.

- `Task`: roll one workload (a service, job or worker pool, by its name) to its target images (worker).
- `Result`: what the worker did (recorded beside the rollout record; the coordinator settles waves on it).
- `Step`: the coordinator's own continuation: "work on wave W of rollout R from position C".
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from baseroll.contracts import ids
from baseroll.contracts.parsing import EventError, json_object
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.images import refs

SCHEMA = "baseroll.dev/v1"


@dataclass(frozen=True)
class Rollout:
    """What identifies a rollout in every message: its id, its track and the base digest it rolls to."""

    rollout_id: str
    track: str  # base track name, or "app" for a redeploy of a rebuilt app image
    track_image: str  # host/repo:tag of the track (or app image) being followed
    base_digest: str  # the digest rolled to
    kind: str = "base"  # base | app
    scope: Mapping[str, Any] = field(default_factory=dict)  # the request's service filter, as JSON


@dataclass(frozen=True)
class Task:
    rollout: Rollout
    service: str
    wave: int
    expected: tuple[str, ...]  # container images when planned
    targets: Mapping[str, str]  # container index (as string, JSON keys) -> image by digest
    base_uris: Mapping[str, str] = field(default_factory=dict)  # container index -> base_image_uri by digest

    kind = "task"


@dataclass(frozen=True)
class Result:
    rollout: Rollout
    service: str
    wave: int
    outcome: str
    reason: str = ""
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    kind = "result"


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    wave: int
    cursor: int = 0  # how many of the wave's members were already released
    released_at: float | None = None  # when the whole wave was released (epoch seconds)
    seq: int = 0  # increases with every step; a stale duplicate carries an old one
    halted_failures: int = 0  # failures already accepted by a `resume`
    plan: int = 0  # the seq of the stored wave plan the step walks (rollout.waveplan); 0: plan the fleet first

    kind = "step"


def encode(msg: Task | Result | Step) -> tuple[bytes, dict[str, str]]:
    body = {"schema": SCHEMA, "kind": msg.kind, **asdict(msg)}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode(), {
        "schema": SCHEMA, "kind": msg.kind, "rollout_id": msg.rollout.rollout_id,
    }


def _str(doc: Mapping[str, Any], key: str, pattern: re.Pattern | None = None) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
        raise EventError(f"{key}: missing or malformed")
    return value


def _int(doc: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EventError(f"{key}: a non-negative integer")
    return value


def _images(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 32:
        raise EventError(f"{key}: a list of image references")
    return tuple(value)


def _rollout(doc: Any) -> Rollout:
    if not isinstance(doc, Mapping):
        raise EventError("rollout: an object")
    track_image = _str(doc, "track_image")
    try:
        refs.parse(track_image)
    except refs.RefError as exc:
        raise EventError(f"rollout.track_image: {exc}") from None
    digest = _str(doc, "base_digest")
    if not refs.DIGEST.fullmatch(digest):
        raise EventError("rollout.base_digest: a sha256 digest")
    kind = doc.get("kind", "base")
    if kind not in ("base", "app"):
        raise EventError("rollout.kind: base or app")
    scope = doc.get("scope") or {}
    if not isinstance(scope, Mapping):
        raise EventError("rollout.scope: an object")
    return Rollout(_str(doc, "rollout_id", ids.ROLLOUT_ID), _str(doc, "track"), track_image, digest, kind, dict(scope))


def _pinned_map(doc: Mapping[str, Any], key: str, *, required: bool) -> dict[str, str]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping) or (required and not value) or len(value) > 32:
        raise EventError(f"{key}: an object of container index -> image by digest")
    for index, image in value.items():
        if not re.fullmatch(r"[0-9]{1,2}", str(index)) or not isinstance(image, str):
            raise EventError(f"{key}: container index -> image")
        try:
            if refs.parse(image).digest is None:
                raise EventError(f"{key}.{index}: must be pinned by digest")
        except refs.RefError as exc:
            raise EventError(f"{key}.{index}: {exc}") from None
    return dict(value)


def decode(message: PubSubMessage) -> Task | Result | Step:
    doc = json_object(message.data, "baseroll message")
    if doc.get("schema") != SCHEMA:
        raise EventError(f"schema: expected {SCHEMA!r}, got {doc.get('schema')!r}")
    kind = doc.get("kind")
    rollout = _rollout(doc.get("rollout"))
    if kind == "task":
        targets = _pinned_map(doc, "targets", required=False)
        base_uris = _pinned_map(doc, "base_uris", required=False)
        if not targets and not base_uris:
            raise EventError("targets: a task changes at least one container")
        expected = _images(doc, "expected")
        if any(int(i) >= len(expected) for i in [*targets, *base_uris]):
            raise EventError("targets: container index beyond the expected images")
        return Task(rollout, _str(doc, "service", ids.WORKLOAD_NAME), _int(doc, "wave"), expected, targets, base_uris)
    if kind == "result":
        reason = doc.get("reason", "")
        return Result(rollout, _str(doc, "service", ids.WORKLOAD_NAME), _int(doc, "wave"), _str(doc, "outcome"),
                      reason if isinstance(reason, str) else "", _images(doc, "before"), _images(doc, "after"))
    if kind == "step":
        released = doc.get("released_at")
        if released is not None and (isinstance(released, bool) or not isinstance(released, (int, float))):
            raise EventError("released_at: epoch seconds")
        return Step(rollout, _int(doc, "wave"), _int(doc, "cursor", 0), released, _int(doc, "seq", 0),
                    _int(doc, "halted_failures", 0), _int(doc, "plan", 0))
    raise EventError(f"kind: one of task, result, step; got {kind!r}")
