"""Rollout events end to end to a Chat webhook: rollout.events publishes with the unmodified
google-cloud-pubsub client to the Pub/Sub stand-in, whose push subscription delivers each event as a
CloudEvent to `notify_chat` running under functions-framework, which posts to a webhook on loopback.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baseroll.contracts import events as E
from baseroll.contracts import topics
from baseroll.contracts.messages import Rollout
from baseroll.rollout import events as publisher
from baseroll.rollout.bus import PubSubBus
from google.cloud import pubsub_v1

from infra.local.procs import LOOPBACK, free_port, stop, wait_until
from infra.local.pubsub_standin import PubSubStandin
from tests.unit.test_notify_chat import Webhook

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "baseroll-host"
WAIT_S = 30.0
RO = Rollout("python-0123456789ab", "python", "us-docker.pkg.dev/p/bases/python:3.12", "sha256:" + "1" * 64)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def notify_function(webhook: Webhook, tmp_path: Path) -> Iterator[str]:
    """notify_chat under functions-framework, as Terraform deploys it (one instance, the URL in its environment)."""
    port = free_port()
    env = {**os.environ, "CHAT_WEBHOOK_URL": webhook.url, "CHAT_EVENT_KINDS": "started,halted,finished",
           "PYTHONUNBUFFERED": "1", "WORKERS": "1"}
    binary = shutil.which("functions-framework", path=str(Path(sys.executable).parent)) or "functions-framework"
    with open(tmp_path / "notify_chat.log", "wb") as log:
        proc = subprocess.Popen([binary, "--source", str(ROOT / "functions" / "main.py"), "--target", "notify_chat",
                                 "--signature-type", "cloudevent", "--host", LOOPBACK, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, port)) == 0

        wait_until(listening, timeout=WAIT_S, what="notify_chat", proc=proc)
        yield f"http://{LOOPBACK}:{port}/"
    finally:
        stop(proc)


@pytest.fixture
def events_topic(notify_function: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[PubSubStandin]:
    with PubSubStandin(min_backoff_s=0.05, max_backoff_s=1.0, push_timeout_s=30.0, seed=7) as standin:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", standin.host)
        pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        try:
            topic = pub.topic_path(PROJECT, topics.EVENTS)
            pub.create_topic(name=topic)
            sub.create_subscription(request={"name": sub.subscription_path(PROJECT, "notify-chat"), "topic": topic,
                                             "push_config": {"push_endpoint": notify_function}})
        finally:
            pub.stop()
            pub.transport.close()
            sub.close()
        yield standin


def test_events_reach_the_chat_space_once_each_in_the_rollouts_thread(events_topic, webhook):
    webhook.script = [503]  # Chat briefly down: retried inside the function
    bus = PubSubBus(PROJECT)
    halt = E.halted(RO, at=time.time(), seq=5, wave=1, reason="over budget",
                    failures={"projects/p/locations/us-east1/services/cart": "not ready"})
    sent = publisher.publish(bus, E.started(RO, at=time.time(), to_roll=3, skipped=0, wave_sizes=[1, 2],
                                            approval="none"),
                             E.wave_released(RO, at=time.time(), seq=2, wave=0, size=1),  # not a posted kind
                             halt)
    assert sent == 3
    assert publisher.publish(bus, halt) == 1  # the same event again (a redelivered step): posted once
    assert events_topic.wait_idle(WAIT_S)
    wait_until(lambda: len(webhook.posts) >= 3, timeout=WAIT_S, what="webhook posts")
    assert events_topic.wait_idle(WAIT_S)
    texts = [body["text"] for _, body in webhook.posts]
    # Two events posted, one of them twice: the attempt Chat answered 503 to, and its retry.
    assert len(texts) == 3 and len(set(texts)) == 2
    assert {t.split(": ", 1)[1] for t in texts} == {"started: 3 services in waves [1, 2]",
                                                    "HALTED: over budget; failing: cart (not ready)"}
    assert {body["thread"]["threadKey"] for _, body in webhook.posts} == {RO.rollout_id}


def test_a_missing_events_topic_never_fails_the_publisher(monkeypatch):
    with PubSubStandin(seed=3) as standin:  # no topic created
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", standin.host)
        started = time.monotonic()
        assert publisher.publish(PubSubBus(PROJECT), E.aborted(RO, at=time.time(), seq=1, wave=0, reason="x")) == 0
        assert time.monotonic() - started < WAIT_S
