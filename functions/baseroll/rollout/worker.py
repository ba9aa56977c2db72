"""The worker: apply one task (one service, one target) and publish what happened.

Safe under at-least-once delivery: a task whose base was superseded, whose rollout stopped, or
whose service already changed is a no-op; `deploy.apply` never updates a service twice.
"""
from __future__ import annotations

from baseroll import log
from baseroll.contracts import topics
from baseroll.contracts.messages import Result, Task
from baseroll.contracts.records import TERMINAL
from baseroll.fleet import deploy
from baseroll.rollout import bus as bus_mod
from baseroll.rollout.deps import Deps
from baseroll.rollout.pipeline import current_digest


def roll_service(deps: Deps, task: Task) -> Result:
    ro = task.rollout
    current = current_digest(deps.registry, ro)
    if current != ro.base_digest:
        result = Result(ro, task.service, task.wave, "superseded", f"{ro.track_image} now points at {current}")
    else:
        rec = deps.records.get(ro.rollout_id)
        if rec is not None and rec.status in TERMINAL and rec.status != "finished":
            result = Result(ro, task.service, task.wave, "cancelled", f"rollout {rec.status}: {rec.reason}")
        else:
            result = _apply(deps, task)
    log.emit("task.done", "WARNING" if result.outcome in ("rolled-back", "rollback-failed", "failed") else "INFO",
             service=task.service, rollout_id=ro.rollout_id, outcome=result.outcome, reason=result.reason,
             wave=task.wave)
    bus_mod.send(deps.bus, topics.RESULTS, result)
    return result


def _apply(deps: Deps, task: Task) -> Result:
    ro = task.rollout
    svc = deps.fleet.get_service(task.service)
    target = deploy.Target({int(i): v for i, v in task.targets.items()}, {int(i): v for i, v in task.base_uris.items()})
    for i in target.images:
        if i >= len(svc.images) or (svc.images[i] != target.images[i] and svc.images[i] != task.expected[i]):
            return Result(ro, task.service, task.wave, "skipped", "image changed since planning",
                          svc.images, svc.images)
    outcome = deploy.apply(deps.fleet, svc, target, rollout=ro.rollout_id, base_digest=ro.base_digest,
                           timeout_s=deps.config.rollout.ready_timeout_s)
    return Result(ro, task.service, task.wave, outcome.result, outcome.reason, outcome.before, outcome.after)
