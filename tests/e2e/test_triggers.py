"""Every trigger, delivered as its real sender delivers it: messages published with the unmodified
google-cloud-pubsub client on the topic the sender uses, pushed Eventarc-style by the Pub/Sub
stand-in to the five functions of one local stack, against a seeded fleet.

- `cloud-builds`: Cloud Build notifications (multi-tenant app redeploy, a tracked base, noise, junk);
- `baseroll-requests`: the `baseroll publish` CLI (dry run, filter), raw invalid requests, and the
  `publish-roll-request` step of cloudbuild.yaml run for real through bash with a `gcloud` shim;
- containers using Cloud Run's `base_image_uri`.

Tests run in file order and share the fleet; each computes what it expects from the fleet as it
finds it, and every wait is bounded. The two tests whose targets are deployed as given (an app
build's digest, a `base_image_uri` pin) come last: when such a rollout cannot settle, its
coordinator keeps Pub/Sub busy for minutes and would hold up every test after it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from baseroll.contracts import ledger, requests, topics
from baseroll.contracts.records import TERMINAL
from baseroll.images import refs
from baseroll.images.refs import ImageRef

from infra.local import scenario, seed
from infra.local.stack import TOPIC_PROJECT, LocalStack
from tests.unit.test_cloudbuild_yaml import example_subs, render, script

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 90.0  # bound on every rollout and idle wait below

# A base track that cloudbuild.yaml builds (`$PROJECT_ID/${_REPO}/${_BASE_NAME}:${_BASE_TAG}`),
# added to the stack's configuration so the Cloud Build step's request names a configured track.
CI_PROJECT, CI_REPO, CI_NAME, CI_TAG = "baseroll-ci", "bases", "debian", "bookworm"
CI_BASE = seed.BaseDef("debian-ci", f"{CI_PROJECT}/{CI_REPO}/{CI_NAME}", CI_TAG, True, (f"{CI_TAG}-*",))


@pytest.fixture(scope="module")
def stack():
    extra = [{"name": CI_BASE.name, "image": f"{{registry}}/{CI_BASE.repository}:{CI_BASE.tag}",
              "version_tags": list(CI_BASE.version_tags)}]  # push_base's immutable `<tag>-pN` tags
    with LocalStack(ready_timeout_s=20, extra_tracks=extra) as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_fleet(stack, services=40)


# ------------------------------------------------------------------------------------------ helpers


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Services updated between two snapshots, with how many times."""
    return {n: after[n] - before.get(n, 0) for n in after if after[n] != before.get(n, 0)}


def images_now(stack) -> dict[str, tuple[tuple[str, str], ...]]:
    """Every service's (image, base_image_uri) per container, read through the Cloud Run client."""
    client = stack.run_client()
    out = {}
    for project in stack.projects:
        for region in stack.regions:
            for svc in client.list_services(parent=f"projects/{project}/locations/{region}"):
                out[svc.name] = tuple((c.image, c.base_image_uri) for c in svc.template.containers)
    return out


