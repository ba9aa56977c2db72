"""Artifact Registry pushes (topic `gcr`) at the edge (docs/GOOGLE_APIS.md#artifact-registry).

A push becomes either a `RollRequest` (a tag that a base track follows moved) or an `Ignored`
(a well-formed event that is not for us, with the reason). A malformed one raises `EventError`;
the entry point acknowledges it and logs the reason, and nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baseroll.contracts.parsing import EventError, image_ref, json_object
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.contracts.roll import RollRequest
from baseroll.images.refs import ImageRef


@dataclass(frozen=True)
class ArtifactPush:
    """An Artifact Registry notification from topic `gcr` (docs/GOOGLE_APIS.md#artifact-registry)."""

    action: str  # INSERT | DELETE
    digest: ImageRef | None  # pinned by digest
    tag: ImageRef | None  # carries the tag


@dataclass(frozen=True)
class Ignored:
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def _ref(value: Any, field_name: str) -> ImageRef | None:
    return None if value is None or value == "" else image_ref(value, field_name)


def artifact_push(message: PubSubMessage) -> ArtifactPush:
    """Parse an Artifact Registry `gcr` message body (docs/GOOGLE_APIS.md#artifact-registry)."""
    body = json_object(message.data, "Artifact Registry message data")
    action = body.get("action")
    if action not in ("INSERT", "DELETE"):
        raise EventError(f"action must be INSERT or DELETE, got {action!r}")
    digest = _ref(body.get("digest"), "digest")
    tag = _ref(body.get("tag"), "tag")
    if digest is None and tag is None:
        raise EventError("neither 'digest' nor 'tag' is present")
    if digest is not None and digest.digest is None:
        raise EventError(f"digest {digest} is not pinned by a sha256 digest")
    if tag is not None and tag.tag is None:
        raise EventError(f"tag {tag} has no tag")
    if digest is not None and tag is not None and digest.name != tag.name:
        raise EventError(f"digest {digest.name} and tag {tag.name} name different images")
    return ArtifactPush(action=action, digest=digest, tag=tag)


def roll_request_from_push(push: ArtifactPush, tracked_tags: set[ImageRef], event_id: str) -> RollRequest | Ignored:
    """Decide whether a push moves a tag that a base track follows. Cheap: no I/O."""
    if push.action != "INSERT":
        return Ignored("not an INSERT", {"action": push.action})
    if push.tag is None:
        return Ignored("push by digest without a tag", {"image": str(push.digest)})
    track_key = ImageRef(push.tag.registry, push.tag.repository, push.tag.tag)
    if track_key not in tracked_tags:
        return Ignored("tag is not followed by any base track", {"image": str(push.tag)})
    return RollRequest(
        kind="base",
        image=track_key,
        digest=push.digest.digest if push.digest else None,
        source="artifact-push",
        event_id=event_id,
    )
