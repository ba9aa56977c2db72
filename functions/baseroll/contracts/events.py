"""Rollout events: the versioned JSON schema of topic `baseroll-events` (docs/EVENTS.md).

What a rollout did, for people and their tools (a chat, a pager, a dashboard): started, a wave
released and settled, halted, awaiting approval, resumed, aborted, superseded, finished. Pure:
builders, `encode` (data and attributes), a strict `decode` for subscribers, and a one-line `summary`.

Pub/Sub delivers at least once and a coordinator step may run twice, so an event can arrive twice:
its `id` is made of what it is about (rollout, kind, wave, the record's step sequence), never of
when it was built, so a subscriber drops a duplicate by id.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from baseroll.contracts import ids
from baseroll.contracts.messages import Rollout
from baseroll.contracts.parsing import EventError, json_object
from baseroll.contracts.pubsub import PubSubMessage

SCHEMA = "baseroll.dev/rollout-event/v1"
STARTED, WAVE_RELEASED, WAVE_SETTLED = "started", "wave-released", "wave-settled"
HALTED, AWAITING_APPROVAL, RESUMED = "halted", "awaiting-approval", "resumed"
ABORTED, SUPERSEDED, FINISHED = "aborted", "superseded", "finished"
KINDS = (STARTED, WAVE_RELEASED, WAVE_SETTLED, HALTED, AWAITING_APPROVAL, RESUMED, ABORTED, SUPERSEDED, FINISHED)
MAX_SERVICES = 50  # failing services listed in a `halted` event (the total is beside them)
MAX_EVENT_BYTES = 64 * 1024


@dataclass(frozen=True)
class RolloutEvent:
    kind: str
    rollout: Mapping[str, Any]  # rollout_id, track, track_image, base_digest, kind, scope
    seq: int  # the rollout record's step sequence when it happened
    at: str  # RFC 3339, UTC
    wave: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rollout_id(self) -> str:
        return str(self.rollout["rollout_id"])

    @property
    def event_id(self) -> str:
        """Deterministic: the same happening built twice has the same id."""
        return f"{self.rollout_id}:{self.kind}:{'-' if self.wave is None else self.wave}:{self.seq}"


def _event(kind: str, ro: Rollout, seq: int, at: float, wave: int | None = None, **detail: Any) -> RolloutEvent:
    rollout = {"rollout_id": ro.rollout_id, "track": ro.track, "track_image": ro.track_image,
               "base_digest": ro.base_digest, "kind": ro.kind, "scope": dict(ro.scope)}
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return RolloutEvent(kind, rollout, seq, stamp, wave, detail)


def started(ro: Rollout, *, at: float, to_roll: int, skipped: int, wave_sizes: Sequence[int],
            approval: str) -> RolloutEvent:
    return _event(STARTED, ro, 0, at, to_roll=to_roll, skipped=skipped, wave_sizes=list(wave_sizes),
                  approval=approval)


def wave_released(ro: Rollout, *, at: float, seq: int, wave: int, size: int, held: int = 0) -> RolloutEvent:
    """The wave's last task was sent (`held`: members waiting for their maintenance window before that)."""
    return _event(WAVE_RELEASED, ro, seq, at, wave, size=size, held=held)


def wave_settled(ro: Rollout, *, at: float, seq: int, counts: Mapping[str, int]) -> RolloutEvent:
    wave = int(counts["wave"])
    return _event(WAVE_SETTLED, ro, seq, at, wave, **_counts(counts))


def halted(ro: Rollout, *, at: float, seq: int, wave: int | None, reason: str,
           failures: Mapping[str, str] | None = None) -> RolloutEvent:
    """`failures`: failing service -> why (the ledger's reason); the first MAX_SERVICES are listed."""
    failures = failures or {}
    listed = [{"service": name, "reason": why} for name, why in sorted(failures.items())[:MAX_SERVICES]]
    return _event(HALTED, ro, seq, at, wave, reason=reason, failed=listed, failed_total=len(failures))


def awaiting_approval(ro: Rollout, *, at: float, seq: int, wave: int, reason: str, approval: str) -> RolloutEvent:
    return _event(AWAITING_APPROVAL, ro, seq, at, wave, reason=reason, approval=approval,
                  approve=f"baseroll approve {ro.rollout_id}")


def resumed(ro: Rollout, *, at: float, seq: int, wave: int, cause: str, reason: str,
            accepted_failures: int = 0) -> RolloutEvent:
    """`cause`: approve | resume | sweep (a quiet or finished rollout restarted by the sweep)."""
    return _event(RESUMED, ro, seq, at, wave, cause=cause, reason=reason, accepted_failures=accepted_failures)


def aborted(ro: Rollout, *, at: float, seq: int, wave: int, reason: str) -> RolloutEvent:
    return _event(ABORTED, ro, seq, at, wave, reason=reason)