class Logs:
    """The JSON log lines the functions write from the moment of construction on."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.start = {t: self._size(t) for t in stack.targets}

    def _size(self, target: str) -> int:
        path = self.stack.function_log(target)
        return path.stat().st_size if path.exists() else 0

    def records(self, target: str | None = None, message: str | None = None, **match: Any) -> list[dict]:
        out = []
        for t in ([target] if target else self.stack.targets):
            with open(self.stack.function_log(t), "rb") as f:
                f.seek(self.start[t])
                text = f.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if message is not None and rec.get("message") != message:
                    continue
                if all(rec.get(k) == v for k, v in match.items()):
                    out.append(rec)
        return out

    def one(self, target: str | None = None, message: str | None = None, **match: Any) -> dict:
        found = self.records(target, message, **match)
        assert len(found) == 1, f"expected one {message} {match} in the logs, got {found}"
        return found[0]


def await_rollout(stack, rollout_id: str, logs: Logs, timeout: float = WAIT_S) -> dict:
    """Until the rollout record is terminal and Pub/Sub is idle (bounded), as scenario's wait does,
    but failing at once when the worker or the coordinator rejects one of baseroll's own messages
    (a task or step that its own parser refuses can never settle: the wave would wait out its deadline)."""
    store = scenario.record_store(stack)
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        rejected = logs.records("roll_service", "event.rejected") + logs.records("on_roll_result", "event.rejected")
        assert not rejected, f"rollout {rollout_id}: baseroll rejected its own messages: " + "; ".join(
            sorted({f"{r['trigger']}: {r['reason']}" for r in rejected}))
        record = store.get(rollout_id)
        if record is not None and record.status in TERMINAL and stack.wait_idle(1.0):
            return record.__dict__
        time.sleep(0.2)
    raise TimeoutError(f"rollout {rollout_id} not finished within {timeout:.0f}s: {record}")


def build_subscription(stack) -> dict:
    """Delivery counters of the push subscription that feeds on_build_complete."""
    subs = stack.pubsub.stats()["subscriptions"]
    return next(v for n, v in subs.items() if n.endswith("/eventarc-on-build-complete"))


def idle(stack) -> None:
    assert stack.wait_idle(WAIT_S), "Pub/Sub stand-in still busy"


def track(fleet, base: str) -> ImageRef:
    return fleet.base_track(base)


def current_python(stack, fleet) -> ImageRef:
    """The python version its tag names now, pinned."""
    t = track(fleet, "python")
    digest = stack.registry_client().head_manifest(t)
    assert digest
    return t.with_digest(digest)


def python_target(stack, fleet) -> ImageRef:
    """A python version newer than what the seeded fleet runs (pushed once, shared by the request tests)."""
    if len(fleet.base_versions["python"]) < 2:
        scenario.push_new_base(stack, fleet, "python")
    return fleet.base_versions["python"][-1]


def on_python(stack, image: str, base: ImageRef) -> bool:
    return scenario.on_base(stack, image, base)


def baseroll_cli() -> list[str]:
    exe = shutil.which("baseroll", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "baseroll.cli"]


def cli_publish(*args: str) -> dict:
    """`baseroll publish --json ...` as a subprocess; PUBSUB_EMULATOR_HOST (set by the stack) points it at the stand-in."""
    assert os.environ.get("PUBSUB_EMULATOR_HOST")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "functions"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*baseroll_cli(), "publish", "--json", "--project", TOPIC_PROJECT, *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"baseroll publish failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def get_service(stack, name: str):
    return stack.run_client().get_service(name=name)


# ------------------------------------------------------------------------------------------ cloud-builds


def test_cloud_build_noise_is_ignored_and_junk_rejected(stack, fleet):
    # A build of py-worker that really pushed (tag v1 moved), so acting on any of these would change services.
    new = scenario.rebuild_app(stack, fleet, "py-worker", revision=2)
    name = str(new.with_tag("v1"))
    before, images_before = stack.update_counts(), images_now(stack)
    subs_before = build_subscription(stack)
    logs = Logs(stack)

    ignored: dict[str, tuple[str, str]] = {}  # message id -> (build id, expected reason)
    for status in ("QUEUED", "WORKING", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED"):
        bid = str(uuid.uuid4())
        # FAILURE after the push step: results.images is there, the build still failed.
        mid = scenario.publish_build(stack, bid, status, [(name, new.digest)], with_results=status == "FAILURE")
        ignored[mid] = (bid, f"build status {status}, not SUCCESS")
    bid = str(uuid.uuid4())
    ignored[scenario.publish_build(stack, bid, "SUCCESS", [(name, new.digest)], with_results=False)] = \
        (bid, "the build pushed no image listed under images:")

    good, attrs = scenario.cloud_build_message("b-junk", "SUCCESS", [(name, new.digest)])
    doc = json.loads(good)
    junk: dict[str, str] = {}  # message id -> expected start of the reason

    def publish_junk(data: bytes, attributes: dict[str, str], reason: str) -> None:
        junk[stack.publish(topics.BUILDS, data, **attributes)] = reason

    publish_junk(b"{not json", attrs, "Cloud Build message data is not valid JSON")
    publish_junk(b'["a", "list"]', attrs, "Cloud Build message data must be a JSON object")
    publish_junk(good, {**attrs, "status": "FAILURE"},
                 "status: 'SUCCESS' in the data disagrees with attributes.status 'FAILURE'")
    publish_junk(good, {**attrs, "buildId": "another-build"}, "id: 'b-junk' in the data disagrees")
    publish_junk(json.dumps({**doc, "projectId": "Not A Project"}).encode(), attrs, "projectId: 'Not A Project'")
    bad_digest = {**doc, "results": {"images": [{"name": name, "digest": "sha256:abc"}]}}
    publish_junk(json.dumps(bad_digest).encode(), attrs, "results.images[0].digest: 'sha256:abc' is not a sha256 digest")
    pinned_elsewhere = {**doc, "results": {"images": [{"name": f"{name}@sha256:{'1' * 64}", "digest": new.digest}]}}
    publish_junk(json.dumps(pinned_elsewhere).encode(), attrs, "results.images[0]: name is pinned to")
    no_status = {k: v for k, v in doc.items() if k != "status"}
    publish_junk(json.dumps(no_status).encode(), {"buildId": "b-junk"},
                 "status: missing from both the data and attributes.status")
    idle(stack)

    for mid, (bid, reason) in ignored.items():
        rec = logs.one("on_build_complete", "event.ignored", event_id=mid)
        assert (rec["trigger"], rec["build_id"], rec["reason"]) == ("cloud-build", bid, reason)
        assert rec["severity"] == "INFO"
    for mid, reason in junk.items():
        rec = logs.one("on_build_complete", "event.rejected", event_id=mid)
        assert rec["trigger"] == "cloud-build" and rec["reason"].startswith(reason), rec
        assert rec["severity"] == "WARNING"
    assert not logs.records("on_build_complete", "event.accepted")
    assert stack.update_counts() == before and images_now(stack) == images_before
    assert scenario.record_store(stack).get(ledger.rollout_id("app-py-worker", new.digest)) is None
    # Each acknowledged on its first delivery (2xx): no nack, no redelivery, nothing dead-lettered.
    subs_after = build_subscription(stack)
    sent = len(ignored) + len(junk)
    assert subs_after["acked"] - subs_before["acked"] == sent
    assert subs_after["delivered"] - subs_before["delivered"] == sent
    for key in ("nacked", "redeliveries", "dead_lettered"):
        assert subs_after[key] == subs_before[key], (key, subs_after)


def test_cloud_build_of_a_tracked_base_rolls_it(stack, fleet):
    eligible = [s for s in fleet.services if s.eligible_for("node")]
    assert eligible
    before, images_before = stack.update_counts(), images_now(stack)
    logs = Logs(stack)

    new_base = scenario.push_new_base(stack, fleet, "node")  # the build pushed node:22's next patch
    name = str(track(fleet, "node"))
    build_id = str(uuid.uuid4())
    message_id = scenario.publish_build(
        stack, build_id, "SUCCESS", [(name, new_base.digest)],
        substitutions={"_REPO": "bases", "_BASE_NAME": "node", "_BASE_TAG": "22"},
    )
    record = await_rollout(stack, scenario.rollout_id("node", new_base), logs)
    assert record["status"] == "finished", record
    accepted = logs.one("on_build_complete", "event.accepted", event_id=message_id)
    assert (accepted["kind"], accepted["image"], accepted["build_id"]) == ("base", name, build_id)

    after = stack.update_counts()
    assert changed(before, after) == {s.name: 1 for s in eligible}
    for r in scenario.results(stack, fleet):
        if r.seeded.eligible_for("node"):
            assert "@sha256:" in r.image and scenario.on_base(stack, r.image, new_base), r
            assert r.state == "rolled"
    names = {s.name for s in eligible}
    now = images_now(stack)
    assert {n: v for n, v in now.items() if n not in names} == {n: v for n, v in images_before.items() if n not in names}


# ------------------------------------------------------------------------------------------ baseroll-requests


def test_cli_dry_run_plans_and_changes_nothing(stack, fleet):
    target = python_target(stack, fleet)
    base = str(track(fleet, "python"))
    rid = ledger.rollout_id("python", target.digest or "")
    before, images_before = stack.update_counts(), images_now(stack)
    to_roll = {s.name for s in fleet.services
               if s.eligible_for("python") and not on_python(stack, images_before[s.name][0][0], target)}
    assert to_roll
    logs = Logs(stack)

    out = cli_publish("--base", base, "--dry-run", "--reason", "e2e dry run")
    assert out["topic"] == f"projects/{TOPIC_PROJECT}/topics/{topics.REQUESTS}"
    assert out["request"] == {"schema": requests.SCHEMA, "action": "roll", "base": base, "dry_run": True,
                              "reason": "e2e dry run"}
    idle(stack)

    accepted = logs.one("on_roll_request", "request.accepted", event_id=out["message_id"])
    assert accepted["dry_run"] is True and accepted["image"] == base
    dry = logs.one("on_roll_request", "rollout.dry_run")
    assert (dry["rollout_id"], dry["dry_run"], dry["to_roll"]) == (rid, True, len(to_roll))
    shown = refs.parse(dry["target"])  # the track at the digest, with or without its tag
    assert (shown.name, shown.digest) == (target.name, target.digest), dry
    planned = {rec["service"]: rec for rec in logs.records("on_roll_request", "service.planned")}
    assert set(planned) >= {s.name for s in fleet.services}
    assert len(logs.records("on_roll_request", "service.planned")) == len(planned), "one line per service"
    for s in fleet.services:
        rec = planned[s.name]
        if s.name in to_roll:
            assert (rec["action"], rec["strategy"]) == ("roll", "rebase"), rec
        else:
            assert rec["action"] == "skip" and rec["reason"], rec
            if s.opted_out:
                assert "opted out" in rec["reason"]

    # Nothing deployed, nothing recorded, no step or task released.
    assert stack.update_counts() == before and images_now(stack) == images_before
    assert scenario.record_store(stack).get(rid) is None
    assert not logs.records(message="rollout.started") and not logs.records("roll_service")
    assert not logs.records("on_roll_result")


def test_cli_filtered_request_rolls_only_its_region_then_the_rest(stack, fleet):
    target = python_target(stack, fleet)
    base = str(track(fleet, "python"))
    images_before = images_now(stack)
    eligible = {s.name for s in fleet.services
                if s.eligible_for("python") and not on_python(stack, images_before[s.name][0][0], target)}
    europe = {n for n in eligible if "/locations/europe-west1/" in n}
    assert europe and eligible - europe
    before = stack.update_counts()
    logs = Logs(stack)

    out = cli_publish("--base", base, "--filter-region", "europe-west1")
    assert out["request"]["filter"] == {"regions": ["europe-west1"]}
    deadline = time.monotonic() + WAIT_S
    while not logs.records("on_roll_request", "rollout.started") and time.monotonic() < deadline:
        time.sleep(0.2)
    started = logs.one("on_roll_request", "rollout.started")
    rid = ledger.rollout_id("python", target.digest or "")
    assert started["rollout_id"].startswith(rid + "-"), "a filtered request is a rollout of its own"
    assert started["to_roll"] == len(europe)
    record = await_rollout(stack, started["rollout_id"], logs)
    assert record["status"] == "finished" and record["scope"] == {"regions": ["europe-west1"]}, record

    middle = stack.update_counts()
    assert changed(before, middle) == {n: 1 for n in europe}
    for n in europe:
        assert on_python(stack, get_service(stack, n).template.containers[0].image, target)

    # The same base without a filter: the rest of the fleet, and the filtered region not again.
    out = cli_publish("--base", base)
    record = await_rollout(stack, rid, logs)
    assert record["status"] == "finished", record
    after = stack.update_counts()
    assert changed(middle, after) == {n: 1 for n in eligible - europe}
    now = images_now(stack)
    for n in eligible:
        assert on_python(stack, now[n][0][0], target), n
    assert {n: v for n, v in now.items() if n not in eligible} == \
        {n: v for n, v in images_before.items() if n not in eligible}


INVALID_REQUESTS = [
    # (name, data (with {base}/{host} filled in), attributes, expected start of the reason)
    ("bad field",
     {"schema": requests.SCHEMA, "action": "roll", "base": "{base}", "filter": {"regions": ["europe-west1", "moon"]}},
     {}, "filter.regions[1]: 'moon' is not a region (e.g. us-central1)"),
    ("unknown field",
     {"schema": requests.SCHEMA, "action": "roll", "base": "{base}", "priority": "high"},
     {}, "unknown field: 'priority'"),
    ("app without digest",
     {"schema": requests.SCHEMA, "action": "roll", "app": "{host}/apps/py-api:v1"},
     {}, "digest: required for 'app'"),
    ("base not a track",
     {"schema": requests.SCHEMA, "action": "roll", "base": "{host}/bases/debian:12"},
     {}, "base: {host}/bases/debian:12 is not a configured base track"),
    ("base by digest only",
     {"schema": requests.SCHEMA, "action": "roll", "base": "{host}/bases/python@sha256:" + "1" * 64},
     {}, "base: a base track is a tag"),
    ("field of another action",
     {"schema": requests.SCHEMA, "action": "roll", "base": "{base}", "rollout_id": "python-0123456789ab"},
     {}, "rollout_id: not allowed with action 'roll'"),
    ("other schema version",
     {"schema": "baseroll.dev/roll-request/v2", "action": "roll", "base": "{base}"},
     {}, "schema: expected"),
    ("attribute disagrees",
     {"schema": requests.SCHEMA, "action": "roll", "base": "{base}"},
     {"schema": requests.SCHEMA, "action": "sweep"}, "attributes.action: 'sweep' disagrees"),
]


def test_invalid_requests_are_rejected_naming_the_field(stack, fleet):
    # A base version nobody runs yet: any of these requests, if accepted, would roll the fleet.
    new_base = scenario.push_new_base(stack, fleet, "python")
    host, base = fleet.registry, str(track(fleet, "python"))
    before, images_before = stack.update_counts(), images_now(stack)
    logs = Logs(stack)

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{base}", base).replace("{host}", host)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    sent = {}
    for name, doc, attrs, reason in INVALID_REQUESTS:
        sent[stack.publish(topics.REQUESTS, json.dumps(fill(doc)).encode(), **attrs)] = (name, fill(reason))
    sent[stack.publish(topics.REQUESTS, b'{"schema": "x", "schema": "y"}')] = ("duplicate key", "schema: duplicate field")
    idle(stack)

    for mid, (name, reason) in sent.items():
        rec = logs.one("on_roll_request", "event.rejected", event_id=mid)
        assert rec["trigger"] == "request" and rec["severity"] == "WARNING"
        assert rec["reason"].startswith(reason), f"{name}: {rec['reason']!r}"
    assert not logs.records(message="rollout.started") and not logs.records("roll_service")
    assert stack.update_counts() == before and images_now(stack) == images_before
    assert scenario.record_store(stack).get(scenario.rollout_id("python", new_base)) is None


# ------------------------------------------------------------------------------------------ cloudbuild.yaml


GCLOUD_SHIM = '''#!{python}
"""A `gcloud` for the publish-roll-request step: the two commands it runs, against the local stack.

