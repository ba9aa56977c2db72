"""The rollout record: one small document per rollout, what belongs to the rollout as a whole.

Services carry their own state (the ledger annotations, see `ledger`); the record holds the
rollout's status, the wave and step it is at (so a duplicate coordinator step is recognised and
dropped), which step holds it now, and per-wave counts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

RUNNING = "running"
HALTED = "halted"
ABORTED = "aborted"
SUPERSEDED = "superseded"
FINISHED = "finished"
# Held before a wave until an operator approves (`rollout.approval`, rollout/gates.py); not terminal:
# an `approve` (or `resume`) request runs it on, an `abort` ends it. No step runs while it waits.
AWAITING_APPROVAL = "awaiting-approval"
TERMINAL = (HALTED, ABORTED, SUPERSEDED, FINISHED)
STATUSES = (RUNNING, AWAITING_APPROVAL, *TERMINAL)


@dataclass
class RolloutRecord:
    rollout_id: str
    track: str
    base_digest: str
    track_image: str = ""
    kind: str = "base"
    scope: dict[str, Any] = field(default_factory=dict)
    status: str = RUNNING  # one of STATUSES
    wave: int = 0
    seq: int = 0
    owner: str = ""  # message id of the step that holds the rollout now
    reason: str = ""
    waves: list[dict[str, Any]] = field(default_factory=list)  # per wave: size, done, failed, skipped
    approved_waves: list[int] = field(default_factory=list)  # waves an operator approved (rollout.gates)
    # A running rollout whose wave waits for a maintenance window (rollout.windows) is parked with no step
    # in flight: the epoch second its next window opens, when the sweep runs it on; 0 when not parked.
    resume_at: float = 0.0
    updated: float = field(default_factory=time.time)
