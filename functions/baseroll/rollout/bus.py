"""Publishing to Pub/Sub: the port and its adapter over google-cloud-pubsub (batching on).

`PUBSUB_EMULATOR_HOST` points the client at the local stand-in; nothing else changes.
"""
from __future__ import annotations

from typing import Iterable, Protocol

from google.api_core import retry as gretry
from google.cloud import pubsub_v1

from baseroll.contracts import messages

PUBLISH_TIMEOUT_S = 60.0


class Bus(Protocol):
    def publish(self, topic: str, items: Iterable[tuple[bytes, dict[str, str]]]) -> list[str]:
        """Publish messages to `topic`; return their ids once all are accepted."""
        ...


class PubSubBus:
    def __init__(self, project: str, client: pubsub_v1.PublisherClient | None = None) -> None:
        self._project = project
        # A call's messages are queued together and go in one batch whatever the latency; a longer
        # max_latency only delays each call (a rollout's first step waits on two in a row).
        self._client = client or pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_bytes=4 * 1024 * 1024, max_latency=0.01)
        )

    def publish(self, topic: str, items: Iterable[tuple[bytes, dict[str, str]]]) -> list[str]:
        path = self._client.topic_path(self._project, topic)
        retry = gretry.Retry(initial=0.2, maximum=10.0, multiplier=2.0, timeout=PUBLISH_TIMEOUT_S)
        futures = [self._client.publish(path, data, retry=retry, **attrs) for data, attrs in items]
        return [f.result(timeout=PUBLISH_TIMEOUT_S) for f in futures]


def send(bus: Bus, topic: str, *msgs: messages.Task | messages.Result | messages.Step) -> list[str]:
    return bus.publish(topic, (messages.encode(m) for m in msgs))
