"""A rollback undoes only baseroll's own change (issue #12): a person's hotfix deployed while
baseroll gates a failing revision is kept, never replaced by the pre-rollout image.

One rollout over the local stack, with deploys slow enough (1 s) to act during a gate:
- `during_gate`: its new revision fails; while it is still deploying, a person deploys a hotfix
  through the unmodified google-cloud-run client (read the service, set the image, write it back,
  as `gcloud run deploy` does);
- `before_rollback`: its new revision fails and baseroll has seen it; its rollback write is held
  in the Cloud Run stand-in until the person's hotfix has landed (the interleaving where a deploy
  lands between baseroll's last read and its write: the write meets an etag conflict);
- `control`: its new revision fails and nobody else writes: it is rolled back;
- every other eligible service rolls normally.
Everything is checked through the stand-in's own view (its services and update history).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
from baseroll.contracts import ledger
from baseroll.images.refs import ImageRef
from google.api_core.operation import Operation
from google.cloud import run_v2

from infra.local import scenario
from infra.local.cloudrun.faults import ApiCall
from infra.local.cloudrun_standin import CloudRunStandin
from infra.local.seed import SeededService
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

DEPLOY_LATENCY_S = 1.0  # each revision takes this long to become ready or fail: the window to act in
FAULT = "HEALTH_CHECK_CONTAINER_ERROR"
HUMAN_TIMEOUT_S = 60.0


@dataclass
class Person:
    """Someone with gcloud: deploys a hotfix through the unmodified Cloud Run client, in a thread."""

    client: run_v2.ServicesClient
    service: str
    image: str
    errors: list[BaseException] = field(default_factory=list)
    failed_revisions_when_accepted: int | None = None  # the stand-in's count, read just after the write

    def deploy(self, standin: CloudRunStandin, svc: run_v2.Service | None = None) -> Operation:
        """Write the hotfix; returns once Cloud Run accepted it (its deploy still running)."""
        svc = svc or self.client.get_service(name=self.service)
        svc.template.containers[0].image = self.image
        svc.template.revision = ""  # let Cloud Run name the new revision
        operation = self.client.update_service(service=svc)
        self.failed_revisions_when_accepted = standin.stats()["services"][self.service]["revisions_failed"]
        return operation

    def run(self, body: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                body()
            except BaseException as exc:  # surfaced by the fixture
                self.errors.append(exc)

        thread = threading.Thread(target=guarded, name=f"person-{self.service.rsplit('/', 1)[1]}", daemon=True)
        thread.start()
        return thread


def hotfix_once_baseroll_deployed(person: Person, standin: CloudRunStandin, seeded_revision: str) -> None:
    """Poll the service until baseroll's revision exists (still deploying), then deploy the hotfix."""
    deadline = time.monotonic() + HUMAN_TIMEOUT_S
    while time.monotonic() < deadline:
        svc = person.client.get_service(name=person.service)
        if svc.latest_created_revision != seeded_revision:
            person.deploy(standin, svc).result(timeout=30)
            return
        time.sleep(0.02)
    raise TimeoutError(f"baseroll never deployed {person.service}")


class HoldRollbackWrite:
    """Holds baseroll's first write to `service` after its new revision failed (the rollback) in
    the stand-in until `release()`, so a person's deploy lands between baseroll's read and its write."""

    def __init__(self, standin: CloudRunStandin, service: str) -> None:
        self.standin, self.service = standin, service
        self.held, self.released = threading.Event(), threading.Event()
        standin.add_call_hook(self._holding)  # over gRPC and REST alike

    def _holding(self, call: ApiCall) -> None:
        if (call.method == "update_service" and call.resource == self.service and not self.held.is_set()
                and self.standin.stats()["services"][self.service]["revisions_failed"]):
            self.held.set()
            self.released.wait(HUMAN_TIMEOUT_S)

    def release(self) -> None:
        self.released.set()

    def remove(self) -> None:
        self.release()
        self.standin.remove_call_hook(self._holding)


def hotfix_while_rollback_held(person: Person, hold: HoldRollbackWrite) -> None:
    try:
        if not hold.held.wait(HUMAN_TIMEOUT_S):
            raise TimeoutError(f"baseroll never wrote a rollback for {person.service}")
        operation = person.deploy(hold.standin)
    finally:
        hold.release()  # baseroll's write goes on while the hotfix deploys
    operation.result(timeout=30)


@dataclass
class Rollout:
    stack: LocalStack
    new_base: ImageRef
    record: dict
    during_gate: SeededService
    before_rollback: SeededService
    control: SeededService
    others: list[SeededService]
    people: dict[str, Person]
    final: dict[str, scenario.ServiceResult]


