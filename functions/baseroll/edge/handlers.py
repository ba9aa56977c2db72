"""What each entry point does with its event, free of HTTP and functions-framework.

Malformed or foreign events are acknowledged (return normally) with a logged reason and change
nothing; transient failures raise, so the trigger redelivers with backoff.
"""
from __future__ import annotations

from typing import Any, Callable

from baseroll import log
from baseroll.contracts import messages, requests
from baseroll.contracts.parsing import EventError
from baseroll.contracts.roll import RollRequest
from baseroll.edge import artifact_push as pushes
from baseroll.edge import builds, envelope
from baseroll.edge.artifact_push import Ignored
from baseroll.rollout import planner, policy, step, worker
from baseroll.rollout.deps import Deps

DepsFactory = Callable[[], Deps]


def _reject(event_id: str, trigger: str, exc: Exception) -> dict[str, Any]:
    log.warning("event.rejected", event_id=event_id, trigger=trigger, reason=str(exc))
    return {"status": "rejected", "reason": str(exc)}


def on_artifact_push(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """Artifact Registry `gcr` message → start a rollout of the base track whose tag moved."""
    try:
        message = envelope.pubsub_message(data)
        push = pushes.artifact_push(message)
    except EventError as exc:
        return _reject(event_id, "artifact-push", exc)
    d = deps()
    decision = pushes.roll_request_from_push(push, d.config.tracked_tags, message.message_id or event_id)
    if isinstance(decision, Ignored):
        log.info("event.ignored", event_id=event_id, trigger="artifact-push", reason=decision.reason, **decision.detail)
        return {"status": "ignored", "reason": decision.reason}
    log.info("event.accepted", event_id=event_id, trigger="artifact-push", image=str(decision.image),
             digest=decision.digest)
    return planner.start(d, decision)


def roll_service(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-tasks` → apply one task."""
    try:
        task = messages.decode(envelope.pubsub_message(data))
        if not isinstance(task, messages.Task):
            raise EventError(f"expected a task, got a {task.kind}")
    except EventError as exc:
        return _reject(event_id, "task", exc)
    result = worker.roll_service(deps(), task)
    return {"status": result.outcome}


def on_roll_result(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-results` → log a worker's result, or run a coordinator step."""
    try:
        message = envelope.pubsub_message(data)
        msg = messages.decode(message)
        if isinstance(msg, messages.Task):
            raise EventError("a task on the results topic")
    except EventError as exc:
        return _reject(event_id, "result", exc)
    if isinstance(msg, messages.Result):
        log.info("service.result", rollout_id=msg.rollout.rollout_id, service=msg.service, wave=msg.wave,
                 outcome=msg.outcome, reason=msg.reason)
        return {"status": "logged"}
    step.handle_step(deps(), msg, message.message_id or event_id)
    return {"status": "stepped"}


def on_roll_request(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-requests` → roll (or dry-run) a base or app image, resume, abort, or sweep."""
    try:
        message = envelope.pubsub_message(data)
        req = requests.parse_request(message)
    except EventError as exc:
        return _reject(event_id, "request", exc)
    d = deps()
    log.info("request.accepted", event_id=event_id, action=req.action, image=str(req.image) if req.image else None,
             digest=req.digest, dry_run=req.dry_run, rollout_id=req.rollout_id, reason=req.reason)
    if req.action == "roll":
        scoped = requests.to_roll_request(req, message.message_id or event_id)
        if scoped.roll.kind == "base" and d.config.track_for(scoped.roll.image) is None:
            return _reject(event_id, "request", EventError(f"base: {scoped.roll.image} is not a configured base track"))
        return planner.start(d, scoped.roll, scoped.filter)
    if req.action in ("resume", "abort"):
        assert req.rollout_id
        return planner.control(d, req.action, req.rollout_id)
    return planner.sweep(d, req.filter)


def on_build_complete(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`cloud-builds` → for a successful build: roll each tracked base it pushed, and redeploy the
    services that run each app image it pushed (the multi-tenant case)."""
    try:
        build = builds.parse_build(envelope.pubsub_message(data))
    except EventError as exc:
        return _reject(event_id, "cloud-build", exc)
    if not builds.is_success(build):
        log.info("event.ignored", event_id=event_id, trigger="cloud-build", build_id=build.build_id,
                 reason=f"build status {build.status}, not SUCCESS")
        return {"status": "ignored", "reason": f"status {build.status}"}
    d = deps()
    started = []
    for image in build.images:
        ref = image.name_ref
        refused = policy.registry_refused(ref, d.config.allowed_registries)
        if refused:
            log.warning("event.ignored", event_id=event_id, trigger="cloud-build", image=str(ref), reason=refused)
            continue
        kind = "base" if ref.tag and d.config.track_for(ref) is not None else "app"
        roll = RollRequest(kind, ref, image.digest, "cloud-build", f"{build.build_id}:{ref}")
        log.info("event.accepted", event_id=event_id, trigger="cloud-build", build_id=build.build_id,
                 image=str(ref), digest=image.digest, kind=kind)
        started.append(planner.start(d, roll))
    if not build.images:
        log.info("event.ignored", event_id=event_id, trigger="cloud-build", build_id=build.build_id,
                 reason="the build pushed no image listed under images:")
    return {"status": "done", "rollouts": started}
