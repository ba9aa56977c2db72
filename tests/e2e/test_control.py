"""Operator control through roll requests on `baseroll-requests`: resume a halted rollout, abort a
running one, and sweep up a base push whose event was lost."""
from __future__ import annotations

import time

import pytest
from baseroll.contracts import requests

from infra.local import scenario
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    # Slow deploys and many small waves, so there is time to act between waves.
    with LocalStack(deploy_latency_s=0.4, rollout={"waves": [0.25, 0.5, 0.75, 1.0], "failure_budget": 0}) as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_fleet(stack, services=40)


def request(stack, **fields) -> None:
    data = requests.to_message(**fields)
    stack.publish("baseroll-requests", data, schema=requests.SCHEMA, action=fields.get("action", "roll"))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout:.0f}s")


def test_resume_a_halted_rollout(stack, fleet):
    eligible = [s for s in fleet.services if s.eligible_for("python")]
    canary = next(s for s in eligible if fleet.services.index(s) < 4)
    stack.cloudrun.inject_fault({"service": canary.name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    new_base = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, new_base, "3.12")
    rid = scenario.rollout_id("python", new_base)
    assert scenario.wait_rollout(stack, rid)["status"] == "halted"

    request(stack, action="resume", rollout_id=rid)
    record = scenario.wait_rollout(stack, rid, timeout=180)
    assert record["status"] == "finished", record
    final = {r.seeded.name: r for r in scenario.results(stack, fleet)}
    for s in eligible:
        if s.name == canary.name:
            assert final[s.name].image == s.image and final[s.name].state == "rolled-back"
        else:
            assert scenario.on_base(stack, final[s.name].image, new_base)


def test_abort_stops_a_running_rollout(stack, fleet):
    eligible = [s for s in fleet.services if s.eligible_for("node")]
    before = stack.update_counts()
    # Slow deploys, so the abort surely lands while later waves still run (each takes 4 s at least),
    # however slowly its delivery goes on a loaded machine.
    stack.cloudrun.deploy_latency_s = 4.0
    new_base = scenario.push_new_base(stack, fleet, "node")
    scenario.publish_push(stack, new_base, "22")
    rid = scenario.rollout_id("node", new_base)
    store = scenario.record_store(stack)
    wait_for(lambda: (store.get(rid) is not None and store.get(rid).waves), 120, "the first wave settled")
    request(stack, action="abort", rollout_id=rid)
    record = scenario.wait_rollout(stack, rid, timeout=120)
    assert record["status"] == "aborted"
    stack.wait_idle(30)
    time.sleep(2)  # a step that was mid-wave when the abort landed must not bring the rollout back
    assert store.get(rid).status == "aborted"
    stack.cloudrun.deploy_latency_s = 0.4
    changed = [s for s in eligible if stack.update_counts()[s.name] != before[s.name]]
    assert 0 < len(changed) < len(eligible), "some waves rolled before the abort, the rest never started"
    for r in scenario.results(stack, fleet):
        if r.seeded in changed:
            assert scenario.on_base(stack, r.image, new_base)  # rolled services stay rolled, nothing half-done


def test_sweep_rolls_a_push_whose_event_was_lost(stack, fleet):
    """Every eligible python service is rolled once onto the base whose event was lost (the canary
    rolled back from the previous base too: that was another target); the node rollout that was
    aborted above is left to the operator, so nothing else is touched."""
    before = stack.update_counts()
    v = scenario.push_new_base(stack, fleet, "python")  # no event published: it was lost
    request(stack, action="sweep")
    record = scenario.wait_rollout(stack, scenario.rollout_id("python", v), timeout=180)
    assert record["status"] == "finished", record
    after = stack.update_counts()
    for r in scenario.results(stack, fleet):
        delta = after[r.seeded.name] - before[r.seeded.name]
        if r.seeded.eligible_for("python"):
            assert scenario.on_base(stack, r.image, v), f"{r.seeded.name} not on the swept base: {r.image}"
            assert r.state == "rolled" and delta == 1, f"{r.seeded.name}: state {r.state!r}, {delta} updates"
        else:
            assert delta == 0, f"{r.seeded.name} is not eligible but was updated {delta} times"