def superseded(ro: Rollout, *, at: float, seq: int, wave: int, now_digest: str) -> RolloutEvent:
    return _event(SUPERSEDED, ro, seq, at, wave, reason=f"{ro.track_image} moved to {now_digest}",
                  now_digest=now_digest)


def finished(ro: Rollout, *, at: float, seq: int, waves: Sequence[Mapping[str, int]]) -> RolloutEvent:
    """`waves`: the record's per-wave counts; the event carries their totals and the wave count."""
    totals = {key: sum(int(w.get(key, 0)) for w in waves) for key in ("size", "done", "failed", "skipped")}
    return _event(FINISHED, ro, seq, at, None, waves=len(waves), **totals)


def _counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {key: int(counts.get(key, 0)) for key in ("size", "done", "failed", "skipped")}


# --------------------------------------------------------------------------------------------- wire


def to_document(event: RolloutEvent) -> dict[str, Any]:
    return {"schema": SCHEMA, "id": event.event_id, "kind": event.kind, "at": event.at,
            "rollout": dict(event.rollout), "wave": event.wave, "seq": event.seq, "detail": dict(event.detail)}


def encode(event: RolloutEvent) -> tuple[bytes, dict[str, str]]:
    """Message data and attributes: `schema`, `kind`, `rollout_id` and `event_id` let a subscription
    filter (e.g. `attributes.kind = "halted"`) without decoding the data."""
    data = json.dumps(to_document(event), separators=(",", ":"), sort_keys=True).encode()
    return data, {"schema": SCHEMA, "kind": event.kind, "rollout_id": event.rollout_id, "event_id": event.event_id}


def decode(message: PubSubMessage) -> RolloutEvent:
    """A `baseroll-events` message for a subscriber; EventError naming the field when it is not one."""
    if len(message.data) > MAX_EVENT_BYTES:
        raise EventError(f"event is larger than {MAX_EVENT_BYTES} bytes")
    doc = json_object(message.data, "rollout event")
    if doc.get("schema") != SCHEMA:
        raise EventError(f"schema: expected {SCHEMA!r}, got {doc.get('schema')!r}")
    if doc.get("kind") not in KINDS:
        raise EventError(f"kind: one of {', '.join(KINDS)}, got {doc.get('kind')!r}")
    rollout, detail = doc.get("rollout"), doc.get("detail", {})
    if not isinstance(rollout, dict) or not isinstance(rollout.get("rollout_id"), str) \
            or not ids.ROLLOUT_ID.fullmatch(rollout["rollout_id"]):
        raise EventError("rollout.rollout_id: missing or malformed")
    seq, wave, at = doc.get("seq"), doc.get("wave"), doc.get("at")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise EventError("seq: a non-negative integer")
    if wave is not None and (isinstance(wave, bool) or not isinstance(wave, int) or wave < 0):
        raise EventError("wave: a non-negative integer or null")
    if not isinstance(at, str) or not isinstance(detail, dict):
        raise EventError("at: a timestamp; detail: an object")
    event = RolloutEvent(doc["kind"], rollout, seq, at, wave, detail)
    if doc.get("id") != event.event_id:
        raise EventError(f"id: {doc.get('id')!r} is not this event's id {event.event_id!r}")
    return event


def summary(event: RolloutEvent) -> str:
    """One line for a person: what happened to which rollout."""
    d, wave = event.detail, f"wave {event.wave}"
    text = {
        STARTED: lambda: f"started: {d.get('to_roll')} services in waves {d.get('wave_sizes')}",
        WAVE_RELEASED: lambda: f"{wave} released ({d.get('size')} services)",
        WAVE_SETTLED: lambda: f"{wave} settled: {d.get('done')} done, {d.get('failed')} failed, "
                              f"{d.get('skipped')} skipped of {d.get('size')}",
        HALTED: lambda: f"HALTED: {d.get('reason')}; failing: {_failing(d.get('failed'))}",
        AWAITING_APPROVAL: lambda: f"awaiting approval before {wave}: run `{d.get('approve')}`",
        RESUMED: lambda: f"resumed at {wave} ({d.get('cause')})",
        ABORTED: lambda: f"aborted at {wave}: {d.get('reason')}",
        SUPERSEDED: lambda: f"superseded: {d.get('reason')}",
        FINISHED: lambda: f"finished: {d.get('done')} done, {d.get('failed')} failed, {d.get('skipped')} skipped "
                          f"in {d.get('waves')} waves",
    }[event.kind]()
    return f"baseroll {event.rollout_id} ({event.rollout.get('track_image', '')}): {text}"


def _failing(failed: Any, shown: int = 5) -> str:
    """`shop (not ready), cart (...)`: the first few failing services of a `halted` event, short names."""
    rows = [f for f in failed if isinstance(f, dict)] if isinstance(failed, list) else []
    names = [f"{str(f.get('service', '?')).rsplit('/', 1)[-1]} ({f.get('reason', '')})" for f in rows[:shown]]
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return ", ".join(names) + more if names else "none listed"
