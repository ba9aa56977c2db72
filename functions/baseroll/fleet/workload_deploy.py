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
from typing import Mapping, cast

from baseroll import log
from baseroll.clock import Clock
from baseroll.fleet import deploy
from baseroll.fleet.deploy import Outcome, Target
from baseroll.fleet.health import Health
from baseroll.fleet.traffic import PinnedTraffic
from baseroll.fleet.verification import Check
from baseroll.fleet.view import Fleet, FleetError, ServiceView, WorkloadKind
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
    rollback as much again); when asked by its label, run it once and wait at most `verify_timeout_s`."""
    kept = running_elsewhere(fleet.executions(planned.name), planned.images)
    outcome = deploy.apply(fleet, planned, target, rollout=rollout, base_digest=base_digest, timeout_s=timeout_s,
                           clock=clock)
    if outcome.result == "updated" and kept:
        log.notice("job.running_executions_kept", job=planned.name, executions=[e.name for e in kept],
                   image=list(planned.images), rollout_id=rollout)
        outcome = _noted(outcome, RUNNING_KEPT.format(n=len(kept)))
    if outcome.result not in ("updated", "already-current") or not verification_requested(planned.labels, verify_label):
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
        log.notice("job.verified", job=name, execution=execution.name if execution else "", rollout_id=rollout)
        return _noted(outcome, f"verified by {execution.name.rsplit('/', 1)[-1] if execution else 'an execution'}")
    log.warning("job.verification_failed", job=name, reason=verdict.reason, rollout_id=rollout)
    job = fleet.get_service(name)
    return deploy.roll_back_own(fleet, job, target, rollout=rollout, base_digest=base_digest, reason=verdict.reason,
                                timeout_s=timeout_s, clock=clock)


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
