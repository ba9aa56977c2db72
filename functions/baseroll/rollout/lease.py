"""A coordinator step's hold on its rollout record: claim it, keep it alive, hand it over or give it back.

The record makes duplicate step deliveries harmless: a step already done is dropped, a step
another invocation holds is redelivered later (`Busy`), and a step that sees the rollout ended
(an operator's abort) stops without writing over it. Every wait goes through the injected clock.

Known race (issue #12): the store is last-writer-wins, so the claim writes, waits CLAIM_SETTLE_S
for a concurrent claimant's write to land and reads back; a compare-and-swap store replaces this.
"""
from __future__ import annotations

import uuid

from baseroll import log
from baseroll.contracts import topics
from baseroll.contracts.messages import Step
from baseroll.contracts.records import TERMINAL, RolloutRecord
from baseroll.rollout import bus as bus_mod
from baseroll.rollout.deps import Deps

CLAIM_SETTLE_S = 0.3  # let a concurrent claimant's write land before re-reading the record
HEARTBEAT_S = 10.0  # a running step renews its hold on the rollout this often
LEASE_S = 3 * HEARTBEAT_S + 15.0  # a step silent this long is taken to be dead (crashed invocation)


class Busy(Exception):
    """Another invocation holds this step: raise, so the trigger redelivers it later."""


class Stopped(Exception):
    """The rollout was aborted (or otherwise ended) while this step ran."""


def claim(deps: Deps, step: Step, delivery: str) -> RolloutRecord | None:
    """The rollout record if this invocation may run `step`; None when the step is stale or over."""
    rec = deps.records.get(step.rollout.rollout_id)
    if rec is None:
        log.warning("step.unknown_rollout", rollout_id=step.rollout.rollout_id, seq=step.seq)
        return None
    if rec.status in TERMINAL:
        log.info("step.dropped", rollout_id=rec.rollout_id, seq=step.seq, reason=f"rollout {rec.status}")
        return None
    if rec.seq > step.seq or (rec.seq == step.seq and rec.owner.endswith(":done")):
        log.info("step.dropped", rollout_id=rec.rollout_id, seq=step.seq, reason="already done (duplicate delivery)")
        return None
    if rec.seq == step.seq and rec.owner and deps.clock.now() - rec.updated < LEASE_S:
        raise Busy(f"step {step.seq} of {rec.rollout_id} is held by another invocation")
    me = f"{delivery}:{uuid.uuid4().hex[:8]}"
    rec.seq, rec.owner = step.seq, me
    deps.records.put(rec)
    deps.clock.sleep(CLAIM_SETTLE_S)
    rec = deps.records.get(step.rollout.rollout_id)
    if rec is None or rec.owner != me:
        raise Busy(f"step {step.seq} of {step.rollout.rollout_id} was claimed concurrently")
    return rec


def stopped(deps: Deps, rollout_id: str) -> RolloutRecord | None:
    """The record when an operator (or a newer step) ended the rollout meanwhile, else None."""
    now = deps.records.get(rollout_id)
    return now if now is not None and now.status in TERMINAL else None


class Lease:
    """This step's hold on its rollout: renewed every HEARTBEAT_S, so a crashed step is noticed
    within LEASE_S; renewing also notices an abort, or another invocation taking the step over."""

    def __init__(self, deps: Deps, rec: RolloutRecord) -> None:
        self.deps, self.rec, self.at = deps, rec, deps.clock.monotonic()

    def renew(self) -> None:
        if self.deps.clock.monotonic() - self.at < HEARTBEAT_S:
            return
        self.at = self.deps.clock.monotonic()
        now = self.deps.records.get(self.rec.rollout_id)
        if now is None or now.status in TERMINAL:
            raise Stopped()
        if now.owner != self.rec.owner:
            raise Busy(f"step {self.rec.seq} of {self.rec.rollout_id} was taken over")
        self.deps.records.put(self.rec)  # `updated` moves: still alive


def finish(deps: Deps, rec: RolloutRecord, step: Step, nxt: Step | None, **changes: object) -> None:
    """Record what the step decided and hand over to `nxt` (if any), unless the rollout ended meanwhile."""
    now = deps.records.get(rec.rollout_id)
    if now is not None and now.status in TERMINAL:
        # Never write a stale copy over an abort, and never hand over to a next step.
        log.info("step.stopped", rollout_id=rec.rollout_id, seq=step.seq, status=now.status)
        return
    if now is not None and now.owner != rec.owner:
        # Taken over (or restarted) since the last renewal: the record is no longer this step's to write.
        raise Busy(f"step {step.seq} of {rec.rollout_id} was taken over")
    for key, value in changes.items():
        setattr(rec, key, value)
    rec.owner = f"{rec.owner}:done"
    deps.records.put(rec)
    if nxt is not None:
        bus_mod.send(deps.bus, topics.RESULTS, nxt)


def give_back(deps: Deps, rec: RolloutRecord) -> None:
    """After an unexpected error: release the step so its redelivery runs it at once, not after the lease."""
    if stopped(deps, rec.rollout_id) is None:
        rec.owner = ""
        deps.records.put(rec)
