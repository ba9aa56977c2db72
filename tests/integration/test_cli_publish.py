"""`baseroll publish` against the Pub/Sub stand-in, with the unmodified google-cloud-pubsub client.

What arrives is checked where a function would see it: a push subscription delivers each message,
Eventarc-shaped, to a small HTTP receiver, and the body goes through the same parsing as
on_roll_request (`envelope.pubsub_message` + `requests.parse_request`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from baseroll import cli
from baseroll.contracts import requests, topics
from baseroll.contracts.requests import Request, ServiceFilter
from baseroll.edge import envelope
from baseroll.images.refs import ImageRef
from click.testing import CliRunner
from google.cloud import pubsub_v1

from infra.local.procs import LOOPBACK, free_port
from infra.local.pubsub_standin import PubSubStandin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "baseroll-test"
HOST = "us-docker.pkg.dev"
BASE = f"{HOST}/platform/bases/python:3.12"
D1 = "sha256:" + "1" * 64
WAIT_S = 20.0  # every wait below is bounded


# ------------------------------------------------------------------------------------------ receiver


@dataclass
class Receiver:
    """Collects the push deliveries (headers, JSON body) it is sent; answers 204 (ack)."""

    url: str = ""
    deliveries: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, message_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The envelope of the delivery whose ce-id is `message_id`."""
        def found() -> dict[str, Any] | None:
            return next((body for headers, body in self.deliveries if headers.get("ce-id") == message_id), None)

        with self.cond:
            if not self.cond.wait_for(lambda: found() is not None, timeout=timeout):
                raise TimeoutError(f"message {message_id} not delivered within {timeout}s")
            return found()  # type: ignore[return-value]

    def count(self) -> int:
        with self.cond:
            return len(self.deliveries)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, 1 << 20)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.cond:
                receiver.deliveries.append((headers, body))
                receiver.cond.notify_all()
            self.send_response(204)
            self.end_headers()

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = ThreadingHTTPServer((LOOPBACK, 0), _handler(rec))
    rec.url = f"http://{LOOPBACK}:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ Pub/Sub


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[PubSubStandin]:
    with PubSubStandin(min_backoff_s=0.05, max_backoff_s=1.0, push_timeout_s=10.0, seed=1) as s:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", s.host)
        yield s


@pytest.fixture
def topic(standin: PubSubStandin, receiver: Receiver) -> Iterator[str]:
    """The requests topic with a push subscription to the receiver, made with the real clients."""
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        path = pub.topic_path(PROJECT, topics.REQUESTS)
        pub.create_topic(name=path)
        sub.create_subscription(request={
            "name": sub.subscription_path(PROJECT, "on-roll-request"),
            "topic": path,
            "push_config": {"push_endpoint": receiver.url},
        })
    finally:
        pub.stop()
        pub.transport.close()
        sub.close()
    yield path


def published(standin: PubSubStandin, topic: str) -> int:
    return standin.stats()["topics"][topic]["published"]


def received_request(receiver: Receiver, message_id: str) -> tuple[Request, dict[str, str]]:
    """Parse a delivery exactly as the on_roll_request function will."""
    message = envelope.pubsub_message(receiver.wait_for(message_id))
    return requests.parse_request(message), message.attributes


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------------------------ tests


def test_publish_roll_request_arrives_and_parses(standin, topic, receiver) -> None:
    result = invoke("--json", "publish", "--project", PROJECT, "--base", f"{BASE}@{D1}", "--dry-run",
                    "--filter-region", "us-central1", "--filter-project", "tenants-prod-a",
                    "--label", "team=shop", "--reason", "CVE-2024-0001")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["topic"] == topic and out["message_id"]

    req, attributes = received_request(receiver, out["message_id"])
    assert req == Request(
        action="roll", kind="base", image=ImageRef(HOST, "platform/bases/python", "3.12"), digest=D1, dry_run=True,
        filter=ServiceFilter(projects=["tenants-prod-a"], regions=["us-central1"], labels={"team": "shop"}),
        reason="CVE-2024-0001",
    )
    assert attributes == {"schema": requests.SCHEMA, "action": "roll"}
    assert out["request"] == requests.to_document(req)
    assert published(standin, topic) == 1


