"""One workload, one target, whatever its kind: a service or a worker pool is rolled by `deploy.apply`
(update by digest, gate on the new revision, roll back on failure); a job by `apply_job`.

A job's update changes its template and starts nothing; executions still running keep the template
they were created with and finish on the old image (docs/GOOGLE_APIS.md#jobs-and-worker-pools), which
the result says. Only a job labelled `baseroll-verify-execution: "true"` is run once after its update;
that execution must succeed within `verify_timeout_s`, else the template goes back (by the ledger, as
any rollback). Safe to repeat: a redelivered task finds the job on its target and the verification
execution already made (or one a schedule made since), and neither updates nor runs it again.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, cast

from baseroll import log
from baseroll.clock import Clock
from baseroll.contracts import ledger
from baseroll.fleet import deploy
from baseroll.fleet.deploy import Outcome, Target
from baseroll.fleet.health import Health
from baseroll.fleet.traffic import PinnedTraffic
from baseroll.fleet.verification import Check
from baseroll.fleet.view import Fleet, FleetError, ServiceView, StaleService, WorkloadKind
from baseroll.fleet.workloads import (
    VERIFY_EXECUTION_LABEL,
    ExecutionView,
    JobFleet,
    execution_health,
    running_elsewhere,
    verification_of,
    verification_requested,
)

POLL_INTERVAL_S = deploy.POLL_INTERVAL_S
# What the result says of executions an update leaves running on the previous template.
RUNNING_KEPT = "{n} running execution(s) keep the previous image until they finish"
NOT_VERIFIED = "verification execution did not finish within {s:.0f} s"


def apply_workload(fleets: Mapping[WorkloadKind, Fleet], planned: ServiceView, target: Target, *, rollout: str,
                   base_digest: str, timeout_s: float, clock: Clock, pinned_traffic: PinnedTraffic = "follow",
                   verify_timeout_s: float | None = None, verify_label: str = VERIFY_EXECUTION_LABEL,
                   check: Check | None = None) -> Outcome:
    """Roll `planned` with the adapter of its kind (`planned.kind`). `check` (verification at zero
    traffic) is for a service only: a worker pool serves no requests, a job has no revisions."""
    fleet = fleets.get(planned.kind)
    if fleet is None:
        raise FleetError(f"{planned.name}: {planned.kind}s are not rolled (rollout.workloads)")
    if planned.kind == "job":
        return apply_job(cast(JobFleet, fleet), planned, target, rollout=rollout, base_digest=base_digest,
                         timeout_s=timeout_s, clock=clock, verify_label=verify_label,
                         verify_timeout_s=timeout_s if verify_timeout_s is None else verify_timeout_s)
    return deploy.apply(fleet, planned, target, rollout=rollout, base_digest=base_digest, timeout_s=timeout_s,
                        clock=clock, pinned_traffic=pinned_traffic, check=check if planned.kind == "service" else None)


def apply_job(fleet: JobFleet, planned: ServiceView, target: Target, *, rollout: str, base_digest: str,
              timeout_s: float, verify_timeout_s: float, clock: Clock,
              verify_label: str = VERIFY_EXECUTION_LABEL) -> Outcome:
    """Update the job's template to `target` (the update and its gate take at most `timeout_s`, a
    rollback as much again); when asked by its label, run it once and wait at most `verify_timeout_s`.
    A job being verified is `verifying` in the ledger until its execution succeeded (one more write),
    so no reader takes it for done before (the coordinator judges a member by it: rollout.waves.judge)."""
    verify = verification_requested(planned.labels, verify_label)
    if target.reached(planned) and _verifying(planned, rollout, base_digest):
        # A worker died during the verification (even if the label went since): wait for its
        # execution (or run one), then finish.
        outcome = Outcome(planned.name, "updated", ledger.previous(planned.annotations)[0], planned.images)
        return _verify(fleet, outcome, target, rollout=rollout, base_digest=base_digest, timeout_s=timeout_s,
                       verify_timeout_s=verify_timeout_s, clock=clock)
    kept = running_elsewhere(fleet.executions(planned.name), planned.images)
    outcome = deploy.apply(_RecordsVerifying(fleet) if verify else fleet, planned, target, rollout=rollout,
                           base_digest=base_digest, timeout_s=timeout_s, clock=clock)
    if outcome.result == "updated" and kept:
        log.notice("job.running_executions_kept", job=planned.name, executions=[e.name for e in kept],
                   image=list(planned.images), rollout_id=rollout)
        outcome = _noted(outcome, RUNNING_KEPT.format(n=len(kept)))
    if outcome.result not in ("updated", "already-current") or not verify:
        return outcome
    return _verify(fleet, outcome, target, rollout=rollout, base_digest=base_digest, timeout_s=timeout_s,
                   verify_timeout_s=verify_timeout_s, clock=clock)


def _verify(fleet: JobFleet, outcome: Outcome, target: Target, *, rollout: str, base_digest: str, timeout_s: float,
            verify_timeout_s: float, clock: Clock) -> Outcome:
    """Run the job once on its new template (unless a run of it exists) and keep the template only
    if that run succeeds in time."""
    name = outcome.service
    deadline = clock.monotonic() + verify_timeout_s
    execution = verification_of(fleet.executions(name), outcome.after)
    try:
        if execution is None:
            execution = fleet.run_execution(name)
            log.info("job.verification_started", job=name, execution=execution.name, rollout_id=rollout)
        verdict = _wait_execution(fleet, execution, deadline, verify_timeout_s, clock)
    except FleetError as exc:
        verdict = Health("failed", f"verification execution: {exc}")
    if verdict.state == "ready":
        assert execution is not None  # a verdict other than failed comes from an execution
        log.notice("job.verified", job=name, execution=execution.name, rollout_id=rollout)
        return _finish_verified(fleet, outcome, execution, rollout, base_digest, timeout_s)
    log.warning("job.verification_failed", job=name, reason=verdict.reason, rollout_id=rollout)
    job = fleet.get_service(name)
    return deploy.roll_back_own(fleet, job, target, rollout=rollout, base_digest=base_digest, reason=verdict.reason,
                                timeout_s=timeout_s, clock=clock)


def _finish_verified(fleet: JobFleet, outcome: Outcome, execution: ExecutionView, rollout: str, base_digest: str,
                     timeout_s: float) -> Outcome:
    """The ledger says `rolled` once the execution succeeded (unless it already does: a redelivery)."""
    short = execution.name.rsplit("/", 1)[-1]
    job = fleet.get_service(outcome.service)
    if _verifying(job, rollout, base_digest):
        try:
            fleet.update_images(job, {}, annotations=ledger.verified(f"execution {short} succeeded", ""),
                                timeout=timeout_s)
        except (FleetError, StaleService) as exc:  # the job keeps the verified template; a redelivery retries
            log.error("job.ledger_write_failed", job=job.name, reason=str(exc), rollout_id=rollout)
            return Outcome(job.name, "failed", outcome.before, job.images,
                           f"verified by {short}, but the ledger could not say so: {exc}")
    return _noted(outcome, f"verified by {short}")


def _verifying(job: ServiceView, rollout: str, base_digest: str) -> bool:
    ann = job.annotations
    return (ann.get(ledger.ROLLOUT_ID), ann.get(ledger.BASE_DIGEST), ann.get(ledger.STATE)) == (
        rollout, base_digest, ledger.VERIFYING)


class _RecordsVerifying:
    """A job's adapter whose forward update (the one `deploy.apply` records as `rolled`) records
    `verifying` instead: the job is not done until its verification execution succeeded."""

    def __init__(self, fleet: JobFleet) -> None:
        self._fleet = fleet

    def list_services(self, project: str, region: str) -> Iterator[ServiceView]:
        return self._fleet.list_services(project, region)

    def get_service(self, name: str) -> ServiceView:
        return self._fleet.get_service(name)

    def update_images(self, current: ServiceView, images: Mapping[int, str], *, annotations: Mapping[str, str],
                      **kwargs: Any) -> ServiceView:
        if annotations.get(ledger.STATE) == ledger.ROLLED:
            annotations = {**annotations, ledger.STATE: ledger.VERIFYING}
        return self._fleet.update_images(current, images, annotations=annotations, **kwargs)


def _wait_execution(fleet: JobFleet, execution: ExecutionView, deadline: float, budget_s: float,
                    clock: Clock) -> Health:
    """Poll until the execution succeeds or fails, or the deadline passes (then: failed)."""
    verdict = execution_health(execution)
    while verdict.state == "pending":
        if clock.monotonic() >= deadline:
            return Health("failed", NOT_VERIFIED.format(s=budget_s))
        clock.sleep(POLL_INTERVAL_S)
        verdict = execution_health(fleet.get_execution(execution.name))
    return verdict


def _noted(outcome: Outcome, note: str) -> Outcome:
    return dataclasses.replace(outcome, reason="; ".join(r for r in (outcome.reason, note) if r))
