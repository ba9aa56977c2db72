"""Pub/Sub stand-in: a gRPC server the unmodified google-cloud-pubsub clients reach via PUBSUB_EMULATOR_HOST,
with push delivery shaped exactly like Eventarc's delivery of a Pub/Sub message to a Cloud Run function
(docs/GOOGLE_APIS.md#eventarc, #pubsub).

    with PubSubStandin(min_backoff_s=0.05, max_backoff_s=1.0) as ps:
        os.environ["PUBSUB_EMULATOR_HOST"] = ps.host       # "127.0.0.1:PORT"
        ...                                                # PublisherClient / SubscriberClient as usual
        ps.set_faults(duplicate_probability=0.2, seed=7)
        assert ps.wait_idle(30)
        print(ps.stats())

gRPC surface
  Publisher:  CreateTopic, GetTopic, UpdateTopic, ListTopics, ListTopicSubscriptions, DeleteTopic, Publish.
  Subscriber: CreateSubscription, GetSubscription, UpdateSubscription, ListSubscriptions, DeleteSubscription,
              ModifyPushConfig. Pull/StreamingPull and the rest answer UNIMPLEMENTED (push only).

Delivery (one attempt = one HTTP POST, CloudEvents binary mode)
  2xx = ack. Anything else, a connection error or a timeout = nack: redelivered after
  min(max_backoff_s, min_backoff_s * 2**(attempt-1)). After the subscription's max attempts
  (dead_letter_policy.max_delivery_attempts, 5 when the policy sets 0; else the constructor's
  max_delivery_attempts) the message is dead-lettered: recorded (dead_letters(), stats) and, when the
  policy names an existing topic, published there with the CloudPubSubDeadLetterSource* attributes.
  A subscription's retry_policy is stored but not used: the constructor's backoff wins so tests stay fast.
  Likewise ack_deadline_seconds: a push times out after push_timeout_s, where Pub/Sub (and gcloud's
  emulator, checked) cut it at the ack deadline (docs/GOOGLE_APIS.md#pubsub-emulator).
  With enable_message_ordering, messages sharing an ordering key go out one at a time, in publish order.
  Subscriptions without a push endpoint are accepted but nothing is kept for them (counted as not_pushed).
  push_config.oidc_token is ignored (no Authorization header).

Faults (set_faults(), or the admin surface), drawn from one seeded RNG
  duplicate_probability  an acked message is delivered once more (an extra, ignored-outcome delivery)
  reorder                each first delivery is held back by a random 0..reorder_window_s, shuffling a burst
                         (ordering keys on ordered subscriptions still hold)
  drop_ack_probability   a 2xx is treated as lost, so the message is redelivered (counted as ack_lost)

Admin surface: a tiny HTTP server on 127.0.0.1 (`.admin_url`; disable with admin=False)
  GET  /healthz                 -> "ok"
  GET  /stats                   -> stats() as JSON
  GET  /dead-letters            -> dead_letters() as JSON
  GET  /faults                  -> current faults
  POST /faults   {"duplicate_probability": .., "reorder": .., "reorder_window_s": .., "drop_ack_probability": .., "seed": ..}
  POST /wait-idle?timeout=S     -> {"idle": bool}   (S capped at 600)

Everything is bounded: delivery workers (push_concurrency), the backlog of undelivered messages across
subscriptions (max_backlog; Publish answers RESOURCE_EXHAUSTED beyond it), topics, subscriptions, kept
dead letters, admin request bodies, gRPC message size.

CLI: python -m infra.local.pubsub_standin --port N [--admin-port M] [...]; prints one "ready" line, stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import base64
import bisect
import heapq
import itertools
import json
import logging
import random
import re
import signal
import threading
import time
from collections import deque
from concurrent import futures
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import grpc
import httpx
from google.protobuf import empty_pb2, field_mask_pb2
from google.pubsub_v1.types import pubsub as ps

from .procs import LOOPBACK

log = logging.getLogger("baseroll.pubsub_standin")

PUBLISHED_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
DELETED_TOPIC = "_deleted-topic_"

# Pub/Sub's own limits (docs/GOOGLE_APIS.md#pubsub) plus the per-request message cap of the real service.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_MESSAGES_PER_PUBLISH = 1000
# The stand-in's own bounds.
MAX_TOPICS = 10_000
MAX_SUBSCRIPTIONS = 10_000
MAX_PAGE_SIZE = 1000
MAX_GRPC_MESSAGE_BYTES = 16 * 1024 * 1024  # a 10 MB message plus envelope; gRPC's default is 4 MB
MAX_ADMIN_BODY_BYTES = 64 * 1024
MAX_ADMIN_WAIT_S = 600.0

_ID = r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_TOPIC_RE = re.compile(rf"^projects/([^/]+)/topics/({_ID})$")
_SUB_RE = re.compile(rf"^projects/([^/]+)/subscriptions/({_ID})$")
_PROJECT_RE = re.compile(r"^projects/[^/]+$")


# --------------------------------------------------------------------------------------------- errors


class RpcError(Exception):
    """A gRPC status raised by the core; the gRPC layer turns it into context.abort()."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _not_found(what: str, name: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, f"{what} not found (resource={name}).")


