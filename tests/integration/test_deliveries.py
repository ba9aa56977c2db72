"""Each permanent error is acknowledged once and each transient one is redelivered, counted in the
Pub/Sub stand-in: the real functions under functions-framework, pushed to as Eventarc does, with
every trigger subscription dead-lettered after 5 attempts as infra/terraform sets it up
(docs/RELIABILITY.md#error-classification). One stack for the whole module.

A small scripted registry on loopback (allow-listed beside the stack's own) answers what a case
needs: DENIED, 503, or a base tag at a fixed digest; a second allow-listed address has nothing
listening (connection refused). Deliveries are counted per message from the functions' own log
lines (the CloudEvent id is the Pub/Sub message id) and from the stand-in's dead letters.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
from baseroll.contracts import messages, requests, topics
from baseroll.contracts.messages import Rollout, Step, Task
from google.cloud import firestore, pubsub_v1

from infra.local.procs import LOOPBACK, free_port
from infra.local.seed import PROJECTS, REGIONS
from infra.local.stack import TOPIC_PROJECT, TRIGGERS, LocalStack

pytestmark = pytest.mark.integration

D = "sha256:" + "d" * 64
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 2},
                       "layers": []}).encode()
ATTEMPTS = 5  # the dead-letter policy's max_delivery_attempts (Pub/Sub's minimum)
IDLE_TIMEOUT = 150.0
SERVICE = f"projects/{PROJECTS[0]}/locations/{REGIONS[0]}/services/{{}}"


class _Scripted(BaseHTTPRequestHandler):
    """/v2/denied/* → 403 DENIED, /v2/flaky/* → 503, /v2/bases/py/manifests/* → a manifest at D."""

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _answer(self, body: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            return self._send(200, b"{}", body)
        repo = "/".join(parts[1:-2])
        if repo.startswith("denied"):
            return self._send(403, json.dumps({"errors": [{"code": "DENIED", "message": "denied"}]}).encode(), body)
        if repo.startswith("flaky"):
            return self._send(503, b"", body)
        if repo == "bases/py" and parts[-2] == "manifests":
            return self._send(200, MANIFEST, body, {"Docker-Content-Digest": D,
                                                     "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}
        self._send(404, json.dumps(error).encode(), body)

    def _send(self, status: int, data: bytes, body: bool, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


class DeliveryStack(LocalStack):
    """The local stack with the scripted registry and a dead address allow-listed, and a tracked
    base whose tag is gone."""

    def __init__(self, scripted: str, dead: str) -> None:
        super().__init__(extra_tracks=[{"name": "gone", "image": "{registry}/bases/gone:1"},
                                       {"name": "py", "image": f"{scripted}/bases/py:1"}])
        self.scripted, self.dead = scripted, dead

    def config(self) -> dict:
        doc = super().config()
        for key in ("allowed_registries", "plain_http_registries"):
            doc[key] = [*doc[key], self.scripted, self.dead]
        return doc


@pytest.fixture(scope="module")
def stack() -> Iterator[DeliveryStack]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with DeliveryStack(f"{LOOPBACK}:{server.server_address[1]}", f"{LOOPBACK}:{free_port()}") as s:
            _dead_letter_every_trigger(s)
            yield s
    finally:
        server.shutdown()
        server.server_close()


def _dead_letter_every_trigger(s: LocalStack) -> None:
    """As infra/terraform/pubsub.tf does: `<topic>-dead-letter` on every trigger, after ATTEMPTS deliveries."""
    assert s.publisher is not None
    subscriber = pubsub_v1.SubscriberClient()
    for target, topic in TRIGGERS.items():
        dead = s.publisher.topic_path(TOPIC_PROJECT, f"{topic}-dead-letter")
        s.publisher.create_topic(name=dead)
        name = subscriber.subscription_path(TOPIC_PROJECT, f"eventarc-{target.replace('_', '-')}")
        subscriber.update_subscription(request={
            "subscription": {"name": name, "dead_letter_policy": {"dead_letter_topic": dead,
                                                                  "max_delivery_attempts": ATTEMPTS}},
            "update_mask": {"paths": ["dead_letter_policy"]},
        })
    subscriber.close()


def _request(s: LocalStack, **fields: Any) -> str:
    return s.publish(topics.REQUESTS, requests.to_message(**fields))


def _message(s: LocalStack, topic: str, msg: Task | Step) -> str:
    data, attributes = messages.encode(msg)
    return s.publish(topic, data, **attributes)


def _deliveries(s: LocalStack) -> tuple[Counter[str], Counter[str], dict[str, int]]:
    """Per message id: deliveries that ended acknowledged with a rejection, deliveries raised for a
    retry; and the attempts of each dead-lettered message."""
    rejected = Counter(r["event_id"] for m in ("event.rejected", "task.failed") for r in s.log_records(m)
                       if "event_id" in r)
    retried = Counter(r["event_id"] for r in s.log_records("event.retried"))
    dead = {d["message_id"]: d["attempts"] for d in s.pubsub.dead_letters()}
    return rejected, retried, dead


def _corrupt_record(rollout_id: str) -> None:
    """A record document of the wrong shape, written straight into the emulator (status a number)."""
    from baseroll.rollout.firestore_store import RECORDS

    client = firestore.Client(project=TOPIC_PROJECT, database="(default)")
    client.collection(RECORDS).document(rollout_id).set(
        {"rollout_id": rollout_id, "track": "py", "base_digest": D, "status": 5})


def _record(rollout_id: str) -> dict[str, Any]:
    from baseroll.rollout.firestore_store import RECORDS

    client = firestore.Client(project=TOPIC_PROJECT, database="(default)")
    return client.collection(RECORDS).document(rollout_id).get().to_dict() or {}


def test_permanent_errors_are_acknowledged_once_and_transient_ones_redelivered(stack: DeliveryStack) -> None:
    s, host = stack, stack.registry.host
    py = Rollout("py-" + "d" * 12, "py", f"{s.scripted}/bases/py:1", D)
    evil = Rollout("py-" + "e" * 12, "py", "evil.example.com/bases/py:1", D)
    target = {"0": f"{s.scripted}/apps/a@{D}"}
    _corrupt_record("py-" + "c" * 12)
    permanent = {
        "request: app outside the allow-list": _request(s, app=f"evil.example.com/apps/a@{D}"),
        "request: app digest gone": _request(s, app=f"{host}/apps/gone@{D}"),
        "request: tracked tag gone": _request(s, base=f"{host}/bases/gone:1"),
        "request: registry DENIED": _request(s, app=f"{s.scripted}/denied/app@{D}"),
        "artifact push: tracked tag gone": s.publish(topics.ARTIFACT_PUSHES, json.dumps(
            {"action": "INSERT", "tag": f"{host}/bases/gone:1", "digest": f"{host}/bases/gone@{D}"}).encode()),
        "build: its image is gone": s.publish(topics.BUILDS, json.dumps(
            {"id": "b-1", "projectId": "builds", "status": "SUCCESS",
             "results": {"images": [{"name": f"{host}/apps/gone:v1", "digest": D}]}}).encode(),
            buildId="b-1", status="SUCCESS"),
        "task: service deleted after planning": _message(s, topics.TASKS, Task(
            py, SERVICE.format("deleted"), 0, (f"{s.scripted}/apps/a@sha256:" + "1" * 64,), target)),
        "task: track image not allow-listed": _message(s, topics.TASKS, Task(
            evil, SERVICE.format("shop"), 0, (f"{s.scripted}/apps/a@sha256:" + "1" * 64,), target)),
        "step: corrupt record": _message(s, topics.RESULTS, Step(
            Rollout("py-" + "c" * 12, "py", f"{s.scripted}/bases/py:1", D), 0, 0, None, 1)),
    }
    transient = {
        "request: registry 503": _request(s, app=f"{s.scripted}/flaky/app@{D}"),
        "request: registry unreachable": _request(s, app=f"{s.dead}/apps/a@{D}"),
    }
    assert s.wait_idle(IDLE_TIMEOUT), "deliveries still going"
    rejected, retried, dead = _deliveries(s)
    for case, mid in permanent.items():
        assert (rejected[mid], retried[mid], mid in dead) == (1, 0, False), case
    for case, mid in transient.items():
        assert (retried[mid], dead.get(mid)) == (ATTEMPTS, ATTEMPTS), case
    subs = s.pubsub.stats()["subscriptions"]
    requests_sub = subs[f"projects/{TOPIC_PROJECT}/subscriptions/eventarc-on-roll-request"]
    assert requests_sub["redeliveries"] == len(transient) * (ATTEMPTS - 1)
    assert requests_sub["dead_lettered"] == len(transient)
    assert s.pubsub.stats()["topics"][f"projects/{TOPIC_PROJECT}/topics/{topics.REQUESTS}-dead-letter"]["published"] == 2


def test_cloud_run_permission_denied_fails_the_task_and_halts_the_rollout_once(stack: DeliveryStack) -> None:
    s = stack
    assert s.cloudrun is not None
    ro = Rollout("py-" + "f" * 12, "py", f"{s.scripted}/bases/py:1", D)
    client = firestore.Client(project=TOPIC_PROJECT, database="(default)")
    from baseroll.rollout.firestore_store import RECORDS

    client.collection(RECORDS).document(ro.rollout_id).set(
        {"rollout_id": ro.rollout_id, "track": "py", "base_digest": D, "track_image": ro.track_image})
    s.cloudrun.inject_fault({"http": {"status": 403, "methods": ["GET"]}})
    try:
        task_id = _message(s, topics.TASKS, Task(ro, SERVICE.format("shop"), 0,
                                                 (f"{s.scripted}/apps/a@sha256:" + "1" * 64,),
                                                 {"0": f"{s.scripted}/apps/a@{D}"}))
        step_id = _message(s, topics.RESULTS, Step(ro, 0, 0, None, 1))
        assert s.wait_idle(IDLE_TIMEOUT)
    finally:
        s.cloudrun.clear_faults()
    rejected, retried, dead = _deliveries(s)
    for mid in (task_id, step_id):
        assert (rejected[mid], retried[mid], mid in dead) == (1, 0, False)
    rec = _record(ro.rollout_id)
    assert rec["status"] == "halted" and "cloud-run-refused" in rec["reason"]
