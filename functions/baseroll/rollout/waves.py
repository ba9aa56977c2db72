"""Pure wave logic: who goes in which wave, and whether a wave has settled.

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


def status(wave: Sequence[str], fleet: Mapping[str, ServiceView], rollout_id: str, still_outdated: set[str],
           *, deadline_passed: bool, refused: Mapping[str, str] = {}) -> WaveStatus:
    """Read a wave's state from the live fleet (the ledger annotations) and the current plan."""
    st = WaveStatus()
    for name in wave:
        svc = fleet.get(name)
        if svc is None:
            st.skipped.append(name)
            continue
        mine = svc.annotations.get(ledger.ROLLOUT_ID) == rollout_id
        state = svc.annotations.get(ledger.STATE, "")
        if mine and state == ledger.ROLLED and name not in still_outdated:
            verdict = health.assess(svc).state
            if verdict == "ready":
                st.done.append(name)
            elif verdict == "failed" or deadline_passed:
                st.failed.append(name)  # on a failed revision and not restored: never counted as done
            else:
                st.pending.append(name)
        elif mine and state in (ledger.ROLLED_BACK, ledger.CHANGED_BY_SOMEONE_ELSE):
            st.failed.append(name)  # our target failed here: restored, or left to another writer's change
        elif name not in still_outdated and not mine:
            st.skipped.append(name)  # no longer needs this rollout (changed elsewhere, or already current)
        elif deadline_passed or name in refused:
            st.failed.append(name)  # no result in time, or it could not be sent at all
        else:
            st.pending.append(name)
    return st


def recheck(prev: WaveStatus, fresh: Mapping[str, ServiceView], planned: Mapping[str, tuple[str, ...]],
            rollout_id: str, *, deadline_passed: bool) -> WaveStatus | None:
    """`prev` with its pending members judged again from `fresh` reads of just those services, so a
    wave's tail is watched without re-planning the whole fleet. None when only a re-plan can tell:
    a member is gone, or someone else changed its images since `planned`."""
    for name in prev.pending:
        svc = fresh.get(name)
        if svc is None or name not in planned:
            return None
        if svc.annotations.get(ledger.ROLLOUT_ID) != rollout_id and svc.images != planned[name]:
            return None
    # Untouched by this rollout and unchanged since the plan: still outdated, as the plan said.
    outdated = {n for n in prev.pending if fresh[n].annotations.get(ledger.ROLLOUT_ID) != rollout_id}
    again = status(prev.pending, fresh, rollout_id, outdated, deadline_passed=deadline_passed)
    return WaveStatus(prev.done + again.done, prev.failed + again.failed, prev.skipped + again.skipped,
                      again.pending)