def _check_name(name: str, pattern: re.Pattern[str], what: str) -> None:
    m = pattern.match(name)
    if m is None or m.group(2).startswith("goog"):
        raise _invalid(f"Invalid {what} name: {name!r}")


# --------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class _Message:
    message_id: str
    topic: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    publish_time: datetime


@dataclass
class _SubStats:
    delivered: int = 0  # HTTP attempts started, duplicates included
    acked: int = 0  # messages acknowledged (2xx not dropped)
    nacked: int = 0  # attempts answered non-2xx / connection error / timeout
    redeliveries: int = 0  # attempts after the first for the same message (injected duplicates excluded)
    duplicates: int = 0  # injected duplicate deliveries
    ack_lost: int = 0  # 2xx answers dropped by fault injection
    dead_lettered: int = 0
    not_pushed: int = 0  # messages discarded because the subscription had no push endpoint
    in_flight: int = 0
    queued: int = 0  # waiting for a worker, for backoff, or behind an ordering key
    last_error: str = ""


@dataclass
class _Topic:
    proto: ps.Topic
    published: int = 0


@dataclass
class _Sub:
    proto: ps.Subscription
    stats: _SubStats = field(default_factory=_SubStats)
    deleted: bool = False
    # ordering key -> messages waiting behind the one being delivered (ordered subscriptions only)
    key_queues: dict[str, deque[_Message]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def endpoint(self) -> str:
        return self.proto.push_config.push_endpoint

    @property
    def ordered(self) -> bool:
        return self.proto.enable_message_ordering

    def max_attempts(self, default: int) -> int:
        policy = self.proto.dead_letter_policy
        if policy.dead_letter_topic:
            return policy.max_delivery_attempts or 5  # Pub/Sub's default when the policy leaves it 0
        return default


@dataclass
class _Delivery:
    sub: _Sub
    msg: _Message
    attempt: int = 0  # attempts started so far
    duplicate: bool = False  # injected extra copy: its outcome changes nothing


@dataclass
class Faults:
    duplicate_probability: float = 0.0
    reorder: bool = False
    reorder_window_s: float = 0.2
    drop_ack_probability: float = 0.0


# --------------------------------------------------------------------------------------------- wire format


def rfc3339(t: datetime) -> str:
    """Millisecond RFC 3339 in UTC with a Z, as Pub/Sub's JSON renders publishTime."""
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def eventarc_request(subscription: str, msg: _Message) -> tuple[dict[str, str], bytes]:
    """Headers and body of the POST Eventarc sends for one Pub/Sub message (CloudEvents binary mode)."""
    when = rfc3339(msg.publish_time)
    message: dict[str, Any] = {
        "data": base64.b64encode(msg.data).decode("ascii"),
        "attributes": dict(msg.attributes),
        "messageId": msg.message_id,
        "message_id": msg.message_id,
        "publishTime": when,
        "publish_time": when,
    }
    if msg.ordering_key:
        message["orderingKey"] = msg.ordering_key
    headers = {
        "ce-id": msg.message_id,
        "ce-source": f"//pubsub.googleapis.com/{msg.topic}",
        "ce-specversion": "1.0",
        "ce-type": PUBLISHED_TYPE,
        "ce-time": when,
        "Content-Type": "application/json",
    }
    body = json.dumps({"message": message, "subscription": subscription}).encode()
    return headers, body


def _validate_message(m: ps.PubsubMessage) -> None:
    if not m.data and not m.attributes:
        raise _invalid("Some messages are empty: a message needs data or at least one attribute.")
    if len(m.data) > MAX_MESSAGE_BYTES:
        raise _invalid(f"Message is too large: {len(m.data)} bytes > {MAX_MESSAGE_BYTES}.")
    if len(m.attributes) > MAX_ATTRIBUTES:
        raise _invalid(f"Too many attributes: {len(m.attributes)} > {MAX_ATTRIBUTES}.")
    for k, v in m.attributes.items():
        if not k or len(k.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise _invalid(f"Invalid attribute key {k[:40]!r}.")
        if len(v.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise _invalid(f"Attribute {k!r} value exceeds {MAX_ATTRIBUTE_VALUE_BYTES} bytes.")


def _page(names: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """Name-ordered paging; the token is the last name returned."""
    names = sorted(names)
    start = bisect.bisect_right(names, page_token) if page_token else 0
    size = min(page_size, MAX_PAGE_SIZE) if page_size > 0 else 100
    chunk = names[start : start + size]
    return chunk, (chunk[-1] if start + size < len(names) else "")


def _apply_mask(dst: Any, src: Any, paths: list[str], frozen: set[str]) -> None:
    """Copy the masked fields of proto-plus `src` into `dst` (UpdateTopic/UpdateSubscription)."""
    if not paths:
        raise _invalid("update_mask must name at least one field.")
    for p in paths:
        top = p.split(".")[0]
        if top in frozen or top not in type(dst).meta.fields:
            raise _invalid(f"Field {p!r} cannot be updated.")
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        type(src).pb(src), type(dst).pb(dst), replace_message_field=True, replace_repeated_field=True
    )


# --------------------------------------------------------------------------------------------- stand-in


class PubSubStandin:
    """Pub/Sub gRPC stand-in with Eventarc-shaped push delivery. See the module docstring."""

    def __init__(
        self,
        port: int | None = None,
        *,
        admin_port: int | None = None,
        admin: bool = True,
        push_concurrency: int = 8,
        push_timeout_s: float = 600.0,
        min_backoff_s: float = 10.0,
        max_backoff_s: float = 600.0,
        max_delivery_attempts: int = 20,
        max_backlog: int = 100_000,
        dead_letter_keep: int = 1000,
        seed: int | None = None,
        duplicate_probability: float = 0.0,
        reorder: bool = False,
        reorder_window_s: float = 0.2,
        drop_ack_probability: float = 0.0,
        grpc_workers: int = 16,
    ) -> None:
        if push_concurrency < 1 or max_delivery_attempts < 1 or max_backlog < 1:
            raise ValueError("push_concurrency, max_delivery_attempts and max_backlog must be >= 1")
        if not 0 <= min_backoff_s <= max_backoff_s:
            raise ValueError("need 0 <= min_backoff_s <= max_backoff_s")
        self.port = port or 0  # 0: bound to an ephemeral port at start()
        self.admin_port = admin_port or 0
        self._admin_enabled = admin
        self.push_concurrency = push_concurrency
        self.push_timeout_s = push_timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_delivery_attempts = max_delivery_attempts
        self.max_backlog = max_backlog
        self._grpc_workers = grpc_workers

        self._lock = threading.Lock()
        self._work_cv = threading.Condition(self._lock)  # workers: something became due / stopping
        self._idle_cv = threading.Condition(self._lock)  # wait_idle(): the backlog reached zero
        self._topics: dict[str, _Topic] = {}
        self._subs: dict[str, _Sub] = {}
        self._heap: list[tuple[float, int, _Delivery]] = []  # (due monotonic time, tiebreak, delivery)
        self._seq = itertools.count()
        self._backlog = 0  # deliveries queued, in backoff, behind an ordering key, or in flight
        self._dead_letters: deque[dict[str, Any]] = deque(maxlen=dead_letter_keep)
        # Start ids from the clock so ids never repeat across stand-in restarts (functions may dedupe on them).
        self._next_id = int(time.time() * 1_000_000)
        self._faults = Faults()
        self._rng = random.Random(seed)
        self.set_faults(
            duplicate_probability=duplicate_probability,
            reorder=reorder,
            reorder_window_s=reorder_window_s,
            drop_ack_probability=drop_ack_probability,
        )

        self._started = False
        self._stopping = False
        self._grpc: grpc.Server | None = None
        self._http: httpx.Client | None = None
        self._workers: list[threading.Thread] = []
        self._admin: ThreadingHTTPServer | None = None
        self._admin_thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        """The PUBSUB_EMULATOR_HOST value."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def start(self) -> "PubSubStandin":
        if self._started:
            return self
        self._http = httpx.Client(
            timeout=self.push_timeout_s,
            limits=httpx.Limits(max_connections=self.push_concurrency, max_keepalive_connections=self.push_concurrency),
        )
        self._start_grpc()
        for i in range(self.push_concurrency):
            t = threading.Thread(target=self._worker, name=f"pubsub-push-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        if self._admin_enabled:
            self._start_admin()
        self._started = True
        log.info("pubsub stand-in on %s (admin %s)", self.host, self.admin_url if self._admin else "off")
        return self

    def _start_grpc(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._grpc_workers, thread_name_prefix="pubsub-grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a taken port must fail loudly, not be shared
            ],
        )
        server.add_generic_rpc_handlers(_grpc_handlers(self))
        bound = server.add_insecure_port(f"{LOOPBACK}:{self.port}")
        if not bound:
            raise RuntimeError(f"cannot bind the Pub/Sub stand-in to {LOOPBACK}:{self.port}")
        self.port = bound
        server.start()
        self._grpc = server

    def _start_admin(self) -> None:
        self._admin = ThreadingHTTPServer((LOOPBACK, self.admin_port), _admin_handler(self))
        self._admin.daemon_threads = True
        self.admin_port = self._admin.server_address[1]
        self._admin_thread = threading.Thread(target=self._admin.serve_forever, name="pubsub-admin", daemon=True)
        self._admin_thread.start()

    def stop(self, *, grace_s: float = 2.0) -> None:
        """Stop serving and delivering. Queued deliveries are dropped; in-flight POSTs get `grace_s` to finish."""
        if not self._started:
            return
        with self._lock:
            self._stopping = True
            self._work_cv.notify_all()
            self._idle_cv.notify_all()
        if self._grpc is not None:
            self._grpc.stop(grace=grace_s).wait(grace_s + 1)
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
        deadline = time.monotonic() + grace_s
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        # Workers still stuck in a slow POST are daemons; closing the client cuts them off.
        if self._http is not None:
            self._http.close()
        self._started = False

    def __enter__(self) -> "PubSubStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------- faults & observability

    def set_faults(
        self,
        *,
        duplicate_probability: float | None = None,
        reorder: bool | None = None,
        reorder_window_s: float | None = None,
        drop_ack_probability: float | None = None,
        seed: int | None = None,
    ) -> Faults:
        """Change fault injection; None leaves a setting as it is. `seed` reseeds the RNG."""
        for name, p in (("duplicate_probability", duplicate_probability), ("drop_ack_probability", drop_ack_probability)):
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if reorder_window_s is not None and not 0.0 <= reorder_window_s <= 60.0:
            raise ValueError("reorder_window_s must be within [0, 60]")
        with self._lock:
            f = self._faults
            if duplicate_probability is not None:
                f.duplicate_probability = duplicate_probability
            if reorder is not None:
                f.reorder = bool(reorder)
            if reorder_window_s is not None:
                f.reorder_window_s = reorder_window_s
            if drop_ack_probability is not None:
                f.drop_ack_probability = drop_ack_probability
            if seed is not None:
                self._rng.seed(seed)
            return Faults(**asdict(f))

    def faults(self) -> Faults:
        with self._lock:
            return Faults(**asdict(self._faults))

    def stats(self) -> dict[str, Any]:
        """Counters per topic and per subscription, plus the global backlog."""
        with self._lock:
            return {
                "topics": {n: {"published": t.published} for n, t in self._topics.items()},
                "subscriptions": {
                    n: {"topic": s.proto.topic, "push_endpoint": s.endpoint, **asdict(s.stats)}
                    for n, s in self._subs.items()
                },
                "backlog": self._backlog,
                "dead_letters": len(self._dead_letters),
            }

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._dead_letters]

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued, backing off or in flight; False if `timeout` passed first."""
        with self._lock:
            return self._idle_cv.wait_for(lambda: self._backlog == 0 or self._stopping, timeout) and self._backlog == 0

    # ----------------------------------------------------------------------------------- topics

    def create_topic(self, topic: ps.Topic) -> ps.Topic:
        _check_name(topic.name, _TOPIC_RE, "topic")
        with self._lock:
            if topic.name in self._topics:
                raise RpcError(grpc.StatusCode.ALREADY_EXISTS, f"Topic already exists (resource={topic.name}).")
            if len(self._topics) >= MAX_TOPICS:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many topics in the stand-in.")
            self._topics[topic.name] = _Topic(proto=ps.Topic(topic))
            return ps.Topic(topic)

    def get_topic(self, name: str) -> ps.Topic:
        with self._lock:
            return ps.Topic(self._topic_locked(name).proto)

    def update_topic(self, topic: ps.Topic, paths: list[str]) -> ps.Topic:
        with self._lock:
            stored = self._topic_locked(topic.name).proto
            _apply_mask(stored, topic, paths, frozen={"name"})
            return ps.Topic(stored)

    def list_topics(self, project: str, page_size: int = 0, page_token: str = "") -> tuple[list[ps.Topic], str]:
        if not _PROJECT_RE.match(project):
            raise _invalid(f"Invalid project name: {project!r}")
        with self._lock:
            names, token = _page([n for n in self._topics if n.startswith(project + "/topics/")], page_size, page_token)
            return [ps.Topic(self._topics[n].proto) for n in names], token

    def list_topic_subscriptions(self, topic: str, page_size: int = 0, page_token: str = "") -> tuple[list[str], str]:
        with self._lock:
            self._topic_locked(topic)
            return _page([n for n, s in self._subs.items() if s.proto.topic == topic], page_size, page_token)

    def delete_topic(self, name: str) -> None:
        with self._lock:
            self._topic_locked(name)
            del self._topics[name]
            # As in Pub/Sub: subscriptions survive, detached; what they already hold is still delivered.
            for s in self._subs.values():
                if s.proto.topic == name:
                    s.proto.topic = DELETED_TOPIC

    def publish(self, topic: str, messages: list[ps.PubsubMessage]) -> list[str]:
        """Assign ids and publish_time, then fan out to the topic's push subscriptions."""
        if not messages:
            raise _invalid("No messages to publish.")
        if len(messages) > MAX_MESSAGES_PER_PUBLISH:
            raise _invalid(f"Too many messages in one request: {len(messages)} > {MAX_MESSAGES_PER_PUBLISH}.")
        for m in messages:
            _validate_message(m)
        with self._lock:
            return self._publish_locked(topic, messages, enforce_backlog=True)

    def _topic_locked(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            raise _not_found("Topic", name)
        return t

    def _publish_locked(self, topic: str, messages: list[ps.PubsubMessage], *, enforce_backlog: bool) -> list[str]:
        t = self._topic_locked(topic)
        subs = [s for s in self._subs.values() if s.proto.topic == topic]
        if enforce_backlog and self._backlog + len(messages) * len(subs) > self.max_backlog:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Stand-in backlog is full ({self.max_backlog}).")
        now = datetime.now(timezone.utc)
        ids: list[str] = []
        for m in messages:
            self._next_id += 1
            msg = _Message(str(self._next_id), topic, bytes(m.data), dict(m.attributes), m.ordering_key, now)
            for s in subs:
                self._enqueue_locked(s, msg)
            ids.append(msg.message_id)
        t.published += len(messages)
        return ids

    # ----------------------------------------------------------------------------------- subscriptions

    def create_subscription(self, sub: ps.Subscription) -> ps.Subscription:
        _check_name(sub.name, _SUB_RE, "subscription")
        _check_endpoint(sub.push_config.push_endpoint)
        policy = sub.dead_letter_policy
        if policy.dead_letter_topic:
            _check_name(policy.dead_letter_topic, _TOPIC_RE, "dead letter topic")
            if policy.max_delivery_attempts and not 5 <= policy.max_delivery_attempts <= 100:
                raise _invalid("dead_letter_policy.max_delivery_attempts must be between 5 and 100.")
        with self._lock:
            self._topic_locked(sub.topic)
            if sub.name in self._subs:
                raise RpcError(grpc.StatusCode.ALREADY_EXISTS, f"Subscription already exists (resource={sub.name}).")
            if len(self._subs) >= MAX_SUBSCRIPTIONS:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many subscriptions in the stand-in.")
            stored = ps.Subscription(sub)
            stored.ack_deadline_seconds = stored.ack_deadline_seconds or 10  # Pub/Sub's default
            self._subs[sub.name] = _Sub(proto=stored)
            return ps.Subscription(stored)

    def get_subscription(self, name: str) -> ps.Subscription:
        with self._lock:
            return ps.Subscription(self._sub_locked(name).proto)

    def update_subscription(self, sub: ps.Subscription, paths: list[str]) -> ps.Subscription:
        if any(p.split(".")[0] == "push_config" for p in paths):
            _check_endpoint(sub.push_config.push_endpoint)
        with self._lock:
            stored = self._sub_locked(sub.name).proto
            _apply_mask(stored, sub, paths, frozen={"name", "topic"})
            return ps.Subscription(stored)

    def modify_push_config(self, name: str, push_config: ps.PushConfig) -> None:
        _check_endpoint(push_config.push_endpoint)
        with self._lock:
            self._sub_locked(name).proto.push_config = push_config

    def list_subscriptions(
        self, project: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ps.Subscription], str]:
        if not _PROJECT_RE.match(project):
            raise _invalid(f"Invalid project name: {project!r}")
        with self._lock:
            prefix = project + "/subscriptions/"
            names, token = _page([n for n in self._subs if n.startswith(prefix)], page_size, page_token)
            return [ps.Subscription(self._subs[n].proto) for n in names], token

    def delete_subscription(self, name: str) -> None:
        """Delete and drop what it still holds; its in-flight POSTs finish but change nothing."""
        with self._lock:
            sub = self._sub_locked(name)
            del self._subs[name]
            sub.deleted = True
            kept = [e for e in self._heap if e[2].sub is not sub]
            dropped = len(self._heap) - len(kept) + sum(len(q) for q in sub.key_queues.values())
            self._heap = kept
            heapq.heapify(self._heap)
            sub.key_queues.clear()
            self._release_locked(dropped)

    def _sub_locked(self, name: str) -> _Sub:
        s = self._subs.get(name)
        if s is None:
            raise _not_found("Subscription", name)
        return s

    # ----------------------------------------------------------------------------------- delivery: scheduling

    def _enqueue_locked(self, sub: _Sub, msg: _Message) -> None:
        if not sub.endpoint:
            sub.stats.not_pushed += 1
            return
        self._backlog += 1
        if sub.ordered and msg.ordering_key:
            waiting = sub.key_queues.get(msg.ordering_key)
            if waiting is not None:  # an earlier message with this key is still undelivered: wait behind it
                waiting.append(msg)
                sub.stats.queued += 1
                return
            sub.key_queues[msg.ordering_key] = deque()
        self._schedule_locked(_Delivery(sub, msg), self._first_delay_locked())

    def _schedule_locked(self, d: _Delivery, delay: float) -> None:
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), d))
        d.sub.stats.queued += 1
        self._work_cv.notify()

    def _first_delay_locked(self) -> float:
        f = self._faults
        return self._rng.uniform(0.0, f.reorder_window_s) if f.reorder else 0.0

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.min_backoff_s * 2 ** min(attempt - 1, 30))

    def _chance_locked(self, p: float) -> bool:
        # Draw only when the fault is on, so a seeded run's sequence depends only on the enabled faults.
        return p > 0.0 and self._rng.random() < p

    def _release_locked(self, n: int = 1) -> None:
        self._backlog -= n
        if self._backlog == 0:
            self._idle_cv.notify_all()

    # ----------------------------------------------------------------------------------- delivery: workers

    def _worker(self) -> None:
        while True:
            got = self._next_due()
            if got is None:
                return
            d, endpoint = got
            ok, err = self._push(d, endpoint)
            self._settle(d, ok, err)

    def _next_due(self) -> tuple[_Delivery, str] | None:
        """Wait for the earliest due delivery and mark it in flight; None when stopping."""
        with self._lock:
            while not self._stopping:
                if not self._heap:
                    self._work_cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._work_cv.wait(wait)
                    continue
                d = heapq.heappop(self._heap)[2]
                started = self._begin_locked(d)
                if started is not None:
                    return started
            return None

    def _begin_locked(self, d: _Delivery) -> tuple[_Delivery, str] | None:
        st = d.sub.stats
        st.queued -= 1
        endpoint = d.sub.endpoint
        if not endpoint:  # push turned off after publish (ModifyPushConfig): nothing is kept for pull
            st.not_pushed += 1
            self._finish_locked(d, advance_key=not d.duplicate)
            return None
        if d.duplicate:
            st.duplicates += 1
        else:
            d.attempt += 1
            if d.attempt > 1:
                st.redeliveries += 1
        st.delivered += 1
        st.in_flight += 1
        return d, endpoint

    def _push(self, d: _Delivery, endpoint: str) -> tuple[bool, str]:
        """One POST; (acked, reason). Never raises: a broken worker thread would stall delivery silently."""
        http = self._http
        if http is None:
            return False, "stand-in stopped"
        headers, body = eventarc_request(d.sub.name, d.msg)
        try:
            r = http.post(endpoint, content=body, headers=headers)
        except Exception as e:  # connection refused, timeout, client closed at stop(): all are nacks
            return False, f"{type(e).__name__}: {e}"
        if 200 <= r.status_code < 300:
            return True, ""
        return False, f"HTTP {r.status_code}"

    def _settle(self, d: _Delivery, ok: bool, err: str) -> None:
        with self._lock:
            sub, st = d.sub, d.sub.stats
            st.in_flight -= 1
            if sub.deleted or self._stopping:
                self._release_locked()
                return
            if d.duplicate:
                self._finish_locked(d, advance_key=False)
            elif ok and self._chance_locked(self._faults.drop_ack_probability):
                st.ack_lost += 1
                self._retry_or_dead_letter_locked(d, "ack lost (injected)")
            elif ok:
                st.acked += 1
                if self._chance_locked(self._faults.duplicate_probability):
                    self._backlog += 1
                    dup = _Delivery(sub, d.msg, attempt=d.attempt, duplicate=True)
                    self._schedule_locked(dup, self._rng.uniform(0.0, self.min_backoff_s))
                self._finish_locked(d, advance_key=True)
            else:
                st.nacked += 1
                st.last_error = err
                log.debug("nack %s on %s (attempt %d): %s", d.msg.message_id, sub.name, d.attempt, err)
                self._retry_or_dead_letter_locked(d, err)

    def _retry_or_dead_letter_locked(self, d: _Delivery, err: str) -> None:
        if d.attempt < d.sub.max_attempts(self.max_delivery_attempts):
            self._schedule_locked(d, self._backoff(d.attempt))
            return
        self._dead_letter_locked(d, err)
        self._finish_locked(d, advance_key=True)

    def _finish_locked(self, d: _Delivery, *, advance_key: bool) -> None:
        """The delivery is over: free its backlog slot and release the next message of its ordering key."""
        sub, key = d.sub, d.msg.ordering_key
        if advance_key and key and key in sub.key_queues:
            waiting = sub.key_queues[key]
            if waiting:
                sub.stats.queued -= 1
                self._schedule_locked(_Delivery(sub, waiting.popleft()), self._first_delay_locked())
            else:
                del sub.key_queues[key]
        self._release_locked()

    def _dead_letter_locked(self, d: _Delivery, err: str) -> None:
        sub, msg = d.sub, d.msg
        sub.stats.dead_lettered += 1
        dlt = sub.proto.dead_letter_policy.dead_letter_topic
        self._dead_letters.append(
            {
                "subscription": sub.name,
                "topic": msg.topic,
                "message_id": msg.message_id,
                "attempts": d.attempt,
                "last_error": err,
                "attributes": dict(msg.attributes),
                "ordering_key": msg.ordering_key,
                "publish_time": rfc3339(msg.publish_time),
                "dead_letter_topic": dlt if dlt in self._topics else "",
            }
        )
        log.warning("dead-lettered %s on %s after %d attempts: %s", msg.message_id, sub.name, d.attempt, err)
        if dlt in self._topics:
            _, project, short = sub.name.split("/", 2)
            attrs = dict(msg.attributes) | {
                "CloudPubSubDeadLetterSourceDeliveryCount": str(d.attempt),
                "CloudPubSubDeadLetterSourceSubscription": short.split("/", 1)[1],
                "CloudPubSubDeadLetterSourceSubscriptionProject": project,
                "CloudPubSubDeadLetterSourceTopicPublishTime": rfc3339(msg.publish_time),
            }
            # Exempt from max_backlog: refusing would lose the message, and it frees its own slot right after.
            dead = ps.PubsubMessage(data=msg.data, attributes=attrs, ordering_key=msg.ordering_key)
            self._publish_locked(dlt, [dead], enforce_backlog=False)


