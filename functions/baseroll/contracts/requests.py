"""Roll requests: the versioned JSON schema of topic `baseroll-requests` (docs/REQUESTS.md).

A request asks baseroll to roll a base track (or redeploy a rebuilt app image) onto a digest,
to resume, approve or abort a rollout, or to sweep the fleet. Anyone with publish rights on the
topic can send one (the `baseroll publish` CLI, a Cloud Build step, `gcloud pubsub topics publish`), so the
parser is strict: unknown fields, fields that do not apply to the action and malformed values are
all refused with an `EventError` that names the field path, e.g.
``filter.regions[1]: 'moon' is not a region (e.g. us-central1)``.

`to_message` writes the canonical form (sorted keys, defaults omitted) that the CLI publishes;
``parse_request`` of it gives back an equal `Request`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from baseroll.contracts import ids
from baseroll.contracts.parsing import EventError, image_ref
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.contracts.roll import RollRequest
from baseroll.images import refs
from baseroll.images.refs import ImageRef

SCHEMA = "baseroll.dev/roll-request/v1"
MAX_MESSAGE_BYTES = 64 * 1024  # requests are a few hundred bytes; anything near this is not one
MAX_REASON_CHARS = 500
MAX_FILTER_ENTRIES = 1000  # per filter list / label map: bounds the work a single request can ask for

Action = Literal["roll", "resume", "abort", "sweep", "approve"]
Kind = Literal["base", "app"]
ACTIONS: tuple[str, ...] = ("roll", "resume", "abort", "sweep", "approve")

# Where a workload (service, job or worker pool) lives, read loosely: a location constraint needs only
# the project and region segments (a name is validated against ids.WORKLOAD_NAME where it enters, in
# `filter.services`).
_LOCATION = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/(?:services|jobs|workerPools)/[^/]+")

# Which top-level fields each action accepts ("schema" and "action" are always accepted).
_COMMON = frozenset({"schema", "action", "reason"})
_FIELDS: dict[str, frozenset[str]] = {
    "roll": _COMMON | {"base", "app", "digest", "filter", "dry_run"},
    "sweep": _COMMON | {"filter", "dry_run"},
    "resume": _COMMON | {"rollout_id"},
    "abort": _COMMON | {"rollout_id"},
    "approve": _COMMON | {"rollout_id"},  # a rollout awaiting approval (rollout.gates)
}
_KNOWN = frozenset().union(*_FIELDS.values())
_FILTER_FIELDS = ("projects", "regions", "labels", "services")


# --------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ServiceFilter:
    """Which services a request may touch; an empty field does not constrain.

    Lists are kept sorted and de-duplicated (they are sets), labels as sorted (key, value) pairs,
    so equal filters compare equal and the dataclass stays hashable.
    """

    projects: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    services: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists and a dict for labels from Python callers; store the canonical form.
        for name in ("projects", "regions", "services"):
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))
        labels = self.labels.items() if isinstance(self.labels, Mapping) else self.labels
        object.__setattr__(self, "labels", tuple(sorted(dict(labels).items())))

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def is_empty(self) -> bool:
        return not (self.projects or self.regions or self.labels or self.services)

    def matches(self, service_name: str, labels: Mapping[str, str]) -> bool:
        """True when the workload (full name ``projects/P/locations/R/services/S``, ``…/jobs/J`` or
        ``…/workerPools/W``) passes every constraint."""
        if self.services and service_name not in self.services:
            return False
        if self.projects or self.regions:
            m = _LOCATION.fullmatch(service_name)
            if m is None:  # cannot tell where it lives, so it cannot pass a location constraint
                return False
            if self.projects and m["project"] not in self.projects:
                return False
            if self.regions and m["region"] not in self.regions:
                return False
        return all(labels.get(k) == v for k, v in self.labels)

    def to_json(self) -> dict[str, Any]:
        """The filter object as it appears in a message; empty fields omitted."""
        doc: dict[str, Any] = {}
        if self.projects:
            doc["projects"] = list(self.projects)
        if self.regions:
            doc["regions"] = list(self.regions)
        if self.labels:
            doc["labels"] = dict(self.labels)
        if self.services:
            doc["services"] = list(self.services)
        return doc


@dataclass(frozen=True)
class Request:
    """A validated roll request. `image` never carries a digest: the digest is in `digest`."""

    action: Action
    kind: Kind | None = None  # roll only
    image: ImageRef | None = None  # roll: the base track tag (host/repo:tag) or the app image
    digest: str | None = None  # roll: the new digest (required for app, optional for base)
    filter: ServiceFilter = field(default_factory=ServiceFilter)
    dry_run: bool = False
    rollout_id: str | None = None  # resume / abort / approve
    reason: str | None = None  # free text for logs


@dataclass(frozen=True)
class ScopedRoll:
    """A roll request for the core, with the parts `RollRequest` has no field for."""

    roll: RollRequest
    filter: ServiceFilter
    reason: str | None = None


# --------------------------------------------------------------------------------------------- parsing


def parse_request(message: PubSubMessage) -> Request:
    """Validate a `baseroll-requests` message; raise `EventError` naming the offending field."""
    if len(message.data) > MAX_MESSAGE_BYTES:
        raise EventError(f"request is larger than {MAX_MESSAGE_BYTES} bytes ({len(message.data)})")
    doc = _decode(message.data)
    request = parse_document(doc)
    _check_attributes(message.attributes, request)
    return request


def parse_document(doc: Any) -> Request:
    """Validate an already decoded request document (see `parse_request`)."""
    if not isinstance(doc, dict):
        raise EventError(f"request must be a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _KNOWN)
    if unknown:
        raise EventError(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(map(repr, unknown))}")
    schema = doc.get("schema")
    if schema != SCHEMA:
        raise EventError(f"schema: expected {SCHEMA!r}, got {_show(schema)}")
    action = doc.get("action", "roll")
    if action not in ACTIONS:
        raise EventError(f"action: expected one of {', '.join(ACTIONS)}, got {_show(action)}")
    misplaced = sorted(set(doc) - _FIELDS[action])
    if misplaced:
        raise EventError(f"{misplaced[0]}: not allowed with action {action!r}")
    common: dict[str, Any] = {"action": action, "reason": _reason(doc.get("reason"))}
    if action == "roll":
        return Request(**common, **_roll_fields(doc))
    if action == "sweep":
        return Request(**common, filter=parse_filter(doc.get("filter")), dry_run=_bool(doc.get("dry_run"), "dry_run"))
    return Request(**common, rollout_id=_rollout_id(doc.get("rollout_id")))


def _decode(data: bytes) -> Any:
    """JSON with duplicate keys refused (which one would win is a parser's whim)."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except EventError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and int-digit limits are ValueErrors
        raise EventError(f"request is not valid JSON: {exc}") from None
    except RecursionError:
        raise EventError("request is not valid JSON: nested too deeply") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise EventError(f"{key}: duplicate field")
        doc[key] = value
    return doc


def _check_attributes(attributes: Mapping[str, str], request: Request) -> None:
    """The CLI also sets `schema`/`action` attributes (for subscription filters); they must not contradict."""
    if "schema" in attributes and attributes["schema"] != SCHEMA:
        raise EventError(f"attributes.schema: expected {SCHEMA!r}, got {_show(attributes['schema'])}")
    if "action" in attributes and attributes["action"] != request.action:
        raise EventError(
            f"attributes.action: {_show(attributes['action'])} disagrees with action {request.action!r} in the data"
        )


def _roll_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    has_base, has_app = doc.get("base") is not None, doc.get("app") is not None
    if has_base == has_app:
        raise EventError("base/app: a roll needs exactly one of 'base' (a base track tag) or 'app' (an app image)")
    kind: Kind = "base" if has_base else "app"
    ref = image_ref(doc[kind], kind)
    digest = _digest(doc.get("digest"), ref, kind)
    if kind == "base" and ref.tag is None:
        raise EventError(f"base: a base track is a tag (host/repo:tag[@digest]), got {_show(doc[kind])}")
    if kind == "app" and digest is None:
        raise EventError("digest: required for 'app' (in the reference as @sha256:... or in 'digest')")
    return {
        "kind": kind,
        "image": ImageRef(ref.registry, ref.repository, ref.tag, None),
        "digest": digest,
        "filter": parse_filter(doc.get("filter")),
        "dry_run": _bool(doc.get("dry_run"), "dry_run"),
    }


def _digest(value: Any, ref: ImageRef, kind: str) -> str | None:
    if value is None:
        return ref.digest
    if not isinstance(value, str) or not refs.DIGEST.fullmatch(value):
        raise EventError(f"digest: expected sha256:<64 lower-case hex>, got {_show(value)}")
    if ref.digest is not None and ref.digest != value:
        raise EventError(f"digest: {value} disagrees with the digest in {kind} ({ref.digest})")
    return value


def _bool(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise EventError(f"{path}: must be true or false, got {_show(value)}")
    return value


def _reason(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(f"reason: must be a string, got {type(value).__name__}")
    if len(value) > MAX_REASON_CHARS:
        raise EventError(f"reason: longer than {MAX_REASON_CHARS} characters ({len(value)})")
    return value


def _rollout_id(value: Any) -> str:
    if value is None:
        raise EventError("rollout_id: required")
    if not isinstance(value, str) or not ids.ROLLOUT_ID.fullmatch(value):
        raise EventError(f"rollout_id: {_show(value)} is not a rollout id ({ids.ROLLOUT_ID.pattern})")
    return value


def parse_filter(value: Any) -> ServiceFilter:
    """A filter object (as in a request, or carried in a rollout's messages) → ServiceFilter."""
    if value is None:
        return ServiceFilter()
    if not isinstance(value, dict):
        raise EventError(f"filter: must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_FILTER_FIELDS))
    if unknown:
        raise EventError(f"filter.{unknown[0]}: unknown field (expected {', '.join(_FILTER_FIELDS)})")
    return ServiceFilter(
        projects=_strings(value.get("projects"), "filter.projects", ids.PROJECT, "a project id"),
        regions=_strings(value.get("regions"), "filter.regions", ids.REGION, "a region (e.g. us-central1)"),
        labels=_labels(value.get("labels")),
        services=_services(value.get("services")),
    )


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EventError(f"{path}: must be a list, got {type(value).__name__}")
    if len(value) > MAX_FILTER_ENTRIES:
        raise EventError(f"{path}: more than {MAX_FILTER_ENTRIES} entries")
    return value


def _strings(value: Any, path: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    items = _list(value, path)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise EventError(f"{path}[{i}]: {_show(item)} is not {what}")
    return tuple(items)


def _services(value: Any) -> tuple[str, ...]:
    items = _list(value, "filter.services")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not ids.WORKLOAD_NAME.fullmatch(item):
            raise EventError(
                f"filter.services[{i}]: {_show(item)} is not a full service, job or worker pool name "
                "(projects/PROJECT/locations/REGION/services|jobs|workerPools/NAME)"
            )
    return tuple(items)


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise EventError(f"filter.labels: must be an object of strings, got {type(value).__name__}")
    if len(value) > MAX_FILTER_ENTRIES:
        raise EventError(f"filter.labels: more than {MAX_FILTER_ENTRIES} entries")
    for key, val in value.items():
        if not isinstance(key, str) or not ids.LABEL_KEY.fullmatch(key):
            raise EventError(f"filter.labels: {_show(key)} is not a label key")
        if not isinstance(val, str) or not ids.LABEL_VALUE.fullmatch(val):
            raise EventError(f"filter.labels.{key}: {_show(val)} is not a label value")
    return tuple(value.items())


def _show(value: Any, limit: int = 80) -> str:
    """A value for an error message, truncated: errors are logged and must stay one short line."""
    try:
        text = repr(value)
    except RecursionError:  # a deeply nested value from JSON
        return f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------- writing


def to_message(
    request: Request | None = None,
    *,
    action: str = "roll",
    base: str | ImageRef | None = None,
    app: str | ImageRef | None = None,
    digest: str | None = None,
    filter: ServiceFilter | Mapping[str, Any] | None = None,
    dry_run: bool = False,
    rollout_id: str | None = None,
    reason: str | None = None,
) -> bytes:
    """The canonical message bytes, from a `Request` or from the raw fields (which are not validated
    here: run `parse_request` on the result, as the CLI does)."""
    if request is not None:
        return _dump(to_document(request))
    doc: dict[str, Any] = {"schema": SCHEMA, "action": action}
    optional: dict[str, Any] = {
        "base": str(base) if base is not None else None,
        "app": str(app) if app is not None else None,
        "digest": digest,
        "filter": (filter.to_json() if isinstance(filter, ServiceFilter) else dict(filter)) if filter else None,
        "dry_run": dry_run or None,
        "rollout_id": rollout_id,
        "reason": reason or None,
    }
    doc.update({k: v for k, v in optional.items() if v is not None and v != {}})
    return _dump(doc)


def to_document(request: Request) -> dict[str, Any]:
    """The canonical JSON object of a validated request (defaults omitted)."""
    doc: dict[str, Any] = {"schema": SCHEMA, "action": request.action}
    if request.kind is not None and request.image is not None:
        doc[request.kind] = str(request.image)
    if request.digest is not None:
        doc["digest"] = request.digest
    if not request.filter.is_empty:
        doc["filter"] = request.filter.to_json()
    if request.dry_run:
        doc["dry_run"] = True
    if request.rollout_id is not None:
        doc["rollout_id"] = request.rollout_id
    if request.reason:
        doc["reason"] = request.reason
    return doc


def attributes(request: Request) -> dict[str, str]:
    """Pub/Sub attributes published with a request: let subscriptions filter without decoding data."""
    return {"schema": SCHEMA, "action": request.action}


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------- to the core


def to_roll_request(req: Request, event_id: str) -> ScopedRoll:
    """The core's `RollRequest` for a `roll` action, with the filter and reason beside it.
    """
    if req.action != "roll" or req.kind is None or req.image is None:
        raise ValueError(f"to_roll_request: action {req.action!r} is not a roll")
    roll = RollRequest(
        kind=req.kind,
        image=req.image,
        digest=req.digest,
        source="request",
        event_id=event_id,
        dry_run=req.dry_run,
    )
    return ScopedRoll(roll=roll, filter=req.filter, reason=req.reason)


def message(data: bytes, attributes: Mapping[str, str] | None = None, message_id: str = "") -> PubSubMessage:
    """A `PubSubMessage` around raw bytes: for callers that hold data, not an Eventarc envelope."""
    return PubSubMessage(message_id=message_id, data=data, attributes=dict(attributes or {}),
                         publish_time=None, subscription=None)
