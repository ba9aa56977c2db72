"""The Pub/Sub stand-in, driven by the unmodified google-cloud-pubsub clients, pushing to a real
functions-framework CloudEvent function exactly as Eventarc would (docs/GOOGLE_APIS.md#eventarc, #pubsub).

Tests of documented Pub/Sub behaviour run twice (`server`): on the stand-in and on gcloud's own Pub/Sub
emulator, the fidelity oracle (docs/GOOGLE_APIS.md#pubsub-emulator). The emulator pushes the plain push
body, which functions-framework converts to a CloudEvent; what differs is asserted per server and written
down there. Injected faults and the stand-in's admin surface stay stand-in only. Where the emulator is
absent its variants skip, naming what is missing, while the stand-in variants run."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any, Callable, Iterator

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from infra.local import pubsub_emulator
from infra.local.procs import LOOPBACK, free_port, stop, wait_http, wait_until
from infra.local.pubsub_emulator import PubSubEmulator
from infra.local.pubsub_standin import PUBLISHED_TYPE, PubSubStandin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ECHO_SOURCE = Path(__file__).parent / "fixtures" / "echo_function.py"
PROJECT = "baseroll-test"
IDLE_TIMEOUT = 30.0  # every wait below is bounded
RESULT_TIMEOUT = 10.0


# ------------------------------------------------------------------------------------------ fixtures


@dataclass
class EchoFunction:
    url: str
    log: Path

    def records(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Events received so far, in arrival order (only those for `ids` when given)."""
        if not self.log.exists():
            return []
        recs = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        wanted = set(ids) if ids is not None else None
        return [r for r in recs if wanted is None or r["ce"]["id"] in wanted]

    def seen(self, ids: list[str]) -> Counter[str]:
        return Counter(r["ce"]["id"] for r in self.records(ids))


@pytest.fixture(scope="module")
def echo_function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], EchoFunction]]:
    """Factory: the echo function under the real functions-framework, one process per `fail_first`."""
    procs: list[subprocess.Popen] = []
    started: dict[int, EchoFunction] = {}

    def start(fail_first: int = 0) -> EchoFunction:
        if fail_first in started:
            return started[fail_first]
        workdir = tmp_path_factory.mktemp(f"echo-fail{fail_first}")
        port = free_port()
        env = os.environ | {
            "ECHO_LOG": str(workdir / "events.jsonl"),
            "ECHO_FAIL_FIRST": str(fail_first),
            "WORKERS": "1",  # attempt counts are per process
        }
        cmd = [sys.executable, "-m", "functions_framework", "--source", str(ECHO_SOURCE), "--target", "echo",
               "--signature-type", "cloudevent", "--host", LOOPBACK, "--port", str(port)]
        out = open(workdir / "function.log", "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        url = f"http://{LOOPBACK}:{port}/"
        # A GET on a CloudEvent function is not a CloudEvent: any answer means it is serving.
        wait_http(url, proc=proc, timeout=30, ok=(200, 400, 404, 405))
        started[fail_first] = EchoFunction(url=url, log=workdir / "events.jsonl")
        return started[fail_first]

    yield start
    for p in procs:
        stop(p)


@pytest.fixture
def standin(request: pytest.FixtureRequest) -> Iterator[PubSubStandin]:
    """Fast backoff so redelivery tests take seconds; override settings with indirect parametrize."""
    settings = {"min_backoff_s": 0.05, "max_backoff_s": 1.0, "push_timeout_s": 10.0, "seed": 1234}
    settings |= getattr(request, "param", {})
    with PubSubStandin(**settings) as s:
        yield s


@dataclass
class Server:
    """The Pub/Sub server a test runs on: the stand-in (`standin` set) or gcloud's emulator."""

    kind: str  # "standin" | "emulator"
    host: str
    standin: PubSubStandin | None = None

    def endpoint(self, function_url: str, topic: str) -> str:
        # The stand-in sends CloudEvents (binary mode) itself; for the emulator's plain push body,
        # functions-framework takes the CloudEvent's source from the topic path in the URL.
        return function_url if self.standin else pubsub_emulator.push_endpoint(function_url, topic)

    def settle(self, done: Callable[[], bool], timeout: float = IDLE_TIMEOUT) -> None:
        """Until `done` holds; on the stand-in, also until nothing is queued or in flight."""
        if self.standin is not None:
            assert self.standin.wait_idle(timeout)
        wait_until(done, timeout=timeout, what="deliveries")


@pytest.fixture(scope="module")
def emulator() -> Iterator[PubSubEmulator]:
    reason = pubsub_emulator.missing()
    if reason:
        pytest.skip(f"gcloud's Pub/Sub emulator is absent, only the stand-in variant runs: {reason}")
    with PubSubEmulator() as emu:
        yield emu


@pytest.fixture(params=["standin", "emulator"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "standin":
        standin = request.getfixturevalue("standin")
        return Server("standin", standin.host, standin)
    emu = request.getfixturevalue("emulator")
    emu.reset()
    return Server("emulator", emu.host)


def _clients(host: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]]:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    yield pub, sub
    pub.stop()
    sub.close()


@pytest.fixture
def clients(
    standin: PubSubStandin, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]]:
    yield from _clients(standin.host, monkeypatch)


@pytest.fixture
def server_clients(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]]:
    yield from _clients(server.host, monkeypatch)


