"""The worker: apply one task (one workload: a service, job or worker pool; one target) and publish what happened.

Safe under at-least-once delivery: a task whose base was superseded, whose rollout stopped, or
whose workload already changed is a no-op (`policy` decides each); `workload_deploy.apply_workload`
never updates a workload twice, nor runs a job's verification twice.
"""
from __future__ import annotations

from baseroll import log
from baseroll.contracts import topics
from baseroll.contracts.messages import Result, Task
from baseroll.fleet import deploy, workload_deploy, workloads
from baseroll.fleet.verification import Check
from baseroll.fleet.view import ServiceView
from baseroll.rollout import bus as bus_mod
from baseroll.rollout import policy
from baseroll.rollout.deps import Deps
from baseroll.rollout.pipeline import current_digest


def roll_service(deps: Deps, task: Task) -> Result:
    ro = task.rollout
    # The record is read only for a task that is not superseded.
    refused = (policy.superseded(ro, current_digest(deps.registry, ro))
               or policy.cancelled(deps.records.get(ro.rollout_id)))
    if refused is not None:
        outcome, reason = refused
        result = Result(ro, task.service, task.wave, outcome, reason)
    else:
        result = _apply(deps, task)
    log.emit("task.done", "WARNING" if result.outcome in deploy.FAILED_OUTCOMES else "INFO",
             service=task.service, rollout_id=ro.rollout_id, outcome=result.outcome, reason=result.reason,
             wave=task.wave)
    bus_mod.send(deps.bus, topics.RESULTS, result)
    return result


def _apply(deps: Deps, task: Task) -> Result:
    ro = task.rollout
    svc = deps.fleet.get_service(task.service)  # through the adapter of its kind (fleet.workloads)
    target = deploy.Target({int(i): v for i, v in task.targets.items()}, {int(i): v for i, v in task.base_uris.items()})
    changed = policy.image_changed_since_planning(svc, target.images, task.expected)
    if changed:
        return Result(ro, task.service, task.wave, "skipped", changed, svc.images, svc.images)
    settings = deps.config.rollout
    outcome = workload_deploy.apply_workload(
        workloads.adapters(deps.fleet), svc, target, rollout=ro.rollout_id, base_digest=ro.base_digest,
        timeout_s=settings.ready_timeout_s, clock=deps.clock,
        pinned_traffic=settings.pinned_traffic,  # type: ignore[arg-type]
        verify_timeout_s=settings.job_verify_timeout_s, verify_label=deps.config.labels.verify_execution,
        check=_check(deps, svc, ro.rollout_id) if svc.kind == "service" else None)
    return Result(ro, task.service, task.wave, outcome.result, outcome.reason, outcome.before, outcome.after)


def _check(deps: Deps, svc: ServiceView, rollout_id: str) -> Check | None:
    """The verification at zero traffic of a service, or None (off, or not for this one: logged why)."""
    probe = policy.verification_probe(svc, deps.config.rollout.verify, deps.config.labels)
    skipped_check = policy.not_verified(svc, deps.config.rollout.verify, deps.config.labels)
    if skipped_check and deps.config.rollout.verify.enabled and deps.prober is not None:
        log.info("service.not_verified", service=svc.name, reason=skipped_check, rollout_id=rollout_id)
    return Check(probe, deps.prober) if probe is not None and deps.prober is not None else None
