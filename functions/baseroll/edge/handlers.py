"""What each entry point does with its event, free of HTTP and functions-framework.

Malformed or foreign events are acknowledged (return normally) with a logged reason and change
nothing. Every failure after parsing is decided by `edge.classify`: a permanent one is
acknowledged, logged (`event.rejected`, or `task.failed` for a task) and recorded where a record
exists (a task's result, a step's rollout record); a transient one raises, so the trigger
redelivers with backoff (docs/RELIABILITY.md#error-classification).
"""
from __future__ import annotations

from typing import Any, Callable

from baseroll import log
from baseroll.contracts import events as rollout_events
from baseroll.contracts import messages, requests, topics
from baseroll.contracts.parsing import EventError
from baseroll.contracts.records import HALTED, TERMINAL, RolloutRecord
from baseroll.contracts.roll import RollRequest
from baseroll.edge import artifact_push as pushes
from baseroll.edge import builds, envelope
from baseroll.edge import records as checked_records
from baseroll.edge.artifact_push import Ignored
from baseroll.edge.classify import Refused, Verdict, classify
from baseroll.images import refs
from baseroll.rollout import bus as bus_mod
from baseroll.rollout import events, planner, policy, step, worker
from baseroll.rollout.deps import Deps

DepsFactory = Callable[[], Deps]


def _reject(event_id: str, trigger: str, exc: Exception) -> dict[str, Any]:
    log.warning("event.rejected", event_id=event_id, trigger=trigger, reason=str(exc))
    return {"status": "rejected", "reason": str(exc)}


def _deps(factory: DepsFactory) -> Deps:
    return checked_records.checked(factory())


def _decide(exc: Exception, event_id: str, trigger: str, **context: Any) -> Verdict:
    """Raise `exc` again when it is transient (logged `event.retried`); else the permanent verdict."""
    verdict = classify(exc)
    if not verdict.permanent:
        log.warning("event.retried", event_id=event_id, trigger=trigger, kind=verdict.kind, reason=verdict.reason,
                    error=type(exc).__name__, **context)
        raise exc
    return verdict


def _guarded(event_id: str, trigger: str, work: Callable[[], dict[str, Any]], **context: Any) -> dict[str, Any]:
    """`work()`; a permanent failure acknowledged with its reason, a transient one raised."""
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - every failure goes through the one table
        verdict = _decide(exc, event_id, trigger, **context)
        log.warning("event.rejected", event_id=event_id, trigger=trigger, kind=verdict.kind, reason=verdict.reason,
                    error=type(exc).__name__, **context)
        return {"status": "rejected", "kind": verdict.kind, "reason": verdict.reason}