# ------------------------------------------------------------------------------------------ helpers


def push_subscription(
    pub: pubsub_v1.PublisherClient,
    sub: pubsub_v1.SubscriberClient,
    endpoint: str,
    *,
    topic_id: str = "gcr",
    sub_id: str = "rollout-fn",
    create_topic: bool = True,
    via: Server | None = None,
    **fields: Any,
) -> tuple[str, str]:
    topic = pub.topic_path(PROJECT, topic_id)
    if create_topic:
        pub.create_topic(name=topic)
    name = sub.subscription_path(PROJECT, sub_id)
    endpoint = via.endpoint(endpoint, topic) if via else endpoint
    sub.create_subscription(request={"name": name, "topic": topic, "push_config": {"push_endpoint": endpoint}, **fields})
    return topic, name


def publish_all(pub: pubsub_v1.PublisherClient, topic: str, n: int, **kw: Any) -> list[str]:
    """Publish through the client's batching path and wait for every id."""
    futures = [
        pub.publish(topic, f"payload-{i}".encode(), index=str(i), kind="test", **kw) for i in range(n)
    ]
    return [f.result(timeout=RESULT_TIMEOUT) for f in futures]


def sub_stats(standin: PubSubStandin, name: str) -> dict[str, Any]:
    return standin.stats()["subscriptions"][name]


# ------------------------------------------------------------------------------------------ tests


