"""Cloud Run's documented semantics on the stand-in, through the real adapter and `deploy.apply`
(docs/GOOGLE_APIS.md#cloud-run-admin-api-v2): a failed reconciliation is seen at its terminal
condition within a few polls, with Cloud Run's reason, and rolled back well inside the budget;
traffic pinned to the replaced revision (with its tag) follows the roll, other pins stay."""
from __future__ import annotations

import time

from baseroll.clock import SYSTEM
from baseroll.contracts import ledger
from baseroll.fleet import deploy, health
from baseroll.fleet.cloudrun import CloudRunFleet
from baseroll.fleet.view import REVISION, TrafficSplit
from google.cloud import run_v2

from infra.local.cloudrun_standin import CloudRunStandin
from tests.integration.test_cloudrun_standin import (  # noqa: F401  (module-scoped fixtures)
    FAST_POLL,
    OP_TIMEOUT,
    Images,
    _create,
    _no_faults_left,
    _short,
    client,
    images,
    registry,
    standin,
)

BASE = "sha256:" + "b" * 64
RID = "python-" + "b" * 12
READY_TIMEOUT_S = 200.0  # what a failed revision would have cost if only the deadline caught it
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


def test_a_failing_revision_is_detected_in_seconds_with_cloud_runs_reason(
    client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images,  # noqa: F811
) -> None:
    fleet = CloudRunFleet(client)
    name = _create(client, "semantics-failing", images.good).name
    standin.inject_fault({"service": name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    started = time.monotonic()
    out = deploy.apply(fleet, fleet.get_service(name), deploy.Target({0: images.good_v2}), rollout=RID,
                       base_digest=BASE, timeout_s=READY_TIMEOUT_S, clock=SYSTEM)
    elapsed = time.monotonic() - started

    assert out.result == "rolled-back" and out.reason.startswith("HEALTH_CHECK_CONTAINER_ERROR: ")
    assert elapsed < 10, elapsed  # seconds, not READY_TIMEOUT_S; the rollback's gate included
    now = client.get_service(name=name)
    assert now.template.containers[0].image == images.good
    assert now.annotations[ledger.STATE] == ledger.ROLLED_BACK


def test_the_failed_state_is_the_documented_one(
    client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images,  # noqa: F811
) -> None:
    """reconciling false, terminal condition failed; generation observed, latest ready revision and
    traffic statuses keep the last serving revision's state; `health.assess` says failed at once."""
    fleet = CloudRunFleet(client)
    before = fleet.get_service(_create(client, "semantics-state", images.good).name)
    standin.inject_fault({"service": before.name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    after = fleet.update_images(before, {0: images.good_v2}, annotations={}, timeout=OP_TIMEOUT)
    assert (after.reconciling, after.terminal_state) == (False, "CONDITION_FAILED")
    assert (after.generation, after.observed_generation) == (before.generation + 1, before.observed_generation)
    assert after.latest_ready_revision == before.latest_ready_revision != after.latest_created_revision
    assert after.traffic_statuses == before.traffic_statuses
    assert health.assess(after) == health.Health(
        "failed", f"HEALTH_CHECK_CONTAINER_ERROR: {after.terminal_message}")


def test_pinned_and_tagged_traffic_follows_the_roll(
    client: run_v2.ServicesClient, images: Images,  # noqa: F811
) -> None:
    """90 % pinned to the first revision (kept), 10 % and the tag `canary` on the revision we replace
    (moved to the new one, tag and all); the stand-in serves the tag's URL on the new revision."""
    created = _create(client, "semantics-pinned", images.good)
    first = _short(created.latest_ready_revision)
    svc = client.get_service(name=created.name)
    svc.template.containers[0].image = images.good_v2
    svc.template.revision = ""
    second = client.update_service(service=svc).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    replaced = _short(second.latest_ready_revision)
    second.traffic = [run_v2.TrafficTarget(type_=BY_REVISION, revision=first, percent=90),
                      run_v2.TrafficTarget(type_=BY_REVISION, revision=replaced, percent=10, tag="canary")]
    client.update_service(service=second).result(timeout=OP_TIMEOUT, polling=FAST_POLL)

    fleet = CloudRunFleet(client)
    out = deploy.apply(fleet, fleet.get_service(created.name), deploy.Target({0: images.good}), rollout=RID,
                       base_digest=BASE, timeout_s=30, clock=SYSTEM)

    now = fleet.get_service(created.name)
    new = _short(now.latest_ready_revision)
    assert out.result == "updated" and new not in (first, replaced)
    assert now.traffic == (TrafficSplit(REVISION, 90, first), TrafficSplit(REVISION, 10, new, "canary"))
    assert now.traffic_statuses == now.traffic
    assert now.annotations[ledger.TRAFFIC] == (f"traffic followed: 90% {first}, 10% {replaced} tag=canary -> "
                                               f"90% {first}, 10% {new} tag=canary")
    raw = client.get_service(name=created.name)
    # The tag's own URL, served by the stand-in's loopback proxy (common.tag_uri)
    assert raw.traffic_statuses[1].uri.endswith("/t/demo-project/us-central1/semantics-pinned/canary")
    assert now.tag_uris == {"canary": raw.traffic_statuses[1].uri} and now.uri == raw.uri
