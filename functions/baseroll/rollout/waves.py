"""Pure wave logic: who goes in which wave, and whether a wave has settled (from its tasks' results
and reads of just its members, never from a listing of the fleet).

Membership is stable across re-planning: the canary cohort first, then every other member in
an order fixed by hashes of names (so a re-plan mid-rollout puts each service in the same wave
and at the same position), cut at the configured cumulative fractions. The order is stratified by
project × region: each location's members are spread evenly through it, so every wave takes the
same share of every location. A 10% wave then reaches every region, and no region has a larger
share of a wave than its quota can write while the others wait at the wave's barrier.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from baseroll.contracts import ledger
from baseroll.fleet import health
from baseroll.fleet.view import ServiceView


def _order_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _stratified(members: Sequence[ServiceView]) -> list[str]:
    """Names ordered by their quantile within their project × region (hash order inside a location),
    ties broken by hash: any prefix of the result holds about the same fraction of every location."""
    by_location: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in members:
        by_location[(s.project, s.region)].append(s.name)
    keyed = []
    for names in by_location.values():
        ordered = sorted((_order_key(name), name) for name in names)
        for rank, (key, name) in enumerate(ordered):
            keyed.append(((2 * rank + 1) / (2 * len(ordered)), key, name))
    keyed.sort()
    return [name for _, _, name in keyed]


def assign(members: Sequence[ServiceView], fractions: Sequence[float], *, cohort_label: str,
           canary_value: str = "canary") -> list[list[str]]:
    """Waves of service names. Wave 0 is the canary cohort when there is one; empty waves are dropped."""
    canaries = _stratified([s for s in members if s.labels.get(cohort_label) == canary_value])
    rest = _stratified([s for s in members if s.labels.get(cohort_label) != canary_value])
    waves: list[list[str]] = [canaries] if canaries else []
    start = 0
    for fraction in fractions:
        end = max(start + 1, math.ceil(fraction * len(rest))) if rest else 0
        end = min(end, len(rest))
        if end > start:
            waves.append(rest[start:end])
        start = end
    return waves


@dataclass
class WaveStatus:
    done: list[str] = field(default_factory=list)  # on the new base
    failed: list[str] = field(default_factory=list)  # rolled back, left to another writer, or no result in time
    skipped: list[str] = field(default_factory=list)  # changed by someone else, or gone
    pending: list[str] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return not self.pending


DONE, FAILED, SKIPPED, PENDING = "done", "failed", "skipped", "pending"

# A task's result (its worker's outcome, fleet.deploy) as its member's state. `superseded` and
# `cancelled` say nothing about the member (the step itself sees its rollout end), so they are absent.
_OUTCOME_STATE = {"updated": DONE, "already-current": DONE, "rolled-back": FAILED, "rollback-failed": FAILED,
                  "failed": FAILED, "skipped": SKIPPED}
_ALREADY_ROLLED_BACK = ledger.ALREADY_ROLLED_BACK.split("{", 1)[0]


def result_state(outcome: str, reason: str = "") -> str | None:
    """The member state a task's result tells, or None when it tells nothing about the member."""
    if outcome == "skipped" and reason.startswith(_ALREADY_ROLLED_BACK):
        return FAILED  # this rollout's target failed here in an earlier pass: as the ledger says
    return _OUTCOME_STATE.get(outcome)


def judge(svc: ServiceView | None, expected: tuple[str, ...], rollout_id: str, *, deadline_passed: bool) -> str:
    """A member's state read from the service itself (its ledger annotations and health); `expected`
    are its images when planned (empty: not known)."""
    if svc is None:
        return SKIPPED  # gone
    mine = svc.annotations.get(ledger.ROLLOUT_ID) == rollout_id
    state = svc.annotations.get(ledger.STATE, "")
    if mine and state == ledger.ROLLED:
        verdict = health.assess(svc).state
        if verdict == "ready":
            return DONE
        return FAILED if verdict == "failed" or deadline_passed else PENDING  # a failed revision is never done
    if mine and state in (ledger.ROLLED_BACK, ledger.CHANGED_BY_SOMEONE_ELSE):
        return FAILED  # our target failed here: restored, or left to another writer's change
    if not mine and expected and svc.images != expected:
        return SKIPPED  # changed by someone else since planning: its task leaves it alone
    return FAILED if deadline_passed else PENDING  # not rolled (yet): no result in time is a failure


def settle(wave: Sequence[str], known: Mapping[str, str], *, deadline_passed: bool) -> WaveStatus:
    """A wave's state from what is known of its members (from their results, their state when
    planned, or reads of them): a member not known yet is pending, or failed once the wave's settle
    deadline passed."""
    st = WaveStatus()
    lists = {DONE: st.done, FAILED: st.failed, SKIPPED: st.skipped, PENDING: st.pending}
    for name in wave:
        state = known.get(name, PENDING)
        if state == PENDING and deadline_passed:
            state = FAILED
        lists[state].append(name)
    return st
