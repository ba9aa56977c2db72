"""Typed parsing of the events that reach baseroll, at the edge.

Every trigger's payload becomes either a `RollRequest` (something to do) or an `Ignored`
(a well-formed event that is not for us, with the reason). A malformed event raises
`EventError`; the entry point acknowledges it and logs the reason, and nothing changes.
The rest of the code never sees a raw payload.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from . import refs
from .refs import ImageRef, RefError

MAX_DATA_BYTES = 256 * 1024  # our messages are small JSON; anything bigger is not ours
MAX_ATTRIBUTES = 100  # Pub/Sub's own limits (REFERENCE.md §5)
MAX_ATTRIBUTE_KEY = 256
MAX_ATTRIBUTE_VALUE = 1024


class EventError(ValueError):
    """A malformed event: acknowledged, logged with this reason, otherwise ignored."""


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: str | None
    subscription: str | None


@dataclass(frozen=True)
class ArtifactPush:
    """An Artifact Registry notification from topic `gcr` (REFERENCE.md §1)."""

    action: str  # INSERT | DELETE
    digest: ImageRef | None  # pinned by digest
    tag: ImageRef | None  # carries the tag


@dataclass(frozen=True)
class RollRequest:
    """The one internal event type: roll services of a base (or app image) onto a digest."""

    kind: Literal["base", "app"]
    image: ImageRef  # a base track (name:tag) or an app image name
    digest: str | None  # the new digest when the event carries it; else resolved from the tag
    source: str  # artifact-push | cloud-build | request | sweep
    event_id: str
    dry_run: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ignored:
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def pubsub_message(envelope: Any) -> PubSubMessage:
    """Unwrap the Eventarc Pub/Sub envelope: {"message": {...}, "subscription": ...}."""
    if not isinstance(envelope, Mapping):
        raise EventError(f"event data must be a JSON object, got {type(envelope).__name__}")
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        raise EventError("event data has no 'message' object (not a Pub/Sub messagePublished event)")
    message_id = message.get("messageId") or message.get("message_id") or ""
    if not isinstance(message_id, str):
        raise EventError("message.messageId must be a string")
    raw = message.get("data", "")
    if not isinstance(raw, str):
        raise EventError("message.data must be a base64 string")
    if len(raw) > MAX_DATA_BYTES * 4 // 3 + 4:
        raise EventError(f"message.data is larger than {MAX_DATA_BYTES} bytes")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError(f"message.data is not valid base64: {exc}") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise EventError("message.attributes must map strings to strings")
    if len(attributes) > MAX_ATTRIBUTES or any(
        len(k) > MAX_ATTRIBUTE_KEY or len(v.encode("utf-8", "surrogatepass")) > MAX_ATTRIBUTE_VALUE for k, v in attributes.items()
    ):
        raise EventError("message.attributes exceed Pub/Sub's limits (100 attributes, 1,024-byte values)")
    publish_time = message.get("publishTime") or message.get("publish_time")
    subscription = envelope.get("subscription")
    return PubSubMessage(
        message_id=message_id,
        data=data,
        attributes=dict(attributes),
        publish_time=publish_time if isinstance(publish_time, str) else None,
        subscription=subscription if isinstance(subscription, str) else None,
    )


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"{what} is not valid JSON: {exc}") from None
    except (RecursionError, ValueError) as exc:  # absurd nesting, or a number too long to convert
        raise EventError(f"{what} is not acceptable JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise EventError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _ref(value: Any, field_name: str) -> ImageRef | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(f"{field_name} must be a string")
    try:
        return refs.parse(value)
    except RefError as exc:
        raise EventError(f"{field_name}: {exc}") from None


def artifact_push(message: PubSubMessage) -> ArtifactPush:
    """Parse an Artifact Registry `gcr` message body (REFERENCE.md §1)."""
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
