"""What each entry point does with its event, free of HTTP and functions-framework.

Malformed or foreign events are acknowledged (return normally) with a logged reason and change
nothing; transient failures raise, so the trigger redelivers with backoff.
"""
from __future__ import annotations

from typing import Any, Callable

from . import coordinator, events, log, messages, worker
from .coordinator import Deps
from .events import EventError, Ignored

DepsFactory = Callable[[], Deps]


def _reject(event_id: str, trigger: str, exc: Exception) -> dict[str, Any]:
    log.warning("event.rejected", event_id=event_id, trigger=trigger, reason=str(exc))
    return {"status": "rejected", "reason": str(exc)}


def on_artifact_push(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """Artifact Registry `gcr` message → start a rollout of the base track whose tag moved."""
    try:
        message = events.pubsub_message(data)
        push = events.artifact_push(message)
    except EventError as exc:
        return _reject(event_id, "artifact-push", exc)
    d = deps()
    decision = events.roll_request_from_push(push, d.config.tracked_tags, message.message_id or event_id)
    if isinstance(decision, Ignored):
        log.info("event.ignored", event_id=event_id, trigger="artifact-push", reason=decision.reason, **decision.detail)
        return {"status": "ignored", "reason": decision.reason}
    log.info("event.accepted", event_id=event_id, trigger="artifact-push", image=str(decision.image),
             digest=decision.digest)
    return coordinator.start(d, decision)


def roll_service(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-tasks` → apply one task."""
    try:
        task = messages.decode(events.pubsub_message(data))
        if not isinstance(task, messages.Task):
            raise EventError(f"expected a task, got a {task.kind}")
    except EventError as exc:
        return _reject(event_id, "task", exc)
    result = worker.roll_service(deps(), task)
    return {"status": result.outcome}


def on_roll_result(data: Any, event_id: str, deps: DepsFactory) -> dict[str, Any]:
    """`baseroll-results` → log a worker's result, or run a coordinator step."""
    try:
        message = events.pubsub_message(data)
        msg = messages.decode(message)
        if isinstance(msg, messages.Task):
            raise EventError("a task on the results topic")
    except EventError as exc:
        return _reject(event_id, "result", exc)
    if isinstance(msg, messages.Result):
        log.info("service.result", rollout_id=msg.rollout.rollout_id, service=msg.service, wave=msg.wave,
                 outcome=msg.outcome, reason=msg.reason)
        return {"status": "logged"}
    coordinator.handle_step(deps(), msg, message.message_id or event_id)
    return {"status": "stepped"}