def on_artifact_push(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """Artifact Registry `gcr` message → start a rollout of the base track whose tag moved."""
    try:
        message = envelope.pubsub_message(data)
        push = pushes.artifact_push(message)
    except EventError as exc:
        return _reject(event_id, "artifact-push", exc)
    return _guarded(event_id, "artifact-push", lambda: _push(_deps(deps), push, message.message_id or event_id,
                                                             event_id))


def _push(d: Deps, push: pushes.ArtifactPush, delivery: str, event_id: str) -> dict[str, Any]:
    decision = pushes.roll_request_from_push(push, d.config.tracked_tags, delivery)
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
    d = _deps(deps)
    try:
        _check_task_images(d, task)
        result = worker.roll_service(d, task)
    except Exception as exc:  # noqa: BLE001 - every failure goes through the one table
        context = {"service": task.service, "rollout_id": task.rollout.rollout_id, "wave": task.wave}
        verdict = _decide(exc, event_id, "task", **context)
        return _task_failed(d, task, verdict, type(exc).__name__, event_id)
    return {"status": result.outcome}


def _check_task_images(d: Deps, task: messages.Task) -> None:
    """A task names only allow-listed images: its track (read for supersession) and its targets."""
    allowed = d.config.allowed_registries
    for image in (task.rollout.track_image, *task.targets.values(), *task.base_uris.values()):
        refused = policy.registry_refused(refs.parse(image), allowed)
        if refused:
            raise Refused(f"{image}: {refused}")


def _task_failed(d: Deps, task: messages.Task, verdict: Verdict, error: str, event_id: str) -> dict[str, Any]:
    """A task that can never succeed: logged, and its failed result published (the task's record)."""
    log.error("task.failed", event_id=event_id, service=task.service, rollout_id=task.rollout.rollout_id,
              wave=task.wave, kind=verdict.kind, reason=verdict.reason, error=error)
    bus_mod.send(d.bus, topics.RESULTS, messages.Result(task.rollout, task.service, task.wave, "failed",
                                                       f"{verdict.kind}: {verdict.reason}"))
    return {"status": "failed", "kind": verdict.kind, "reason": verdict.reason}


def on_roll_result(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-results` → record a worker's result (the step waiting on its wave reads it), or run a
    coordinator step."""
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
        result = msg
        return _guarded(event_id, "result", lambda: _record_result(_deps(deps), result),
                        rollout_id=msg.rollout.rollout_id, service=msg.service)
    d = _deps(deps)
    try:
        step.handle_step(d, msg, message.message_id or event_id)
    except Exception as exc:  # noqa: BLE001 - every failure goes through the one table
        context = {"rollout_id": msg.rollout.rollout_id, "seq": msg.seq, "wave": msg.wave}
        verdict = _decide(exc, event_id, "step", **context)
        log.warning("event.rejected", event_id=event_id, trigger="step", kind=verdict.kind, reason=verdict.reason,
                    error=type(exc).__name__, **context)
        _halt(d, msg, f"step {msg.seq} failed ({verdict.kind}): {verdict.reason}")
        return {"status": "rejected", "kind": verdict.kind, "reason": verdict.reason}
    return {"status": "stepped"}


def _record_result(d: Deps, result: messages.Result) -> dict[str, Any]:
    step.record_result(d, result)
    return {"status": "recorded"}


def _halt(d: Deps, msg: messages.Step, reason: str) -> None:
    """Record a step's permanent failure: the rollout halts (an operator resumes or aborts it), and
    says so on baseroll-events. A record that cannot be read cannot be written either: then the log
    line is the record."""
    rollout_id = msg.rollout.rollout_id

    def halt(rec: RolloutRecord) -> RolloutRecord | None:
        if rec.status in TERMINAL:
            return None
        rec.status, rec.reason, rec.owner = HALTED, reason, ""
        return rec

    try:
        if d.records.update(rollout_id, halt) is not None:
            log.error("rollout.halted", rollout_id=rollout_id, reason=reason)
            events.publish(d.bus, rollout_events.halted(msg.rollout, at=d.clock.now(), seq=msg.seq, wave=msg.wave,
                                                        reason=reason))
    except checked_records.CorruptRecord as exc:
        log.error("rollout.unrecorded", rollout_id=rollout_id, reason=str(exc))


def on_roll_request(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-requests` → roll (or dry-run) a base or app image, resume, approve, abort, or sweep."""
    try:
        message = envelope.pubsub_message(data)
        req = requests.parse_request(message)
    except EventError as exc:
        return _reject(event_id, "request", exc)
    return _guarded(event_id, "request", lambda: _request(_deps(deps), req, message.message_id or event_id, event_id))


def _request(d: Deps, req: requests.Request, delivery: str, event_id: str) -> dict[str, Any]:
    log.info("request.accepted", event_id=event_id, action=req.action, image=str(req.image) if req.image else None,
             digest=req.digest, dry_run=req.dry_run, rollout_id=req.rollout_id, reason=req.reason)
    if req.action == "roll":
        scoped = requests.to_roll_request(req, delivery)
        refused = policy.registry_refused(scoped.roll.image, d.config.allowed_registries)
        if refused:  # checked here as for builds: nothing is read from a host outside the allow-list
            raise Refused(f"{scoped.roll.kind}: {scoped.roll.image}: {refused}")
        if scoped.roll.kind == "base" and d.config.track_for(scoped.roll.image) is None:
            raise EventError(f"base: {scoped.roll.image} is not a configured base track")
        return planner.start(d, scoped.roll, scoped.filter)
    if req.action in ("resume", "abort", "approve"):
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
    d = _deps(deps)
    started = []
    retry: Exception | None = None
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
        # One image's failure is that image's: the others still start (a redelivery repeats them harmlessly).
        try:
            started.append(_guarded(event_id, "cloud-build", lambda: planner.start(d, roll), image=str(ref)))
        except Exception as exc:  # noqa: BLE001 - transient (already logged): raised after the other images
            retry = retry or exc
    if not build.images:
        log.info("event.ignored", event_id=event_id, trigger="cloud-build", build_id=build.build_id,
                 reason="the build pushed no image listed under images:")
    if retry is not None:
        raise retry
    return {"status": "done", "rollouts": started}
