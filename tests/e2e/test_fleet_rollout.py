"""Fleet scale on the local stack: 504 services over 2 projects × 3 regions, rolled through Pub/Sub
(planner → tasks → workers → results → coordinator), with waves, quota pushback, injected
duplicate/out-of-order deliveries, a canary halt and supersession."""
from __future__ import annotations

import time

import pytest

from infra.local import scenario
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "europe-west1", "asia-east1")
SERVICES = 504


@pytest.fixture(scope="module")
def stack():
    with LocalStack(
        regions=REGIONS,
        ready_timeout_s=20,
        # The stand-in allows fewer writes than the coordinator releases: 429s must be absorbed by backoff.
        write_quota_per_min=240,
        # Verified at zero traffic, through the stand-in's proxy (simulated revisions answer 200).
        rollout={"waves": [0.1, 0.5, 1.0], "failure_budget": 0, "write_quota_per_min": 600,
                 "verify": {"enabled": True}},
        pubsub_faults={"duplicate_probability": 0.2, "reorder": True, "reorder_window_s": 0.3, "seed": 7},
    ) as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_fleet(stack, services=SERVICES, canaries=12)


def stats(stack) -> dict:
    return stack.cloudrun.stats()["services"]


def test_rolls_every_eligible_service_exactly_once_in_wave_order(stack, fleet):
    # Below what the coordinator releases (600/min): the stand-in answers 429 and workers back off.
    stack.cloudrun.set_write_quota(20)
    stack.cloudrun.inject_fault({"http": {"status": 429, "probability": 0.05, "methods": ["PATCH"], "seed": 3}})
    before = stats(stack)
    new_base = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, new_base, "3.12")
    rid = scenario.rollout_id("python", new_base)
    record = scenario.wait_rollout(stack, rid, timeout=300)
    assert record["status"] == "finished", record

    after = stats(stack)
    eligible = [s for s in fleet.services if s.eligible_for("python")]
    assert len(eligible) > 150
    for r in scenario.results(stack, fleet):
        delta = after[r.seeded.name]["updates"] - before[r.seeded.name]["updates"]
        deploys = len(after[r.seeded.name]["images"]) - len(before[r.seeded.name]["images"])
        if r.seeded.eligible_for("python"):
            # One deploy (at zero traffic), then the traffic given back once verified: two writes.
            assert (deploys, delta) == (1, 2), f"{r.seeded.name}: {deploys} deploys in {delta} writes"
            assert r.changed and scenario.on_base(stack, r.image, new_base)
        else:
            assert delta == 0 and not r.changed
    # Quota pushback and duplicates really happened, and changed nothing above.
    assert stack.cloudrun.stats()["throttled"] > 0 and stack.cloudrun.stats()["responses"].get("429", 0) > 0
    assert sum(s["duplicates"] for s in stack.pubsub.stats()["subscriptions"].values()) > 0

    # Waves in order: wave k+1 was released only after wave k settled; canaries first.
    settled = [r for r in stack.log_records("wave.settled") if r["rollout_id"] == rid]
    released = [r for r in stack.log_records("wave.released") if r["rollout_id"] == rid]
    assert [r["wave"] for r in settled] == sorted(r["wave"] for r in settled) == list(range(len(record["waves"])))
    for s in settled:
        later = [r for r in released if r["wave"] == s["wave"] + 1]
        assert all(r["time"] > s["time"] for r in later)
    canaries = {s.name for s in eligible if fleet.services.index(s) < 12}
    assert record["waves"][0]["size"] == len(canaries)


def test_canary_failure_halts_before_the_next_wave(stack, fleet):
    stack.cloudrun.clear_faults()
    stack.cloudrun.set_write_quota(None)
    eligible = [s for s in fleet.services if s.eligible_for("node")]
    canary = next(s for s in eligible if fleet.services.index(s) < 12)
    stack.cloudrun.inject_fault({"service": canary.name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    before = stats(stack)
    new_base = scenario.push_new_base(stack, fleet, "node")
    scenario.publish_push(stack, new_base, "22")
    record = scenario.wait_rollout(stack, scenario.rollout_id("node", new_base), timeout=180)
    assert record["status"] == "halted" and "wave 0" in record["reason"], record

    after = stats(stack)
    changed = {s.name for s in eligible if after[s.name]["updates"] != before[s.name]["updates"]}
    canaries = {s.name for s in eligible if fleet.services.index(s) < 12}
    assert changed <= canaries, "nothing outside the canary wave may be touched"
    result = next(r for r in scenario.results(stack, fleet) if r.seeded.name == canary.name)
    assert result.image == canary.image and result.state == "rolled-back"


def test_newer_base_supersedes_an_inflight_rollout(stack, fleet):
    eligible = [s for s in fleet.services if s.eligible_for("node")]
    before = {name: len(v["images"]) for name, v in stats(stack).items()}
    v3 = scenario.push_new_base(stack, fleet, "node")
    scenario.publish_push(stack, v3, "22")
    store = scenario.record_store(stack)
    r3_id = scenario.rollout_id("node", v3)
    # Let v3 get a wave in before v4 arrives, so some services are already on v3.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rec = store.get(r3_id)
        if rec is not None and rec.waves:
            break
        time.sleep(0.2)
    else:
        pytest.fail("v3 rollout never settled a wave")
    v4 = scenario.push_new_base(stack, fleet, "node")
    scenario.publish_push(stack, v4, "22")
    r4 = scenario.wait_rollout(stack, scenario.rollout_id("node", v4), timeout=300)
    assert r4["status"] == "finished", r4
    assert store.get(r3_id).status == "superseded"

    final = {r.seeded.name: r for r in scenario.results(stack, fleet)}
    went_through_v3 = 0
    for s in eligible:
        assert scenario.on_base(stack, final[s.name].image, v4), f"{s.name} not on the newest base"
        history = stats(stack)[s.name]["images"][before[s.name]:]
        # No regression and nothing twice: at most one step onto v3, then one onto v4, never back.
        assert 1 <= len(history) <= 2 or final[s.name].state == "rolled-back", history
        assert scenario.on_base(stack, history[-1], v4)
        if len(history) == 2:
            assert scenario.on_base(stack, history[0], v3)
            went_through_v3 += 1
    assert went_through_v3 > 0, "the test must catch services mid-flight on v3"