def _check_endpoint(endpoint: str) -> None:
    if endpoint and urlparse(endpoint).scheme not in ("http", "https"):
        raise _invalid(f"push_endpoint must be an http(s) URL: {endpoint!r}")


# --------------------------------------------------------------------------------------------- gRPC layer


def _unary(fn: Callable[[Any], Any], request_type: Any, serialize: Callable[[Any], bytes]) -> grpc.RpcMethodHandler:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request)
        except RpcError as e:
            context.abort(e.code, e.message)

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_type.deserialize, response_serializer=serialize
    )


def _empty(_: Any) -> empty_pb2.Empty:
    return empty_pb2.Empty()


def _grpc_handlers(s: PubSubStandin) -> tuple[grpc.GenericRpcHandler, grpc.GenericRpcHandler]:
    """The two services; methods not listed answer UNIMPLEMENTED."""
    empty = empty_pb2.Empty.SerializeToString

    def list_topics(r: ps.ListTopicsRequest) -> ps.ListTopicsResponse:
        topics, token = s.list_topics(r.project, r.page_size, r.page_token)
        return ps.ListTopicsResponse(topics=topics, next_page_token=token)

    def list_topic_subs(r: ps.ListTopicSubscriptionsRequest) -> ps.ListTopicSubscriptionsResponse:
        names, token = s.list_topic_subscriptions(r.topic, r.page_size, r.page_token)
        return ps.ListTopicSubscriptionsResponse(subscriptions=names, next_page_token=token)

    def list_subs(r: ps.ListSubscriptionsRequest) -> ps.ListSubscriptionsResponse:
        subs, token = s.list_subscriptions(r.project, r.page_size, r.page_token)
        return ps.ListSubscriptionsResponse(subscriptions=subs, next_page_token=token)

    publisher = {
        "CreateTopic": _unary(s.create_topic, ps.Topic, ps.Topic.serialize),
        "GetTopic": _unary(lambda r: s.get_topic(r.topic), ps.GetTopicRequest, ps.Topic.serialize),
        "UpdateTopic": _unary(
            lambda r: s.update_topic(r.topic, list(r.update_mask.paths)), ps.UpdateTopicRequest, ps.Topic.serialize
        ),
        "ListTopics": _unary(list_topics, ps.ListTopicsRequest, ps.ListTopicsResponse.serialize),
        "ListTopicSubscriptions": _unary(
            list_topic_subs, ps.ListTopicSubscriptionsRequest, ps.ListTopicSubscriptionsResponse.serialize
        ),
        "DeleteTopic": _unary(lambda r: _empty(s.delete_topic(r.topic)), ps.DeleteTopicRequest, empty),
        "Publish": _unary(
            lambda r: ps.PublishResponse(message_ids=s.publish(r.topic, list(r.messages))),
            ps.PublishRequest,
            ps.PublishResponse.serialize,
        ),
    }
    subscriber = {
        "CreateSubscription": _unary(s.create_subscription, ps.Subscription, ps.Subscription.serialize),
        "GetSubscription": _unary(
            lambda r: s.get_subscription(r.subscription), ps.GetSubscriptionRequest, ps.Subscription.serialize
        ),
        "UpdateSubscription": _unary(
            lambda r: s.update_subscription(r.subscription, list(r.update_mask.paths)),
            ps.UpdateSubscriptionRequest,
            ps.Subscription.serialize,
        ),
        "ListSubscriptions": _unary(list_subs, ps.ListSubscriptionsRequest, ps.ListSubscriptionsResponse.serialize),
        "DeleteSubscription": _unary(
            lambda r: _empty(s.delete_subscription(r.subscription)), ps.DeleteSubscriptionRequest, empty
        ),
        "ModifyPushConfig": _unary(
            lambda r: _empty(s.modify_push_config(r.subscription, r.push_config)), ps.ModifyPushConfigRequest, empty
        ),
    }
    return (
        grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
        grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
    )