def test_every_message_reaches_the_function_as_eventarc_delivers_it(server, server_clients, echo_function) -> None:
    pub, sub = server_clients
    fn = echo_function(0)
    topic, name = push_subscription(pub, sub, fn.url, via=server)

    ids = publish_all(pub, topic, 50)
    assert len(set(ids)) == 50
    server.settle(lambda: len(fn.records(ids)) >= 50)

    recs = {r["ce"]["id"]: r for r in fn.records(ids)}
    assert set(recs) == set(ids) and len(fn.records(ids)) == 50
    for i, mid in enumerate(ids):
        r = recs[mid]
        assert r["ce"]["type"] == PUBLISHED_TYPE
        assert r["ce"]["source"] == f"//pubsub.googleapis.com/{topic}"
        assert r["ce"]["specversion"] == "1.0"
        msg = r["data"]["message"]
        assert base64.b64decode(msg["data"]) == f"payload-{i}".encode()
        assert msg["attributes"] == {"index": str(i), "kind": "test"}
        assert msg["messageId"] == mid
        assert r["ce"]["time"] == msg["publishTime"]
        assert "orderingKey" not in msg
        if server.standin:  # Eventarc's MessagePublishedData, as the stand-in sends it
            assert r["data"]["subscription"] == name
            assert msg["message_id"] == mid and msg["publishTime"] == msg["publish_time"]
        else:  # functions-framework's conversion of the plain push body keeps fewer fields
            assert "subscription" not in r["data"] and "message_id" not in msg
    if not server.standin:
        return
    st = sub_stats(server.standin, name)
    assert (st["delivered"], st["acked"], st["nacked"], st["redeliveries"]) == (50, 50, 0, 0)
    assert (st["in_flight"], st["queued"], st["dead_lettered"]) == (0, 0, 0)
    assert server.standin.stats()["topics"][topic]["published"] == 50
    assert server.standin.stats()["backlog"] == 0


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[dict[str, str], dict[str, Any]]]]]:
    """A bare HTTP endpoint that answers 204 and keeps each push's headers and JSON body."""
    got: list[tuple[dict[str, str], dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(204)
            self.end_headers()

    http = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://{LOOPBACK}:{http.server_address[1]}/", got
    http.shutdown()
    http.server_close()


def test_push_body_is_pubsubs_push_json(server, server_clients, recorder) -> None:
    """The body both servers POST is Pub/Sub's push JSON (https://cloud.google.com/pubsub/docs/push);
    the stand-in adds Eventarc's ce-* headers (binary mode), the emulator sends none."""
    pub, sub = server_clients
    url, got = recorder
    topic, name = push_subscription(pub, sub, url)
    with_data = pub.publish(topic, b"hi", kind="test").result(timeout=RESULT_TIMEOUT)
    attrs_only = pub.publish(topic, b"", kind="empty").result(timeout=RESULT_TIMEOUT)
    server.settle(lambda: len(got) >= 2)

    bodies = {body["message"]["messageId"]: (headers, body) for headers, body in got}
    assert len(got) == 2 and set(bodies) == {with_data, attrs_only}
    for mid, (headers, body) in bodies.items():
        msg = body["message"]
        assert body["subscription"] == name
        assert set(msg) == {"data", "attributes", "messageId", "message_id", "publishTime", "publish_time"}
        assert msg["message_id"] == mid and msg["publishTime"] == msg["publish_time"]
        assert headers["content-type"].startswith("application/json")
        ce = {k: v for k, v in headers.items() if k.startswith("ce-")}
        if server.standin:
            assert ce == {"ce-id": mid, "ce-source": f"//pubsub.googleapis.com/{topic}", "ce-specversion": "1.0",
                          "ce-type": PUBLISHED_TYPE, "ce-time": msg["publishTime"]}
        else:
            assert ce == {}
    # Empty data is sent as "" by both, not left out.
    assert bodies[with_data][1]["message"]["data"] == base64.b64encode(b"hi").decode()
    assert bodies[attrs_only][1]["message"]["data"] == ""


def test_failed_deliveries_are_redelivered_with_backoff_until_acked(server, server_clients, echo_function) -> None:
    pub, sub = server_clients
    fn = echo_function(2)  # raises on the first 2 deliveries of every message id
    topic, name = push_subscription(pub, sub, fn.url, via=server)

    ids = publish_all(pub, topic, 10)
    server.settle(lambda: sum(not r["failed"] for r in fn.records(ids)) >= 10)

    for mid in ids:
        recs = fn.records([mid])
        assert [r["attempt"] for r in recs] == [1, 2, 3]
        assert [r["failed"] for r in recs] == [True, True, False]
        gaps = [b["received_at"] - a["received_at"] for a, b in zip(recs, recs[1:])]
        if server.standin:
            assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.10 * 0.9  # exponential: min, then 2 × min
        else:
            assert min(gaps) >= 0.5  # the emulator redelivers about once a second

    if server.standin:
        st = sub_stats(server.standin, name)
        assert (st["acked"], st["nacked"], st["redeliveries"], st["delivered"]) == (10, 20, 20, 30)
        assert st["last_error"] == "HTTP 500"


def test_injected_duplicates_deliver_some_messages_twice(standin, clients, echo_function) -> None:
    pub, sub = clients
    fn = echo_function(0)
    topic, name = push_subscription(pub, sub, fn.url)
    standin.set_faults(duplicate_probability=0.5, seed=7)

    ids = publish_all(pub, topic, 20)
    assert standin.wait_idle(IDLE_TIMEOUT)

    seen = fn.seen(ids)
    assert set(seen) == set(ids)
    twice = [m for m, c in seen.items() if c == 2]
    assert twice and max(seen.values()) == 2
    # At-least-once (docs/GOOGLE_APIS.md#pubsub): a duplicate is the same message, not a new one.
    for mid in twice:
        first, second = (r["data"]["message"] for r in fn.records([mid]))
        assert first == second
    st = sub_stats(standin, name)
    assert st["acked"] == 20 and st["duplicates"] == len(twice)


def test_lost_acks_are_redelivered(standin, clients, echo_function) -> None:
    pub, sub = clients
    fn = echo_function(0)
    topic, name = push_subscription(pub, sub, fn.url)
    standin.set_faults(drop_ack_probability=0.3, seed=3)

    ids = publish_all(pub, topic, 20)
    assert standin.wait_idle(IDLE_TIMEOUT)

    st = sub_stats(standin, name)
    assert st["acked"] == 20 and st["nacked"] == 0
    assert st["ack_lost"] > 0 and st["redeliveries"] == st["ack_lost"]
    assert sum(fn.seen(ids).values()) == 20 + st["ack_lost"]
    # The endpoint answered success, the ack was lost: the message comes again, unchanged.
    for mid, count in fn.seen(ids).items():
        deliveries = [r["data"]["message"] for r in fn.records([mid])]
        assert len(deliveries) == count and all(d == deliveries[0] for d in deliveries)


@pytest.mark.parametrize("standin", [{"push_concurrency": 1}], indirect=True)
def test_reorder_shuffles_deliveries(standin, clients, echo_function) -> None:
    pub, sub = clients
    fn = echo_function(0)
    topic, _ = push_subscription(pub, sub, fn.url)
    standin.set_faults(reorder=True, reorder_window_s=0.3, seed=5)

    ids = publish_all(pub, topic, 20)
    assert standin.wait_idle(IDLE_TIMEOUT)

    arrival = [r["ce"]["id"] for r in fn.records(ids)]
    assert sorted(arrival) == sorted(ids)  # each once
    assert arrival != ids


def test_ordering_key_holds_on_ordered_subscription(server, server_clients, echo_function) -> None:
    _, sub = server_clients
    fn = echo_function(2)  # failures (and, on the stand-in, reorder) would scramble an unordered delivery
    if server.standin:
        server.standin.set_faults(reorder=True)
    n = 8 if server.standin else 3  # the emulator redelivers once a second: 3 attempts per message
    pub = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    try:
        topic, name = push_subscription(pub, sub, fn.url, via=server, enable_message_ordering=True)
        assert sub.get_subscription(subscription=name).enable_message_ordering
        ids = publish_all(pub, topic, n, ordering_key="repo-a")
        server.settle(lambda: sum(not r["failed"] for r in fn.records(ids)) >= n)
    finally:
        pub.stop()

    acked = [r["ce"]["id"] for r in fn.records(ids) if not r["failed"]]
    assert acked == ids
    first_seen = list(dict.fromkeys(r["ce"]["id"] for r in fn.records(ids)))
    assert first_seen == ids  # the next message is not even tried before the previous one is acked
    keys = {r["data"]["message"].get("orderingKey") for r in fn.records(ids)}
    # The emulator's push body has no orderingKey (and functions-framework's conversion would drop it).
    assert keys == ({"repo-a"} if server.standin else {None})


def test_unknown_topic_and_duplicate_create_are_refused(server, server_clients) -> None:
    pub, sub = server_clients
    missing = pub.topic_path(PROJECT, "nope")
    with pytest.raises(gexc.NotFound):
        pub.publish(missing, b"x").result(timeout=RESULT_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        pub.get_topic(topic=missing)
    with pytest.raises(gexc.NotFound):
        sub.create_subscription(name=sub.subscription_path(PROJECT, "sub-1"), topic=missing)

    topic = pub.topic_path(PROJECT, "gcr")
    pub.create_topic(name=topic)
    with pytest.raises(gexc.AlreadyExists):
        pub.create_topic(name=topic)
    with pytest.raises(gexc.InvalidArgument):
        pub.publish(topic, b"").result(timeout=RESULT_TIMEOUT)  # empty message
    assert pub.get_topic(topic=topic).name == topic
    assert [t.name for t in pub.list_topics(project=f"projects/{PROJECT}")] == [topic]
    # Names are checked as the service checks them (docs/GOOGLE_APIS.md#resource-names).
    for bad in ("ab", "goog-topic", "1topic"):
        with pytest.raises(gexc.InvalidArgument):
            pub.create_topic(name=pub.topic_path(PROJECT, bad))
    with pytest.raises(gexc.InvalidArgument):
        sub.create_subscription(name=sub.subscription_path(PROJECT, "ok"), topic=topic)
    with pytest.raises(gexc.InvalidArgument):
        sub.create_subscription(name=sub.subscription_path(PROJECT, "ftp-push"), topic=topic,
                                push_config={"push_endpoint": "ftp://127.0.0.1/x"})


def test_topic_and_subscription_admin_round_trip(server, server_clients) -> None:
    pub, sub = server_clients
    topic, name = push_subscription(pub, sub, "http://127.0.0.1:9/a")
    labels = {"request": {"topic": {"name": topic, "labels": {"team": "platform"}}, "update_mask": {"paths": ["labels"]}}}
    if server.standin:
        assert dict(pub.update_topic(**labels).labels) == {"team": "platform"}
    else:  # the emulator knows no `labels` field on a topic (docs/GOOGLE_APIS.md#pubsub-emulator)
        with pytest.raises(gexc.InvalidArgument, match="labels is not a known Topic field"):
            pub.update_topic(**labels)
    sub.modify_push_config(subscription=name, push_config={"push_endpoint": "http://127.0.0.1:9/b"})
    assert sub.get_subscription(subscription=name).push_config.push_endpoint == "http://127.0.0.1:9/b"
    assert [s.name for s in sub.list_subscriptions(project=f"projects/{PROJECT}")] == [name]
    assert list(pub.list_topic_subscriptions(topic=topic)) == [name]
    with pytest.raises(gexc.AlreadyExists):
        sub.create_subscription(name=name, topic=topic)
    pub.delete_topic(topic=topic)
    assert sub.get_subscription(subscription=name).topic == "_deleted-topic_"
    sub.delete_subscription(subscription=name)
    with pytest.raises(gexc.NotFound):
        sub.get_subscription(subscription=name)


def test_dead_letter_after_max_attempts(server, server_clients, echo_function) -> None:
    pub, sub = server_clients
    failing, ok = echo_function(1000), echo_function(0)
    dlq = pub.topic_path(PROJECT, "gcr-dead")
    pub.create_topic(name=dlq)
    _, dlq_sub = push_subscription(pub, sub, ok.url, topic_id="gcr-dead", sub_id="dlq-watch", create_topic=False,
                                   via=server)
    topic, name = push_subscription(
        pub, sub, failing.url, via=server, dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": 5}
    )

    ids = publish_all(pub, topic, 3)

    def forwarded() -> list[dict[str, Any]]:
        return [r for r in ok.records() if r["ce"]["source"].endswith("/topics/gcr-dead")
                and r["data"]["message"]["attributes"].get("index") is not None
                and r["data"]["message"]["attributes"].get("CloudPubSubDeadLetterSourceSubscription") == "rollout-fn"
                and r["data"]["message"]["attributes"].get("CloudPubSubDeadLetterSourceTopicPublishTime")
                in {f["data"]["message"]["publishTime"] for f in failing.records(ids)}]

    server.settle(lambda: len(forwarded()) >= 3)
    assert dict(failing.seen(ids)) == {m: 5 for m in ids}
    # Forwarded to the dead-letter topic as a new message, with Pub/Sub's dead-letter attributes.
    dead = forwarded()
    assert len(dead) == 3 and not {r["ce"]["id"] for r in dead} & set(ids)
    for r in dead:
        attrs = r["data"]["message"]["attributes"]
        assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
        assert attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] == PROJECT
        assert attrs["kind"] == "test"
    if server.standin:
        st = sub_stats(server.standin, name)
        assert (st["acked"], st["nacked"], st["dead_lettered"]) == (0, 15, 3)
        recorded = server.standin.dead_letters()
        assert sorted(d["message_id"] for d in recorded) == sorted(ids)
        assert {d["attempts"] for d in recorded} == {5} and {d["dead_letter_topic"] for d in recorded} == {dlq}
        assert server.standin.stats()["topics"][dlq]["published"] == 3
        assert sub_stats(server.standin, dlq_sub)["acked"] == 3


@pytest.mark.parametrize("standin", [{"max_delivery_attempts": 3}], indirect=True)
def test_dead_letter_without_policy_uses_the_standin_limit(standin, clients) -> None:
    pub, sub = clients
    port = free_port()  # nothing listens: every attempt is a connection error, i.e. a nack
    topic, name = push_subscription(pub, sub, f"http://{LOOPBACK}:{port}/")
    ids = publish_all(pub, topic, 2)
    assert standin.wait_idle(IDLE_TIMEOUT)
    st = sub_stats(standin, name)
    assert (st["delivered"], st["nacked"], st["dead_lettered"]) == (6, 6, 2)
    assert "Connect" in st["last_error"]
    assert sorted(d["message_id"] for d in standin.dead_letters()) == sorted(ids)


def test_admin_surface(standin, clients, echo_function) -> None:
    pub, sub = clients
    topic, name = push_subscription(pub, sub, echo_function(0).url)
    base = standin.admin_url
    assert httpx.get(f"{base}/healthz", timeout=5).text == "ok"
    r = httpx.post(f"{base}/faults", json={"duplicate_probability": 0.25, "seed": 1}, timeout=5)
    assert r.status_code == 200 and r.json()["duplicate_probability"] == 0.25
    assert standin.faults().duplicate_probability == 0.25
    assert httpx.post(f"{base}/faults", json={"bogus": 1}, timeout=5).status_code == 400
    assert httpx.post(f"{base}/faults", json={"drop_ack_probability": 2}, timeout=5).status_code == 400

    publish_all(pub, topic, 5)
    assert httpx.post(f"{base}/wait-idle", params={"timeout": IDLE_TIMEOUT}, timeout=IDLE_TIMEOUT + 5).json() == {
        "idle": True
    }
    stats = httpx.get(f"{base}/stats", timeout=5).json()
    assert stats["topics"][topic]["published"] == 5
    assert stats["subscriptions"][name]["acked"] == 5
    assert httpx.get(f"{base}/dead-letters", timeout=5).json() == []


def test_cli_serves_the_unmodified_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, admin = free_port(), free_port()
    out = open(tmp_path / "standin.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.local.pubsub_standin", "--port", str(port), "--admin-port", str(admin)],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://{LOOPBACK}:{admin}/healthz", proc=proc, timeout=20)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"{LOOPBACK}:{port}")
        pub = pubsub_v1.PublisherClient()
        topic = pub.topic_path(PROJECT, "cli")
        pub.create_topic(name=topic)
        assert pub.publish(topic, b"hi").result(timeout=RESULT_TIMEOUT)
        pub.stop()
    finally:
        stop(proc)
    assert proc.returncode == 0  # SIGTERM is a clean shutdown
    assert b"ready PUBSUB_EMULATOR_HOST=" in (tmp_path / "standin.log").read_bytes()
