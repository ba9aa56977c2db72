"""Unwrapping the Eventarc Pub/Sub envelope ({"message": {...}, "subscription": ...}) at the edge."""
from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

from baseroll.contracts.parsing import EventError
from baseroll.contracts.pubsub import (
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    PubSubMessage,
)

MAX_DATA_BYTES = 256 * 1024  # our messages are small JSON; anything bigger is not ours


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