# --------------------------------------------------------------------------------------------- admin HTTP


def _admin_handler(s: PubSubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
            log.debug("admin: " + fmt, *args)

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/healthz":
                self._send(200, "ok")
            elif path == "/stats":
                self._send(200, s.stats())
            elif path == "/dead-letters":
                self._send(200, s.dead_letters())
            elif path == "/faults":
                self._send(200, asdict(s.faults()))
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            try:
                body = self._json_body()
                if url.path == "/faults":
                    allowed = {f for f in Faults.__dataclass_fields__} | {"seed"}
                    unknown = set(body) - allowed
                    if unknown:
                        raise ValueError(f"unknown fault settings: {sorted(unknown)}")
                    self._send(200, asdict(s.set_faults(**body)))
                elif url.path == "/wait-idle":
                    timeout = min(float(parse_qs(url.query).get("timeout", ["10"])[0]), MAX_ADMIN_WAIT_S)
                    self._send(200, {"idle": s.wait_idle(timeout)})
                else:
                    self._send(404, {"error": "not found"})
            except (ValueError, TypeError) as e:
                self._send(400, {"error": str(e)})

        def _json_body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_ADMIN_BODY_BYTES:
                raise ValueError("body too large")
            raw = self.rfile.read(n) if n else b"{}"
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            return body

        def _send(self, code: int, payload: Any) -> None:
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.local.pubsub_standin", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="gRPC port (0: ephemeral, printed)")
    p.add_argument("--admin-port", type=int, default=0, help="admin HTTP port (0: ephemeral, printed)")
    p.add_argument("--push-concurrency", type=int, default=8)
    p.add_argument("--push-timeout", type=float, default=600.0)
    p.add_argument("--min-backoff", type=float, default=10.0)
    p.add_argument("--max-backoff", type=float, default=600.0)
    p.add_argument("--max-delivery-attempts", type=int, default=20)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    standin = PubSubStandin(
        a.port or None,
        admin_port=a.admin_port or None,
        push_concurrency=a.push_concurrency,
        push_timeout_s=a.push_timeout,
        min_backoff_s=a.min_backoff,
        max_backoff_s=a.max_backoff,
        max_delivery_attempts=a.max_delivery_attempts,
        seed=a.seed,
    )
    with standin:
        print(f"pubsub-standin ready PUBSUB_EMULATOR_HOST={standin.host} admin={standin.admin_url}", flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
