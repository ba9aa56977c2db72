"""Deliver a Pub/Sub message to a functions-framework process exactly as Eventarc does (docs/GOOGLE_APIS.md#eventarc):
a binary-mode CloudEvent `google.cloud.pubsub.topic.v1.messagePublished` over HTTP POST."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


def message_event(project: str, topic: str, data: bytes, *, attributes: dict[str, str] | None = None,
                  message_id: str | None = None, subscription: str = "eventarc-sub") -> CloudEvent:
    message_id = message_id or str(uuid.uuid4().int % 10**16)
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes or {},
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": now,
            "publish_time": now,
        },
        "subscription": f"projects/{project}/subscriptions/{subscription}",
    }
    return CloudEvent(
        {"id": message_id, "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
         "type": PUBSUB_EVENT_TYPE, "time": now, "specversion": "1.0", "datacontenttype": "application/json"},
        body,
    )


def deliver(url: str, event: CloudEvent, *, timeout: float = 300.0) -> httpx.Response:
    headers, body = to_binary(event)
    return httpx.post(url, headers=headers, content=body, timeout=timeout)


def artifact_push_data(digest_ref: str | None, tag_ref: str | None, action: str = "INSERT") -> bytes:
    """The Artifact Registry `gcr` message body for a push (docs/GOOGLE_APIS.md#artifact-registry)."""
    payload = {"action": action}
    if digest_ref:
        payload["digest"] = digest_ref
    if tag_ref:
        payload["tag"] = tag_ref
    return json.dumps(payload).encode()