def test_publish_sweep_and_abort_print_the_message_id(standin, topic, receiver) -> None:
    sweep = invoke("publish", "--project", PROJECT, "--action", "sweep")
    abort = invoke("publish", "--project", PROJECT, "--action", "abort", "--rollout-id", "python-0123456789ab")
    assert sweep.exit_code == 0 and abort.exit_code == 0, sweep.output + abort.output
    assert received_request(receiver, sweep.stdout.strip())[0] == Request(action="sweep")
    assert received_request(receiver, abort.stdout.strip())[0] == Request(action="abort",
                                                                           rollout_id="python-0123456789ab")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--base", BASE, "--filter-region", "moon"], "filter.regions[0]: 'moon' is not a region"),
        (["--base", f"{HOST}/platform/bases/python"], "base: a base track is a tag"),
        (["--app", f"{HOST}/tenants/apps/shop:v1"], "digest: required for 'app'"),
        (["--base", BASE, "--app", f"{HOST}/a/b@{D1}"], "exactly one"),
        (["--base", BASE, "--digest", "sha256:nope"], "digest: expected sha256"),
        (["--base", BASE, "--label", "team"], "--label: expected KEY=VALUE"),
        (["--action", "abort"], "rollout_id: required"),
        (["--action", "sweep", "--base", BASE], "base: not allowed with action 'sweep'"),
        (["--base", BASE, "--reason", "x" * 501], "reason: longer than 500"),
        (["--base", BASE, "--topic", "bad topic"], "--topic"),
        (["--action", "rebuild"], "Invalid value for '--action'"),
    ],
)
def test_invalid_input_exits_2_and_publishes_nothing(standin, topic, receiver, args, needle) -> None:
    result = invoke("publish", "--project", PROJECT, *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert result.stdout == ""
    assert published(standin, topic) == 0
    assert standin.wait_idle(WAIT_S) and receiver.count() == 0


def test_publish_failure_exits_3(standin, topic, monkeypatch) -> None:
    missing = invoke("publish", "--project", PROJECT, "--topic", "no-such-topic", "--action", "sweep")
    assert missing.exit_code == 3 and "NotFound" in missing.stderr

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"{LOOPBACK}:{free_port()}")  # nothing listens there
    started = time.monotonic()
    down = invoke("publish", "--project", PROJECT, "--action", "sweep", "--timeout", "2")
    assert down.exit_code == 3 and "failed" in down.stderr
    assert time.monotonic() - started < 15  # the CLI gives up instead of retrying for minutes
    assert published(standin, topic) == 0


def _console_script() -> Path:
    """The console script `pip install -e .` (make deps) puts beside the interpreter."""
    return Path(sys.executable).parent / "baseroll"


def test_console_script_publishes(standin, topic, receiver) -> None:
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": standin.host}
    proc = subprocess.run(
        [str(_console_script()), "publish", "--project", PROJECT, "--app", f"{HOST}/tenants/apps/shop:v2",
         "--digest", D1, "--filter-service", "projects/tenants-prod-a/locations/us-central1/services/shop"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    req, _ = received_request(receiver, proc.stdout.strip())
    assert (req.kind, req.image, req.digest) == ("app", ImageRef(HOST, "tenants/apps/shop", "v2"), D1)
    assert req.filter.services == ("projects/tenants-prod-a/locations/us-central1/services/shop",)

    bad = subprocess.run([str(_console_script()), "publish", "--project", PROJECT, "--base", "python:3.12"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not fully qualified" in bad.stderr
    assert published(standin, topic) == 1


COMMANDS = ("demo", "plan", "publish", "rebase", "roll", "status")


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_every_entry_lists_every_command(entry) -> None:
    argv = [str(_console_script())] if entry == "console script" else [sys.executable, "-m", "baseroll.cli"]
    proc = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: baseroll "), proc.stdout
    listed = proc.stdout.split("Commands:", 1)[1].split()
    assert all(command in listed for command in COMMANDS), proc.stdout


def test_json_publish_prints_only_json(standin, topic, receiver) -> None:
    env = {"PATH": os.environ["PATH"], "PUBSUB_EMULATOR_HOST": standin.host, "GOOGLE_CLOUD_PROJECT": PROJECT}
    proc = subprocess.run([sys.executable, "-m", "baseroll.cli", "--json", "publish", "--action", "sweep"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout)
    assert received_request(receiver, out["message_id"])[0] == Request(action="sweep")


# ------------------------------------------------------------------------------------------ approve


def test_approve_publishes_an_approve_request(standin, topic, receiver) -> None:
    result = invoke("--json", "approve", "python-0123456789ab", "--project", PROJECT, "--reason", "canaries fine")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    req, attributes = received_request(receiver, out["message_id"])
    assert req == Request(action="approve", rollout_id="python-0123456789ab", reason="canaries fine")
    assert attributes == {"schema": requests.SCHEMA, "action": "approve"}
    assert out["topic"] == topic and out["request"] == requests.to_document(req)


def test_approve_plain_output_is_the_message_id(standin, topic, receiver) -> None:
    result = invoke("approve", "python-0123456789ab", "--project", PROJECT)
    assert result.exit_code == 0, result.output
    assert received_request(receiver, result.stdout.strip())[0].action == "approve"


@pytest.mark.parametrize("args, needle", [
    (["Not_An_Id"], "rollout_id: 'Not_An_Id' is not a rollout id"),
    (["python-1", "--reason", "x" * 501], "reason: longer than 500"),
])
def test_invalid_approve_exits_2_and_publishes_nothing(standin, topic, receiver, args, needle) -> None:
    result = invoke("approve", *args, "--project", PROJECT)
    assert result.exit_code == 2 and needle in result.stderr and result.stdout == ""
    assert published(standin, topic) == 0
    assert standin.wait_idle(WAIT_S) and receiver.count() == 0


def test_approve_to_a_missing_topic_exits_3(standin) -> None:
    result = invoke("approve", "python-1", "--project", PROJECT, "--topic", "no-such-topic")
    assert result.exit_code == 3 and "NotFound" in result.stderr
