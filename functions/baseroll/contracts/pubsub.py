"""The Pub/Sub message as baseroll reads it, and the limits Pub/Sub puts on one (docs/GOOGLE_APIS.md#pubsub)."""
from __future__ import annotations

from dataclasses import dataclass

MAX_ATTRIBUTES = 100  # Pub/Sub's own limits
MAX_ATTRIBUTE_KEY = 256
MAX_ATTRIBUTE_VALUE = 1024


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: str | None
    subscription: str | None