@pytest.fixture(scope="module")
def rollout():
    # A failure budget for the three failures; quick deploys while seeding, slow ones for the rollout.
    with LocalStack(targets=("on_artifact_push", "roll_service", "on_roll_result"),
                    rollout={"failure_budget": 3}) as stack:
        fleet = scenario.seed_fleet(stack, services=16, canaries=4)
        eligible = [s for s in fleet.services if s.eligible_for("python")]
        during_gate, before_rollback, control = eligible[0], eligible[2], eligible[3]
        others = [s for s in eligible if s not in (during_gate, before_rollback, control)]
        assert others, "the rollout needs services that roll normally"
        client = stack.run_client()
        people = {
            s.name: Person(stack.run_client(), s.name,
                           str(scenario.rebuild_app(stack, fleet, s.app, revision, tag=f"hotfix-{revision}")))
            for revision, s in ((2, during_gate), (3, before_rollback))
        }
        seeded_revision = client.get_service(name=during_gate.name).latest_created_revision
        for s in (during_gate, before_rollback, control):
            stack.cloudrun.inject_fault({"service": s.name, "reason": FAULT, "times": 1})
        stack.cloudrun.deploy_latency_s = DEPLOY_LATENCY_S
        hold = HoldRollbackWrite(stack.cloudrun, before_rollback.name)
        try:
            threads = [
                people[during_gate.name].run(
                    lambda: hotfix_once_baseroll_deployed(people[during_gate.name], stack.cloudrun, seeded_revision)),
                people[before_rollback.name].run(lambda: hotfix_while_rollback_held(people[before_rollback.name], hold)),
            ]
            new_base = scenario.push_new_base(stack, fleet, "python")
            assert scenario.deliver_push(stack, new_base, "3.12").status_code == 200
            record = scenario.wait_rollout(stack, scenario.rollout_id("python", new_base), timeout=120)
            for thread in threads:
                thread.join(HUMAN_TIMEOUT_S)
        finally:
            hold.remove()
        for person in people.values():
            assert not person.errors, person.errors
        final = {r.seeded.name: r for r in scenario.results(stack, fleet)}
        yield Rollout(stack, new_base, record, during_gate, before_rollback, control, others, people, final)


def history(stack: LocalStack, name: str) -> dict:
    return stack.cloudrun.stats()["services"][name]


def assert_left_to_the_person(rollout: Rollout, seeded: SeededService, reason: str) -> None:
    person, result = rollout.people[seeded.name], rollout.final[seeded.name]
    assert result.image == person.image, "the person's hotfix must stay, not the pre-rollout image"
    seen = history(rollout.stack, seeded.name)
    # Every image a write put on the service, in order: baseroll's target, then the hotfix, and no
    # rollback after it. The three updates: the roll, the hotfix, and baseroll's ledger note (an
    # annotation-only write: no new revision).
    assert len(seen["images"]) == 2 and seen["images"][1] == person.image, seen
    assert scenario.on_base(rollout.stack, seen["images"][0], rollout.new_base)
    assert seen["updates"] == 3 and seen["revisions_failed"] == 1, seen
    assert result.state == ledger.CHANGED_BY_SOMEONE_ELSE
    assert result.reason.startswith(f"{ledger.CHANGED_DURING_GATE}: ") and reason in result.reason, result.reason
    logged = [r for r in rollout.stack.log_records("service.changed_during_gate") if r.get("service") == seeded.name]
    assert logged and ledger.CHANGED_DURING_GATE in logged[-1]["reason"], logged
    done = [r for r in rollout.stack.log_records("task.done") if r.get("service") == seeded.name]
    assert [r["outcome"] for r in done] == ["failed"] and ledger.CHANGED_DURING_GATE in done[0]["reason"], done


def test_a_hotfix_deployed_while_the_failing_revision_deploys_is_kept(rollout):
    person = rollout.people[rollout.during_gate.name]
    assert person.failed_revisions_when_accepted == 0, "the hotfix was meant to land while baseroll's revision deployed"
    assert_left_to_the_person(rollout, rollout.during_gate, "our revision was replaced")


def test_a_hotfix_landing_before_the_rollback_write_is_not_written_over(rollout):
    assert rollout.people[rollout.before_rollback.name].failed_revisions_when_accepted == 1
    assert_left_to_the_person(rollout, rollout.before_rollback, FAULT)


def test_a_failed_revision_nobody_else_touched_is_rolled_back(rollout):
    result = rollout.final[rollout.control.name]
    seen = history(rollout.stack, rollout.control.name)
    assert result.image == rollout.control.image, "a failed revision must end on the pre-rollout image"
    assert result.state == ledger.ROLLED_BACK and FAULT in result.reason, result
    assert len(seen["images"]) == 2 and seen["images"][1] == rollout.control.image, seen
    assert seen["updates"] == 2, seen  # the roll and its rollback


def test_the_rest_of_the_rollout_rolls_normally(rollout):
    assert rollout.record["status"] == "finished", rollout.record
    for s in rollout.others:
        result = rollout.final[s.name]
        assert result.state == ledger.ROLLED and scenario.on_base(rollout.stack, result.image, rollout.new_base), result
        assert history(rollout.stack, s.name)["updates"] == 1
