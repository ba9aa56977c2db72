"""A rollout's wave plan in the record store: made once from a fresh plan of the fleet, read a wave at a time.

The planner makes it when a rollout starts (the first wave is stored and its step sent before the
later waves are rebased and stored); a step that names no plan (a resume, a sweep's restart) or
finds its wave missing makes one from a fresh listing (docs/RELIABILITY.md#waves-planned-once).
"""
from __future__ import annotations

from typing import Callable

from baseroll import log
from baseroll.images.refs import ImageRef
from baseroll.rollout import pipeline as engine
from baseroll.rollout import waveplan, waves, windows
from baseroll.rollout.deps import Deps
from baseroll.rollout.plan import Plan, RebaseJob, members
from baseroll.rollout.waveplan import Header, Member


def make(deps: Deps, plan: Plan, rollout_id: str, seq: int, new_base: ImageRef, *,
         first_stored: Callable[[Header], None] | None = None) -> tuple[Header, list[list[Member]]]:
    """Assign the waves of `plan`, rebase each wave's images and store the plan as `seq`, wave by
    wave; `first_stored` runs as soon as the first wave is stored (so it can be released while the
    later ones are rebased and stored)."""
    cfg = deps.config
    fleet_now = [sp.service for sp in plan.services]
    assigned = waves.assign(members(plan, fleet_now, rollout_id), cfg.rollout.waves, cohort_label=cfg.labels.cohort)
    first = set(assigned[0]) if assigned else set()
    canary = any(s.labels.get(cfg.labels.cohort) == "canary" for s in fleet_now if s.name in first)
    header = Header(seq, deps.clock.now(), tuple(len(w) for w in assigned), canary)
    keys = windows.label_keys(cfg.rollout.windows)
    deps.records.put_plan(rollout_id, seq, header.to_json())
    rebased: dict[RebaseJob, ImageRef | str] = {}
    out = []
    for index, wave in enumerate(assigned):
        missing = [job for job in waveplan.jobs_of(plan, wave) if job not in rebased]
        rebased.update(engine.rebase_jobs_for(missing, new_base, deps.rebase))
        entries = waveplan.members_of(plan, wave, rollout_id, rebased, keys)
        deps.records.put_wave(rollout_id, seq, index, list(waveplan.chunked(entries)))
        out.append(entries)
        if index == 0 and first_stored is not None:
            first_stored(header)
    log.info("plan.stored", rollout_id=rollout_id, plan=seq, waves=list(header.sizes), rebased=len(rebased))
    return header, out


def load(deps: Deps, rollout_id: str, seq: int, wave: int) -> tuple[Header, list[Member]] | None:
    """Plan `seq`'s header and wave `wave` (empty past the last wave); None when it is not all there
    (never stored, or its writer stopped half-way) or cannot be read as a plan."""
    try:
        doc = deps.records.plan(rollout_id, seq)
        if doc is None:
            return None
        header = Header.from_json(doc)
        if wave >= len(header.sizes):
            return header, []
        entries = deps.records.wave(rollout_id, seq, wave)
        if entries is None or len(entries) != header.sizes[wave]:
            return None
        return header, [Member.from_json(e) for e in entries]
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("plan.unreadable", rollout_id=rollout_id, plan=seq, wave=wave, reason=f"{type(exc).__name__}: {exc}")
        return None
