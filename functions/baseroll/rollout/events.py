"""Publishing rollout events (`contracts.events`) to `baseroll-events` over the bus port.

An event is a report, never a step of the rollout: a publish that fails (topic missing, Pub/Sub
unreachable, no permission) is logged as `rollout_event.unpublished` and the rollout goes on. Every
event is also logged (`rollout_event`, with its id and kind), so a log-based alert sees what the
topic carries even when nobody subscribes (docs/EVENTS.md#a-log-based-alert).
"""
from __future__ import annotations

from baseroll import log
from baseroll.contracts import events, topics
from baseroll.rollout.bus import Bus


def publish(bus: Bus, *batch: events.RolloutEvent) -> int:
    """Publish `batch` to baseroll-events; return how many were accepted (0 when publishing failed)."""
    if not batch:
        return 0
    for event in batch:
        log.info("rollout_event", event_id=event.event_id, kind=event.kind, rollout_id=event.rollout_id,
                 wave=event.wave, summary=events.summary(event))
    try:
        return len(bus.publish(topics.EVENTS, [events.encode(e) for e in batch]))
    except Exception as exc:  # noqa: BLE001 - an event never fails the rollout it reports on
        log.warning("rollout_event.unpublished", event_ids=[e.event_id for e in batch], topic=topics.EVENTS,
                    error=type(exc).__name__, reason=str(exc)[:500])
        return 0
