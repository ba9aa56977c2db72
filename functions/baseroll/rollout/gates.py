"""Approval gates (`rollout.approval`): which wave waits for a person, and what an approval changes.

Pure decisions on plain data; the coordinator step holds a wave and `planner.control` applies an
approval in one conditional write (README.md#approvals):

- `none`: no wave waits.
- `after-canary`: wave 1 waits, after wave 0 settled: the canary cohort, or the first fraction of
  the fleet when no service carries the canary label (that wave is then the canary).
- `every-wave`: every wave waits, wave 0 too: nothing is written before someone approved it.

An approval is for one wave of one rollout: the record keeps the approved waves, so a step of an
approved wave that is redelivered, continued or restarted by the sweep does not wait again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from baseroll.contracts.records import AWAITING_APPROVAL, RUNNING, RolloutRecord


def gated_waves(mode: str, wave_count: int) -> list[int]:
    """The waves that wait for an approval under `mode`."""
    if mode == "every-wave":
        return list(range(wave_count))
    if mode == "after-canary":
        return [1] if wave_count > 1 else []
    return []


def needs_approval(mode: str, wave_index: int, wave_count: int, approved_waves: Sequence[int]) -> bool:
    """True when wave `wave_index` must wait before anything of it is released."""
    return wave_index in gated_waves(mode, wave_count) and wave_index not in approved_waves


def hold_reason(mode: str, wave_index: int, has_canary_wave: bool) -> str:
    """The record's reason (and the event's) while a wave waits."""
    if mode == "after-canary":
        first = "the canary wave" if has_canary_wave else "wave 0"
        return f"awaiting approval before wave {wave_index}: {first} settled (rollout.approval: after-canary)"
    return f"awaiting approval before wave {wave_index} (rollout.approval: {mode})"


@dataclass(frozen=True)
class Approval:
    """What `approve` decided: the wave that may go on and the record fields to write."""

    wave: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Refusal:
    """Why an approval changes nothing; `already` when the wave was approved before (a redelivery)."""

    reason: str
    already: bool = False


def approve(rec: RolloutRecord) -> Approval | Refusal:
    """Release the wave `rec` waits at. Idempotent: approving a wave already approved is a Refusal
    with `already`; a rollout that is not waiting (running, halted, over) is refused with why."""
    if rec.status == AWAITING_APPROVAL:
        approved = sorted({*rec.approved_waves, rec.wave})
        return Approval(rec.wave, {"status": RUNNING, "reason": f"approved wave {rec.wave}",
                                   "approved_waves": approved})
    if rec.status == RUNNING and rec.wave in rec.approved_waves:
        return Refusal(f"wave {rec.wave} was already approved", already=True)
    return Refusal(f"not awaiting approval (status {rec.status})")
