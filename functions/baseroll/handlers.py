"""What each entry point does with its event, free of HTTP and functions-framework.

Malformed or foreign events are acknowledged (return normally) with a logged reason and change
nothing; transient failures raise, so the trigger redelivers with backoff.
"""
from __future__ import annotations

from typing import Any

from . import events, log, rollout
from .events import EventError, Ignored
from .runtime import Runtime


def on_artifact_push(data: Any, event_id: str, runtime_factory: "callable[[], Runtime]") -> dict[str, Any]:
    """Artifact Registry `gcr` message → roll the base track whose tag moved."""
    try:
        message = events.pubsub_message(data)
        push = events.artifact_push(message)
    except EventError as exc:
        log.warning("event.rejected", event_id=event_id, trigger="artifact-push", reason=str(exc))
        return {"status": "rejected", "reason": str(exc)}
    runtime = runtime_factory()
    decision = events.roll_request_from_push(push, runtime.config.tracked_tags, message.message_id or event_id)
    if isinstance(decision, Ignored):
        log.info("event.ignored", event_id=event_id, trigger="artifact-push", reason=decision.reason, **decision.detail)
        return {"status": "ignored", "reason": decision.reason}
    log.info("event.accepted", event_id=event_id, trigger="artifact-push", image=str(decision.image),
             digest=decision.digest)
    report = rollout.run(runtime.config, runtime.fleet, runtime.registry, decision, runtime.rebase)
    return {"status": "done", "report": report.to_dict()}
