"""A coordinator step's hold on its rollout record: claim it, keep it alive, hand it over or give it back.

The record makes duplicate step deliveries harmless: a step already done is dropped, a step
another invocation holds is redelivered later (`Busy`), and a step that sees the rollout ended
(an operator's abort) stops without writing over it. Each of these is one conditional write
(`RecordStore.update`): its decision is taken on the record as it is at the write, and a write
that lost a race is decided again on what won it (docs/RELIABILITY.md#the-rollout-store).
"""
from __future__ import annotations

import uuid

from baseroll import log
from baseroll.contracts import topics
from baseroll.contracts.messages import Step
from baseroll.contracts.records import TERMINAL, RolloutRecord
from baseroll.rollout import bus as bus_mod
from baseroll.rollout.deps import Deps

HEARTBEAT_S = 10.0  # a running step renews its hold on the rollout this often
LEASE_S = 3 * HEARTBEAT_S + 15.0  # a step silent this long is taken to be dead (crashed invocation)


class Busy(Exception):
    """Another invocation holds this step: raise, so the trigger redelivers it later."""


class Stopped(Exception):
    """The rollout was aborted (or otherwise ended) while this step ran; the message is its status."""


class _Drop(Exception):
    """The step is stale or the rollout is over: nothing to write, nothing to run."""


def claim(deps: Deps, step: Step, delivery: str) -> RolloutRecord | None:
    """The rollout record if this invocation may run `step`; None when the step is stale or over."""
    me = f"{delivery}:{uuid.uuid4().hex[:8]}"

    def take(rec: RolloutRecord) -> RolloutRecord:
        if rec.status in TERMINAL:
            raise _Drop(f"rollout {rec.status}")
        if rec.seq > step.seq or (rec.seq == step.seq and rec.owner.endswith(":done")):
            raise _Drop("already done (duplicate delivery)")
        if rec.seq == step.seq and rec.owner and deps.clock.now() - rec.updated < LEASE_S:
            raise Busy(f"step {step.seq} of {rec.rollout_id} is held by another invocation")
        rec.seq, rec.owner = step.seq, me
        return rec

    try:
        rec = deps.records.update(step.rollout.rollout_id, take)
    except _Drop as why:
        log.info("step.dropped", rollout_id=step.rollout.rollout_id, seq=step.seq, reason=str(why))
        return None
    if rec is None:
        log.warning("step.unknown_rollout", rollout_id=step.rollout.rollout_id, seq=step.seq)
    return rec


def _still_mine(rec: RolloutRecord, owner: str) -> RolloutRecord:
    """`rec` as just read, if the rollout still runs and `owner` still holds it."""
    if rec.status in TERMINAL:
        raise Stopped(rec.status)
    if rec.owner != owner:
        # Taken over (or restarted) since the last renewal: the record is no longer this step's to write.
        raise Busy(f"step {rec.seq} of {rec.rollout_id} was taken over")
    return rec


class Lease:
    """This step's hold on its rollout: renewed every HEARTBEAT_S, so a crashed step is noticed
    within LEASE_S; renewing also notices an abort, or another invocation taking the step over."""

    def __init__(self, deps: Deps, rec: RolloutRecord) -> None:
        self.deps, self.rec, self.at = deps, rec, deps.clock.monotonic()

    def renew(self) -> None:
        if self.deps.clock.monotonic() - self.at < HEARTBEAT_S:
            return
        self.at = self.deps.clock.monotonic()
        # Rewrites the record as read (only `updated` moves: still alive), never this step's copy.
        if self.deps.records.update(self.rec.rollout_id, lambda now: _still_mine(now, self.rec.owner)) is None:
            raise Stopped("gone")  # the record was deleted


def finish(deps: Deps, rec: RolloutRecord, step: Step, nxt: Step | None, **changes: object) -> bool:
    """Record what the step decided and hand over to `nxt` (if any), unless the rollout ended meanwhile.
    True when written: only then may the step report what it decided (a rollout event)."""
    def decide(now: RolloutRecord) -> RolloutRecord:
        now = _still_mine(now, rec.owner)
        for key, value in changes.items():
            setattr(now, key, value)
        now.owner = f"{rec.owner}:done"
        return now

    try:
        written = deps.records.update(rec.rollout_id, decide)
    except Stopped as ended:
        # Never write over an abort, and never hand over to a next step.
        log.info("step.stopped", rollout_id=rec.rollout_id, seq=step.seq, status=str(ended))
        return False
    if written is not None and nxt is not None:
        bus_mod.send(deps.bus, topics.RESULTS, nxt)
    return written is not None


def give_back(deps: Deps, rec: RolloutRecord) -> None:
    """After an unexpected error: release the step so its redelivery runs it at once, not after the lease.
    Only a hold this step still has is released; an ended rollout is left as it is."""
    def release(now: RolloutRecord) -> RolloutRecord | None:
        if now.status in TERMINAL or now.owner != rec.owner:
            return None
        now.owner = ""
        return now

    deps.records.update(rec.rollout_id, release)

