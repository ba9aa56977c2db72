"""The whole local stack: real registry, Cloud Run stand-in over the wire, the function under
functions-framework receiving Eventarc-shaped CloudEvents over HTTP."""
from __future__ import annotations

import json

import httpx
import pytest
from baseroll.contracts import messages, topics
from baseroll.images.oci import ANNOTATION_BASE_DIGEST as ANN_BASE_DIGEST
from baseroll.images.oci import ANNOTATION_BASE_NAME as ANN_BASE_NAME
from baseroll.images.refs import parse

from infra.local import eventarc, scenario
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    with LocalStack(ready_timeout_s=20) as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_fleet(stack, services=40)


def test_base_push_rolls_eligible_services_and_rolls_back_a_failure(stack, fleet):
    eligible = [s for s in fleet.services if s.eligible_for("python")]
    doomed = eligible[1]
    stack.cloudrun.inject_fault({"service": doomed.name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    before = stack.update_counts()

    new_base = scenario.push_new_base(stack, fleet, "python")
    response = scenario.deliver_push(stack, new_base, "3.12", message_id="push-1")
    assert response.status_code == 200, response.text
    record = scenario.wait_rollout(stack, scenario.rollout_id("python", new_base))
    assert record["status"] == "finished", record  # one failure is within the budget of 1

    after = stack.update_counts()
    for r in scenario.results(stack, fleet):
        delta = after.get(r.seeded.name, 0) - before.get(r.seeded.name, 0)
        if r.seeded is doomed:
            assert r.image == r.seeded.image, "a failed revision must end on its old image"
            assert r.state == "rolled-back" and "HEALTH_CHECK_CONTAINER_ERROR" in r.reason
            assert delta == 2  # the update and its rollback
        elif r.seeded.eligible_for("python"):
            assert r.changed and "@sha256:" in r.image, f"{r.seeded.name} not rolled by digest: {r.image}"
            assert scenario.on_base(stack, r.image, new_base)
            assert r.state == "rolled" and delta == 1
            annotations = stack.registry_client().get_manifest(parse(r.image)).data["annotations"]
            assert annotations[ANN_BASE_NAME] == f"{stack.registry.host}/bases/python:3.12"  # fully qualified, tag form
            assert annotations[ANN_BASE_DIGEST] == new_base.digest
        else:
            assert not r.changed and delta == 0, f"{r.seeded.name} should be untouched"

    # One rebase per unique app image, not per service.
    rebased = [rec for rec in stack.log_records() if rec["message"] == "rebase.done" and rec.get("pushed")]
    assert len(rebased) == len({s.app for s in eligible})
    assert all(rec["severity"] for rec in stack.log_records())


def test_redelivered_event_updates_nothing(stack, fleet):
    new_base = fleet.base_versions["python"][-1]
    before = stack.update_counts()
    images_before = {r.seeded.name: r.image for r in scenario.results(stack, fleet)}
    assert scenario.deliver_push(stack, new_base, "3.12", message_id="push-1").status_code == 200
    assert scenario.publish_push(stack, new_base, "3.12")  # and once more through Pub/Sub
    assert stack.wait_idle(30)
    assert stack.update_counts() == before
    assert {r.seeded.name: r.image for r in scenario.results(stack, fleet)} == images_before


def test_duplicate_task_updates_nothing(stack, fleet):
    """A task delivered again after its service was handled (the coordinator re-released it, or
    Pub/Sub redelivered it after a lost ack) makes no update: the worker finds a rolled service
    already on its target, and one rolled back from this target is never tried a second time."""
    new_base = fleet.base_versions["python"][-1]
    rec = scenario.record_store(stack).get(scenario.rollout_id("python", new_base))
    assert rec is not None and rec.status == "finished", rec
    rollout = messages.Rollout(rec.rollout_id, rec.track, rec.track_image, rec.base_digest, rec.kind, rec.scope)
    final = scenario.results(stack, fleet)
    rolled = next(r for r in final if r.state == "rolled")
    rolled_back = next(r for r in final if r.state == "rolled-back")
    # The target it was rolled back from: the stand-in's update history is [target, original image].
    failed_target = stack.cloudrun.stats()["services"][rolled_back.seeded.name]["images"][-2]
    duplicates = {rolled.seeded.name: (rolled.seeded.image, rolled.image),
                  rolled_back.seeded.name: (rolled_back.seeded.image, failed_target)}
    done_before = len(stack.log_records("task.done", target="roll_service"))
    before = stack.update_counts()

    for name, (planned_on, target) in duplicates.items():
        task = messages.Task(rollout, name, 0, (planned_on,), {"0": target})
        data, attributes = messages.encode(task)
        stack.publish(topics.TASKS, data, **attributes)
    assert stack.wait_idle(30)

    assert stack.update_counts() == before
    done = stack.log_records("task.done", target="roll_service")[done_before:]
    outcomes = {r["service"]: (r["outcome"], r["reason"]) for r in done}
    assert outcomes.get(rolled.seeded.name, ("",))[0] == "already-current", done
    assert outcomes.get(rolled_back.seeded.name, ("",))[0] == "skipped", done
    assert "rolled back" in outcomes[rolled_back.seeded.name][1], done


def test_other_pushes_and_bad_events_are_acknowledged_and_change_nothing(stack, fleet):
    before = stack.update_counts()
    url = stack.function_url("on_artifact_push")
    app = fleet.apps["py-api"]
    cases = [
        eventarc.artifact_push_data(str(app), str(app.with_tag("v2"))),  # an app image push
        eventarc.artifact_push_data(None, "127.0.0.1:1/bases/python:3.12", action="DELETE"),
        eventarc.artifact_push_data(str(fleet.base_versions["python"][-1]), None),  # by digest, no tag
        b"not json at all",
        json.dumps({"action": "INSERT", "tag": "evil.example.com/bases/python:3.12"}).encode(),
    ]
    for data in cases:
        response = eventarc.deliver(url, eventarc.message_event("p", "gcr", data))
        assert response.status_code == 200
    # Not a CloudEvent at all: the framework answers 400.
    assert httpx.post(url, json={"hello": "world"}, timeout=10).status_code == 400
    assert stack.update_counts() == before
    reasons = [rec for rec in stack.log_records() if rec["message"] in ("event.ignored", "event.rejected")]
    assert len(reasons) >= len(cases) and all(rec.get("reason") for rec in reasons)


def test_observe_mode_dry_runs_every_trigger():
    """`rollout.dry_run: true` turns a whole deployment into an observer: the push is planned and
    reported, nothing is deployed, no rollout starts."""
    with LocalStack(rollout={"dry_run": True}, targets=("on_artifact_push",)) as s:
        fleet = scenario.seed_fleet(s, services=14)
        before = s.update_counts()
        new_base = scenario.push_new_base(s, fleet, "python")
        assert scenario.deliver_push(s, new_base, "3.12").status_code == 200
        assert s.update_counts() == before
        dry = [r for r in s.log_records() if r["message"] == "rollout.dry_run"]
        assert len(dry) == 1 and dry[0]["to_roll"] == sum(1 for x in fleet.services if x.eligible_for("python"))
        assert scenario.record_store(s).get(scenario.rollout_id("python", new_base)) is None
