"""The worker (`rollout.worker.roll_service`) over the in-memory fakes: one task in, at most one
update, and exactly one result on the results topic whatever it decided."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import pytest
from baseroll.contracts import ledger, topics
from baseroll.contracts.messages import Result, Rollout, Task
from baseroll.contracts.records import RolloutRecord
from baseroll.fleet.fake import Verdict
from baseroll.fleet.view import ServiceView
from baseroll.rollout import fakes, policy, worker
from baseroll.rollout.fakes import REGISTRY, FakeWorld, layer

TRACK = f"{REGISTRY}/bases/python:3.12"
NAME = "projects/tenants-aaaaa/locations/us-east1/services/shop"
OLD = f"{REGISTRY}/apps/shop@sha256:" + "1" * 64
NEW = f"{REGISTRY}/apps/shop@sha256:" + "2" * 64
OTHER = f"{REGISTRY}/apps/shop@sha256:" + "3" * 64


@pytest.fixture(autouse=True)
def no_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker waits and measures only through deps.clock."""
    def refuse(*_: object) -> float:
        raise AssertionError("the worker must use deps.clock, not the time module")
    monkeypatch.setattr(time, "sleep", refuse)
    monkeypatch.setattr(time, "monotonic", refuse)


@dataclass
class Rig:
    w: FakeWorld
    task: Task

    @property
    def rollout(self) -> Rollout:
        return self.task.rollout


def rig() -> Rig:
    w = FakeWorld(fakes.config())
    base = w.registry.push(TRACK, [layer("debian"), layer("python 3.12.1")])
    assert base.digest
    w.fleet.add(ServiceView(NAME, (OLD,)))
    ro = Rollout(ledger.rollout_id("python", base.digest), "python", TRACK, base.digest)
    return Rig(w, Task(ro, NAME, 1, (OLD,), {"0": NEW}))


def _normal(r: Rig) -> None:
    pass


def _superseded(r: Rig) -> None:
    r.w.registry.push(TRACK, [layer("debian"), layer("python 3.12.2")])  # a newer base moves the tag


def _aborted(r: Rig) -> None:
    r.w.records.create(RolloutRecord(r.rollout.rollout_id, "python", r.rollout.base_digest, status="aborted",
                                  reason="aborted by an operator"))


def _halted(r: Rig) -> None:
    r.w.records.create(RolloutRecord(r.rollout.rollout_id, "python", r.rollout.base_digest, status="halted",
                                  reason="wave 0: 2 of 2 failed"))


def _finished(r: Rig) -> None:
    """A finished rollout's late task still applies (its wave was counted without it)."""
    r.w.records.create(RolloutRecord(r.rollout.rollout_id, "python", r.rollout.base_digest, status="finished"))


def _image_changed(r: Rig) -> None:
    r.w.fleet.write_by_someone_else(NAME, {0: OTHER})


def _already_on_target(r: Rig) -> None:
    """A redelivered task: an earlier delivery's update already went ready."""
    r.w.fleet.write_by_someone_else(NAME, {0: NEW}, ledger.rolled(r.rollout.rollout_id, r.rollout.base_digest, (OLD,)))


def _revision_fails(r: Rig) -> None:
    r.w.fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=3)


@dataclass(frozen=True)
class Case:
    arrange: Callable[[Rig], None]
    outcome: str
    reason: str  # a part of the result's reason
    update_calls: int
    final: str
    reads_fleet: bool = True  # the worker reads the service at all
    severity: str = "INFO"  # of the task.done line


CASES = {
    "normal": Case(_normal, "updated", "", 1, NEW),
    "superseded-base": Case(_superseded, "superseded", f"{TRACK} now points at sha256:", 0, OLD, reads_fleet=False),
    "aborted-rollout": Case(_aborted, "cancelled", "rollout aborted: aborted by an operator", 0, OLD,
                            reads_fleet=False),
    "halted-rollout": Case(_halted, "cancelled", "rollout halted: wave 0", 0, OLD, reads_fleet=False),
    "finished-rollout": Case(_finished, "updated", "", 1, NEW),
    "image-changed-since-planning": Case(_image_changed, "skipped", policy.IMAGE_CHANGED_SINCE_PLANNING, 0, OTHER),
    "redelivered-already-on-target": Case(_already_on_target, "already-current", "already on the target", 0, NEW),
    "revision-fails": Case(_revision_fails, "rolled-back", "HEALTH_CHECK_CONTAINER_ERROR", 2, OLD, severity="WARNING"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_roll_service(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    r = rig()
    case.arrange(r)
    r.w.fleet.calls.clear()

    result = worker.roll_service(r.w.deps, r.task)

    assert (result.outcome, result.service, result.wave) == (case.outcome, NAME, 1)
    assert case.reason in result.reason and (case.reason or not result.reason), result.reason
    assert r.w.fleet.calls["update_images"] == case.update_calls, r.w.fleet.calls
    assert (r.w.fleet.calls["get_service"] > 0) == case.reads_fleet
    assert r.w.fleet.services[NAME].images == (case.final,)
    # Whatever it decided, the coordinator hears of it: exactly this result, and it parses.
    assert r.w.bus.messages(topics.RESULTS) == [result]
    assert r.w.bus.published[topics.TASKS] == []
    done = [line for line in map(json.loads, capsys.readouterr().out.splitlines()) if line["message"] == "task.done"]
    assert [(d["severity"], d["outcome"], d["service"]) for d in done] == [(case.severity, case.outcome, NAME)]


def test_a_task_for_a_container_the_service_no_longer_has_is_skipped() -> None:
    r = rig()
    task = Task(r.rollout, NAME, 1, (OLD, OLD), {"1": NEW})
    result = worker.roll_service(r.w.deps, task)
    assert (result.outcome, result.reason) == ("skipped", policy.IMAGE_CHANGED_SINCE_PLANNING)
    assert r.w.fleet.calls["update_images"] == 0


def test_readiness_deadline_comes_from_the_config_and_the_injected_clock() -> None:
    r = rig()
    r.w.fleet.verdicts[NEW] = Verdict(reads_to_settle=10**6)
    start = r.w.clock.monotonic()
    result = worker.roll_service(r.w.deps, r.task)
    assert (result.outcome, result.reason) == ("rolled-back", "readiness deadline passed")
    waited = r.w.clock.monotonic() - start
    assert r.w.config.rollout.ready_timeout_s <= waited < r.w.config.rollout.ready_timeout_s + 1
    assert isinstance(r.w.bus.messages(topics.RESULTS)[0], Result)
