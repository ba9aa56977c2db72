"""Cloud Build notifications (topic `cloud-builds`, docs/GOOGLE_APIS.md#cloud-build), parsed at the edge.

Cloud Build publishes on every state change, so most messages are QUEUED/WORKING noise: parsing
is cheap and `is_success` tells the handler whether there is anything to look at. Only images
listed under a build's `images:` appear in `results.images`; those are what a build produced.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from baseroll.contracts import ids
from baseroll.contracts.parsing import EventError, json_object
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.images import refs
from baseroll.images.refs import ImageRef, RefError

SUCCESS = "SUCCESS"
# Any upper-case token is accepted, so a status added to the API later is not a malformed event.
_STATUS = re.compile(r"^[A-Z][A-Z_]{0,39}$")
_BUILD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


@dataclass(frozen=True)
class BuiltImage:
    """One entry of `results.images`: what was pushed, under which name, with which digest."""

    name_ref: ImageRef  # as the build named it: registry/repository[:tag], never a digest
    digest: str

    @property
    def pinned(self) -> ImageRef:
        return self.name_ref.with_digest(self.digest)


@dataclass(frozen=True)
class BuildEvent:
    build_id: str
    project_id: str
    status: str
    images: tuple[BuiltImage, ...]  # from results.images; empty until the build pushed something
    substitutions: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()  # build tags, not image tags
    log_url: str | None = None
    trigger_id: str | None = None
    finish_time: str | None = None


def is_success(ev: BuildEvent) -> bool:
    return ev.status == SUCCESS


def parse_build(message: PubSubMessage) -> BuildEvent:
    """A `cloud-builds` message → `BuildEvent`; `EventError` with the reason when malformed."""
    body = json_object(message.data, "Cloud Build message data")
    build_id = _agreeing(body.get("id"), message.attributes.get("buildId"), "id", "buildId", _BUILD_ID)
    status = _agreeing(body.get("status"), message.attributes.get("status"), "status", "status", _STATUS)
    project_id = body.get("projectId")
    if not isinstance(project_id, str) or not ids.BUILD_PROJECT_ID.fullmatch(project_id):
        raise EventError(f"projectId: {_show(project_id)} is not a project id")
    return BuildEvent(
        build_id=build_id,
        project_id=project_id,
        status=status,
        images=_results_images(body.get("results")),
        substitutions=_string_map(body.get("substitutions"), "substitutions"),
        tags=_string_list(body.get("tags"), "tags"),
        log_url=_optional_string(body.get("logUrl"), "logUrl"),
        trigger_id=_optional_string(body.get("buildTriggerId"), "buildTriggerId"),
        finish_time=_optional_string(body.get("finishTime"), "finishTime"),
    )


def _agreeing(in_data: Any, in_attrs: str | None, data_name: str, attr_name: str, pattern: re.Pattern[str]) -> str:
    """A value carried both in the data and in an attribute: either may be missing, never both,
    and when both are there they must be the same (a mismatch means a forged or mangled message)."""
    if in_data is not None and (not isinstance(in_data, str) or not pattern.fullmatch(in_data)):
        raise EventError(f"{data_name}: {_show(in_data)} is malformed")
    if in_attrs is not None and not pattern.fullmatch(in_attrs):
        raise EventError(f"attributes.{attr_name}: {_show(in_attrs)} is malformed")
    if in_data is None and in_attrs is None:
        raise EventError(f"{data_name}: missing from both the data and attributes.{attr_name}")
    if in_data is not None and in_attrs is not None and in_data != in_attrs:
        raise EventError(f"{data_name}: {in_data!r} in the data disagrees with attributes.{attr_name} {in_attrs!r}")
    return in_data if in_data is not None else in_attrs  # type: ignore[return-value]


def _results_images(results: Any) -> tuple[BuiltImage, ...]:
    if results is None:
        return ()  # a build that has not pushed (yet), or pushes nothing under `images:`
    if not isinstance(results, dict):
        raise EventError(f"results: must be an object, got {type(results).__name__}")
    entries = results.get("images")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise EventError(f"results.images: must be a list, got {type(entries).__name__}")
    return tuple(_built_image(entry, f"results.images[{i}]") for i, entry in enumerate(entries))


def _built_image(entry: Any, path: str) -> BuiltImage:
    if not isinstance(entry, dict):
        raise EventError(f"{path}: must be an object, got {type(entry).__name__}")
    name, digest = entry.get("name"), entry.get("digest")
    if not isinstance(name, str):
        raise EventError(f"{path}.name: must be a string, got {type(name).__name__}")
    try:
        ref = refs.parse(name)
    except RefError as exc:
        raise EventError(f"{path}.name: {exc}") from None
    if not isinstance(digest, str) or not refs.DIGEST.fullmatch(digest):
        raise EventError(f"{path}.digest: {_show(digest)} is not a sha256 digest")
    if ref.digest is not None and ref.digest != digest:
        raise EventError(f"{path}: name is pinned to {ref.digest} but digest is {digest}")
    return BuiltImage(name_ref=ImageRef(ref.registry, ref.repository, ref.tag, None), digest=digest)


def _string_map(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise EventError(f"{path}: must map strings to strings")
    return dict(value)


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EventError(f"{path}: must be a list of strings")
    return tuple(value)


def _optional_string(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError(f"{path}: must be a string, got {type(value).__name__}")
    return value


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."

