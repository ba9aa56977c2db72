"""`workload_deploy` on the in-memory jobs and worker pools with a fake clock: one workload, one target.

Each job case arranges the fake (labels, scripted runs, executions already there), applies the target
once, then checks the outcome, the calls the fake saw (an update, an execution: a repeated task must
make neither), where the job's template ends, and what the ledger says. Worker pools go through the
same table as services (`deploy.apply`), with their `kind`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
from baseroll.clock import FakeClock
from baseroll.contracts import ledger
from baseroll.fleet import health, workload_deploy
from baseroll.fleet.deploy import Target
from baseroll.fleet.fake import FakeFleet, Verdict
from baseroll.fleet.fake_jobs import FakeJobs, Run
from baseroll.fleet.view import ServiceView
from baseroll.fleet.workloads import VERIFY_EXECUTION_LABEL, ExecutionView, execution_health
from baseroll.rollout import waves

JOB = "projects/tenants-a/locations/us-central1/jobs/nightly"
POOL = "projects/tenants-a/locations/us-central1/workerPools/pull"
OLD = "reg.example.com/apps/batch@sha256:" + "1" * 64
NEW = "reg.example.com/apps/batch@sha256:" + "2" * 64
BASE = "sha256:" + "b" * 64
RID = ledger.rollout_id("python", BASE)
TIMEOUT_S = 60.0
VERIFY_S = 30.0
VERIFY = {VERIFY_EXECUTION_LABEL: "true"}


@pytest.fixture(autouse=True)
def no_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> float:
        raise AssertionError("workload_deploy must use its injected clock, not the time module")
    monkeypatch.setattr(time, "sleep", refuse)
    monkeypatch.setattr(time, "monotonic", refuse)


def _redelivered(jobs: FakeJobs) -> None:
    """The first delivery updated (and verified) the job; its result was lost."""
    workload_deploy.apply_job(jobs, jobs.services[JOB], Target({0: NEW}), rollout=RID, base_digest=BASE,
                              timeout_s=TIMEOUT_S, verify_timeout_s=VERIFY_S, clock=FakeClock())
    jobs.calls.clear()


def _died_verifying(jobs: FakeJobs) -> None:
    """The first delivery updated the job and started its verification execution, then died."""
    jobs.write_by_someone_else(JOB, {0: NEW}, ledger.rolled(RID, BASE, (OLD,), state=ledger.VERIFYING))
    jobs.start_execution(JOB, Run(reads_to_finish=2))


@dataclass
class Case:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    arrange: Callable[[FakeJobs], None] = lambda jobs: None
    result: str = "updated"
    updates: int = 1  # update_images calls, rollback included
    executions_run: int = 0
    ends_on: str = NEW
    state: str = ledger.ROLLED
    reason_has: str = ""


CASES = [
    Case("updated, never executed"),
    Case("verification passes", VERIFY, lambda j: j.runs.__setitem__(NEW, Run(reads_to_finish=3)),
         updates=2, executions_run=1, reason_has="verified by"),  # the template, then the ledger's `rolled`
    Case("redelivered during its verification: waits for that run, then done", VERIFY, _died_verifying,
         updates=1, reason_has="verified by nightly-00001"),
    Case("verification fails: template back", VERIFY, lambda j: j.runs.__setitem__(NEW, Run(succeeds=False)),
         result="rolled-back", updates=2, executions_run=1, ends_on=OLD, state=ledger.ROLLED_BACK,
         reason_has="NON_ZERO_EXIT_CODE"),
    Case("verification never finishes: template back", VERIFY,
         lambda j: j.runs.__setitem__(NEW, Run(reads_to_finish=10_000)), result="rolled-back", updates=2,
         executions_run=1, ends_on=OLD, state=ledger.ROLLED_BACK, reason_has="did not finish within 30 s"),
    Case("template does not reconcile (image missing): back", VERIFY,
         lambda j: j.verdicts.__setitem__(NEW, Verdict(ready=False, reason="CONTAINER_MISSING", reads_to_settle=1)),
         result="rolled-back", updates=2, ends_on=OLD, state=ledger.ROLLED_BACK, reason_has="CONTAINER_MISSING"),
    Case("redelivered: nothing updated, nothing run", VERIFY, _redelivered, result="already-current", updates=0),
    Case("redelivered without the label", {}, _redelivered, result="already-current", updates=0),
    Case("a running execution keeps the old image", {}, lambda j: j.start_execution(JOB, Run(reads_to_finish=99)),
         reason_has="1 running execution(s) keep the previous image"),
    Case("verification by a scheduled run of the new template", VERIFY,
         lambda j: (_redelivered(j), j.executions_of.clear(), j.start_execution(JOB)), result="already-current",
         updates=0, executions_run=0, reason_has="verified by"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_job_state_machine(case: Case) -> None:
    jobs = FakeJobs([ServiceView(name=JOB, images=(OLD,), labels=case.labels)])
    case.arrange(jobs)
    planned = jobs.services[JOB]
    out = workload_deploy.apply_job(jobs, planned, Target({0: NEW}), rollout=RID, base_digest=BASE,
                                    timeout_s=TIMEOUT_S, verify_timeout_s=VERIFY_S, clock=FakeClock())
    assert (out.result, jobs.calls["update_images"], jobs.calls["run_execution"]) == \
        (case.result, case.updates, case.executions_run), out.reason
    job = jobs.services[JOB]
    assert job.images == (case.ends_on,) and job.kind == "job"
    assert job.annotations[ledger.STATE] == case.state and job.annotations[ledger.ROLLOUT_ID] == RID
    assert case.reason_has in out.reason
    assert health.assess(job).state == "ready"


def test_a_running_execution_is_left_on_the_template_it_started_with() -> None:
    jobs = FakeJobs([ServiceView(name=JOB, images=(OLD,))])
    running = jobs.start_execution(JOB, Run(reads_to_finish=5))
    workload_deploy.apply_job(jobs, jobs.services[JOB], Target({0: NEW}), rollout=RID, base_digest=BASE,
                              timeout_s=TIMEOUT_S, verify_timeout_s=VERIFY_S, clock=FakeClock())
    assert jobs.services[JOB].images == (NEW,)
    assert jobs.get_execution(running.name).images == (OLD,) and jobs.calls["run_execution"] == 0


def test_a_job_already_rolled_back_from_this_target_is_skipped() -> None:
    jobs = FakeJobs([ServiceView(name=JOB, images=(OLD,), labels=VERIFY)])
    jobs.runs[NEW] = Run(succeeds=False)
    first = workload_deploy.apply_job(jobs, jobs.services[JOB], Target({0: NEW}), rollout=RID, base_digest=BASE,
                                      timeout_s=TIMEOUT_S, verify_timeout_s=VERIFY_S, clock=FakeClock())
    jobs.calls.clear()
    again = workload_deploy.apply_job(jobs, jobs.services[JOB], Target({0: NEW}), rollout=RID, base_digest=BASE,
                                      timeout_s=TIMEOUT_S, verify_timeout_s=VERIFY_S, clock=FakeClock())
    assert (first.result, again.result) == ("rolled-back", "skipped")
    assert jobs.calls["update_images"] == 0 and jobs.calls["run_execution"] == 0


@pytest.mark.parametrize("ready, result, ends_on", [(True, "updated", NEW), (False, "rolled-back", OLD)])
def test_a_worker_pool_rolls_like_a_service(ready: bool, result: str, ends_on: str) -> None:
    pools = FakeFleet([ServiceView(name=POOL, images=(OLD,), kind="worker-pool")])
    pools.verdicts[NEW] = Verdict(ready=ready, reads_to_settle=2)
    out = workload_deploy.apply_workload({"worker-pool": pools}, pools.services[POOL], Target({0: NEW}),
                                         rollout=RID, base_digest=BASE, timeout_s=TIMEOUT_S, clock=FakeClock())
    pool = pools.services[POOL]
    assert (out.result, pool.images, pool.kind) == (result, (ends_on,), "worker-pool")
    assert pool.latest_ready_revision == pool.latest_created_revision


def test_apply_workload_sends_a_job_to_the_job_machine() -> None:
    jobs = FakeJobs([ServiceView(name=JOB, images=(OLD,), labels=VERIFY)])
    out = workload_deploy.apply_workload({"job": jobs}, jobs.services[JOB], Target({0: NEW}), rollout=RID,
                                         base_digest=BASE, timeout_s=TIMEOUT_S, clock=FakeClock())
    assert out.result == "updated" and jobs.calls["run_execution"] == 1


@pytest.mark.parametrize("execution, state, reason", [
    (ExecutionView("j/executions/e", (NEW,), "running"), "pending", "execution running"),
    (ExecutionView("j/executions/e", (NEW,), "succeeded"), "ready", ""),
    (ExecutionView("j/executions/e", (NEW,), "failed", "NON_ZERO_EXIT_CODE", "exit 1"), "failed",
     "execution e failed: NON_ZERO_EXIT_CODE: exit 1"),
    (ExecutionView("j/executions/e", (NEW,), "cancelled", "CANCELLED"), "failed", "execution e cancelled: CANCELLED"),
])
def test_execution_health(execution: ExecutionView, state: str, reason: str) -> None:
    assert execution_health(execution) == health.Health(state, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize("view, state", [
    (ServiceView(JOB, (NEW,), kind="job", generation=2, observed_generation=2, terminal_state="CONDITION_SUCCEEDED"),
     "ready"),
    (ServiceView(JOB, (NEW,), kind="job", generation=2, observed_generation=1, terminal_state="CONDITION_SUCCEEDED"),
     "pending"),
    (ServiceView(JOB, (NEW,), kind="job", generation=2, observed_generation=1, terminal_state="CONDITION_FAILED",
                 terminal_reason="CONTAINER_MISSING"), "failed"),
    (ServiceView(JOB, (NEW,), kind="job", generation=2, observed_generation=2, reconciling=True), "pending"),
])
def test_a_job_is_ready_once_its_template_reconciled(view: ServiceView, state: str) -> None:
    """A job has no revisions: readiness is its terminal condition with the generation observed."""
    assert health.assess(view).state == state


def test_a_job_is_verifying_while_its_execution_runs_so_the_coordinator_never_takes_it_for_done() -> None:
    jobs = FakeJobs([ServiceView(name=JOB, images=(OLD,), labels=VERIFY)])
    jobs.runs[NEW] = Run(reads_to_finish=2)
    seen: list[str] = []
    read = jobs.get_execution

    def judged_while_running(name: str) -> ExecutionView:
        seen.append(waves.judge(jobs.services[JOB], (OLD,), RID, deadline_passed=False))
        return read(name)

    jobs.get_execution = judged_while_running  # type: ignore[method-assign]
    out = workload_deploy.apply_job(jobs, jobs.services[JOB], Target({0: NEW}), rollout=RID, base_digest=BASE,
                                    timeout_s=TIMEOUT_S, verify_timeout_s=VERIFY_S, clock=FakeClock())
    assert out.result == "updated" and len(seen) == 3 and set(seen) == {waves.PENDING}
    assert waves.judge(jobs.services[JOB], (OLD,), RID, deadline_passed=False) == waves.DONE
    assert jobs.services[JOB].annotations[ledger.VERIFY] == "execution nightly-00001 succeeded"