`artifacts docker images describe REF --format=value(image_summary.digest)` prints the digest REF's
tag names in the registry; `pubsub topics publish TOPIC --attribute=K=V,... --message=M` publishes
with the real google-cloud-pubsub client (PUBSUB_EMULATOR_HOST) in $CLOUDSDK_CORE_PROJECT.
"""
import json, os, sys
sys.path.insert(0, {functions!r})
args = sys.argv[1:]
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args}}) + "\\n")


def fail(message):
    print("ERROR: (gcloud) " + message, file=sys.stderr)
    sys.exit(1)


if args[:4] == ["artifacts", "docker", "images", "describe"]:
    if len(args) != 6 or args[5] != "--format=value(image_summary.digest)":
        fail("unsupported arguments: " + " ".join(args))
    from baseroll.images import refs
    from baseroll import config, runtime
    ref = refs.parse(args[4])
    host = os.environ["SHIM_REGISTRY"]
    if ref.registry != host or ref.tag is None:
        fail("not an image of the local registry: " + args[4])
    digest = runtime.registry_client(config.load()).head_manifest(ref)  # with the stack's credentials
    if digest is None:
        fail("NOT_FOUND: " + args[4])
    print(digest)
elif args[:3] == ["pubsub", "topics", "publish"] and len(args) >= 4:
    topic, attributes, message = args[3], {{}}, None
    for arg in args[4:]:
        if arg.startswith("--attribute="):
            attributes.update(kv.split("=", 1) for kv in arg[len("--attribute="):].split(","))
        elif arg.startswith("--message="):
            message = arg[len("--message="):]
        else:
            fail("unrecognized argument: " + arg)
    if message is None:
        fail("--message is required")
    from google.cloud import pubsub_v1
    client = pubsub_v1.PublisherClient()
    path = client.topic_path(os.environ["CLOUDSDK_CORE_PROJECT"], topic)
    message_id = client.publish(path, message.encode(), **attributes).result(timeout=30)
    with open(os.environ["SHIM_LOG"], "a") as log:
        log.write(json.dumps({{"published": message_id, "topic": path}}) + "\\n")
    print("messageIds:")
    print("- '%s'" % message_id)
else:
    fail("unsupported command: " + " ".join(args))
'''


def test_cloud_build_step_request_reaches_the_function_and_rolls(stack, fleet, tmp_path):
    host = stack.registry.host
    client, run = stack.registry_client(), stack.run_client()
    # A fleet on the CI-built base: one app with OCI base annotations, one recognisable by layers only.
    v1 = seed.push_base(client, host, CI_BASE, 1)
    apps = {
        "deb-web": seed.push_app(client, host, "deb-web", CI_BASE, 1, v1, annotated=True),
        "deb-cron": seed.push_app(client, host, "deb-cron", CI_BASE, 1, v1, annotated=False),
    }
    services = {
        "projects/tenants-prod-a/locations/us-central1/services/ci-web": apps["deb-web"],
        "projects/tenants-prod-b/locations/europe-west1/services/ci-cron": apps["deb-cron"],
    }
    for name, image in services.items():
        seed.create_service(run, name, str(image), labels={seed.APP_TAG_LABEL: "v1"})
    # The build's `build` and `push` steps: the next version of the base under its tag.
    v2 = seed.push_base(client, host, CI_BASE, 2)
    before = stack.update_counts()
    logs = Logs(stack)

    # Run the publish-roll-request step as Cloud Build would, with a gcloud that talks to the stack.
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    step = next(s for s in doc["steps"] if s["id"] == "publish-roll-request")
    build_id = str(uuid.uuid4())
    subs = example_subs(doc, _REGISTRY=host, _REPO=CI_REPO, _BASE_NAME=CI_NAME, _BASE_TAG=CI_TAG)
    subs.update(PROJECT_ID=CI_PROJECT, BUILD_ID=build_id)
    tag_ref = f"{host}/{CI_BASE.repository}:{CI_TAG}"
    assert render(doc["images"][0], subs) == tag_ref, "the step must name the image the build pushes"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "gcloud"
    shim.write_text(GCLOUD_SHIM.format(python=sys.executable, functions=str(ROOT / "functions")))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    shim_log = tmp_path / "gcloud.jsonl"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SHIM_LOG": str(shim_log),
           "SHIM_REGISTRY": host, "CLOUDSDK_CORE_PROJECT": TOPIC_PROJECT, "BASEROLL_CONFIG": str(stack.config_path),
           "PUBSUB_EMULATOR_HOST": os.environ["PUBSUB_EMULATOR_HOST"]}
    proc = subprocess.run(["bash", "-c", render(script(step), subs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"step failed:\n{proc.stdout}\n{proc.stderr}"
    calls = [json.loads(line) for line in shim_log.read_text().splitlines()]
    assert calls[0]["argv"][:5] == ["artifacts", "docker", "images", "describe", tag_ref]
    published = [c for c in calls if "published" in c]
    assert len(published) == 1 and published[0]["topic"] == f"projects/{TOPIC_PROJECT}/topics/{topics.REQUESTS}"

    rid = ledger.rollout_id(CI_BASE.name, v2.digest or "")
    record = await_rollout(stack, rid, logs)
    assert record["status"] == "finished", record
    accepted = logs.one("on_roll_request", "request.accepted", event_id=published[0]["published"])
    assert (accepted["action"], accepted["image"], accepted["digest"], accepted["reason"]) == \
        ("roll", tag_ref, v2.digest, f"cloud build {build_id}")
    assert changed(before, stack.update_counts()) == {name: 1 for name in services}
    for name in services:
        image = get_service(stack, name).template.containers[0].image
        assert "@sha256:" in image and scenario.on_base(stack, image, ImageRef(host, CI_BASE.repository, None, v2.digest))


# ------------------------------------------------------------------------------------------ redeploys by digest (app builds, base_image_uri pins)


def test_cloud_build_of_a_shared_app_redeploys_every_tenant_once(stack, fleet):
    tenants = [s for s in fleet.services if s.app == "py-api" and not s.opted_out]
    opted_out = [s for s in fleet.services if s.app == "py-api" and s.opted_out]
    assert len(tenants) >= 3 and opted_out, "the seed must give py-api several tenants and an opted-out one"
    before, images_before = stack.update_counts(), images_now(stack)
    logs = Logs(stack)

    # The app pipeline rebuilt py-api (changed app layer) and moved its tag v1 to the new build.
    new = scenario.rebuild_app(stack, fleet, "py-api", revision=2)
    assert new.digest != fleet.apps["py-api"].digest
    name = str(new.with_tag("v1"))
    build_id = str(uuid.uuid4())
    data, attributes = scenario.cloud_build_message(
        build_id, "SUCCESS", [(name, new.digest)],
        substitutions={"_APP_NAME": "py-api", "_APP_TAG": "v1", "_REPO": "apps"},
    )
    message_id = stack.publish(topics.BUILDS, data, **attributes)

    rid = ledger.rollout_id("app-py-api", new.digest)
    record = await_rollout(stack, rid, logs)
    assert record["status"] == "finished", record
    accepted = logs.one("on_build_complete", "event.accepted", event_id=message_id)
    assert (accepted["trigger"], accepted["build_id"], accepted["kind"], accepted["digest"]) == \
        ("cloud-build", build_id, "app", new.digest)

    after, images_after = stack.update_counts(), images_now(stack)
    assert changed(before, after) == {s.name: 1 for s in tenants}, "each tenant updated exactly once, nothing else"
    for s in tenants:
        svc = get_service(stack, s.name)
        assert svc.template.containers[0].image == str(new), f"{s.name} not on the new build by digest"
        assert svc.annotations[ledger.ROLLOUT_ID] == rid and svc.annotations[ledger.STATE] == "rolled"
        assert json.loads(svc.annotations[ledger.PREVIOUS_IMAGES]) == [images_before[s.name][0][0]]
    tenant_names = {s.name for s in tenants}
    assert {n: v for n, v in images_after.items() if n not in tenant_names} == \
        {n: v for n, v in images_before.items() if n not in tenant_names}

    # The same notification again (Pub/Sub redelivers; Cloud Build may publish twice): nothing more.
    logs = Logs(stack)
    again = stack.publish(topics.BUILDS, data, **attributes)
    idle(stack)
    assert stack.update_counts() == after and images_now(stack) == images_after
    assert logs.one("on_build_complete", "event.accepted", event_id=again)
    assert logs.one("on_build_complete", "rollout.already_started", rollout_id=rid)
    assert not logs.records(message="service.updated")


def test_base_image_uri_pins_move_and_tag_pins_are_left_to_cloud_run(stack, fleet):
    host = fleet.registry
    old = current_python(stack, fleet)  # what the tag names now: about to become the old base
    base_repo = f"{host}/{next(b for b in seed.BASES if b.name == 'python').repository}"
    python = next(b for b in seed.BASES if b.name == "python")
    # A source-deployed function: its image is the app only, Cloud Run supplies the base.
    app = seed.push_app(stack.registry_client(), host, "py-fn", python, len(fleet.base_versions["python"]), old,
                        annotated=False, tags=("v1",))
    pinned = ["projects/tenants-prod-a/locations/us-central1/services/fn-pinned-1",
              "projects/tenants-prod-b/locations/europe-west1/services/fn-pinned-2"]
    by_tag = "projects/tenants-prod-a/locations/europe-west1/services/fn-by-tag"
    run = stack.run_client()
    for name in pinned:
        seed.create_service(run, name, str(app), labels={"tenant": "fn"}, base_image_uri=f"{base_repo}@{old.digest}")
    seed.create_service(run, by_tag, str(app), labels={"tenant": "fn"}, base_image_uri=str(track(fleet, "python")))
    assert get_service(stack, pinned[0]).template.containers[0].base_image_uri == f"{base_repo}@{old.digest}"
    before, images_before = stack.update_counts(), images_now(stack)
    logs = Logs(stack)

    new_base = scenario.push_new_base(stack, fleet, "python")
    data = requests.to_message(base=str(track(fleet, "python")), digest=new_base.digest, reason="base_image_uri e2e")
    stack.publish(topics.REQUESTS, data, schema=requests.SCHEMA, action="roll")
    rid = scenario.rollout_id("python", new_base)
    record = await_rollout(stack, rid, logs)
    assert record["status"] == "finished", record

    after = stack.update_counts()
    for name in pinned:
        svc = get_service(stack, name)
        c = svc.template.containers[0]
        assert c.base_image_uri == f"{base_repo}@{new_base.digest}", name
        assert c.image == str(app), "a base_image_uri container's image is not rebased"
        assert after[name] - before[name] == 1
        assert svc.annotations[ledger.STATE] == "rolled" and svc.annotations[ledger.ROLLOUT_ID] == rid
        rec = logs.one("on_roll_request", "service.planned", service=name)
        assert (rec["action"], rec["strategy"]) == ("roll", "base-uri"), rec
    assert after[by_tag] == before[by_tag] and images_now(stack)[by_tag] == images_before[by_tag]
    rec = logs.one("on_roll_request", "service.planned", service=by_tag)
    assert rec["action"] == "skip", rec
    assert "follows a tag" in rec["reason"] and "Cloud Run's automatic base image updates manage it" in rec["reason"], rec
    # The rest of the python fleet went along; nothing else moved.
    for r in scenario.results(stack, fleet):
        if r.seeded.eligible_for("python"):
            assert scenario.on_base(stack, r.image, new_base), r
        else:
            assert images_now(stack)[r.seeded.name] == images_before[r.seeded.name]
