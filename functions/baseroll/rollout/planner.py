"""The planner: start a rollout (or dry-run it), abort, resume or approve one, and sweep for what was missed.

Starting plans from the live fleet, writes the rollout record, stores the wave plan (rebasing each
wave's images before storing it, `rollout.stored_plan`) and hands the first step to the coordinator
(`rollout.step`) as soon as the first wave is stored; the coordinator walks the waves.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from baseroll import log
from baseroll.config import BaseTrack, Config
from baseroll.contracts import events as E
from baseroll.contracts import ledger, topics
from baseroll.contracts.messages import Rollout, Step
from baseroll.contracts.records import (
    ABORTED,
    AWAITING_APPROVAL,
    FINISHED,
    HALTED,
    RUNNING,
    TERMINAL,
    RolloutRecord,
)
from baseroll.contracts.requests import ServiceFilter
from baseroll.contracts.roll import RollRequest
from baseroll.images.refs import ImageRef
from baseroll.rollout import bus as bus_mod
from baseroll.rollout import events, gates, stored_plan, waves, windows
from baseroll.rollout import pipeline as engine
from baseroll.rollout.deps import Deps
from baseroll.rollout.lease import LEASE_S
from baseroll.rollout.plan import Plan, members


def rollout_id_for(request: RollRequest, track_name: str, digest: str, scope: ServiceFilter) -> str:
    """Deterministic: every redelivery of the same event names the same rollout; a filtered request
    is a rollout of its own."""
    base = ledger.rollout_id(track_name, digest)
    if scope.is_empty:
        return base
    return f"{base}-{hashlib.sha256(json.dumps(scope.to_json(), sort_keys=True).encode()).hexdigest()[:8]}"


def track_name(cfg: Config, request: RollRequest) -> str:
    if request.kind == "app":  # any repository name: ledger.rollout_id sanitises it for the id
        return "app-" + request.image.repository.rsplit("/", 1)[-1]
    track = cfg.track_for(request.image)
    if track is None:
        raise ValueError(f"{request.image} is not a configured base track")
    return track.name


def start(deps: Deps, request: RollRequest, scope: ServiceFilter | None = None) -> dict:
    """Plan a rollout and hand its first step to the coordinator. Safe to repeat. A dry run returns
    the whole plan (per service: current image, strategy, target, wave, or why it is skipped)."""
    cfg = deps.config
    scope = scope or ServiceFilter()
    name = track_name(cfg, request)
    new_ref = engine.resolve_new_ref(deps.registry, request)
    assert new_ref.digest
    rollout_id = rollout_id_for(request, name, new_ref.digest, scope)
    # The store's write and read go on while the fleet is listed: neither needs the other.
    with ThreadPoolExecutor(max_workers=1) as side:
        stored = side.submit(_record_version_and_read, deps, request, name, new_ref.digest, rollout_id)
        plan = engine.build_plan(cfg, deps.fleet, deps.catalog(), request, new_ref, scope=scope.matches)
        existing = stored.result()
    summary = {"rollout_id": rollout_id, "kind": request.kind, "image": str(request.image), "target": str(new_ref),
               "to_roll": len(plan.to_roll), "skipped": len(plan.services) - len(plan.to_roll),
               "dry_run": request.dry_run or cfg.rollout.dry_run}
    if not summary["dry_run"] and existing is None and plan.to_roll:
        return _begin(deps, plan, new_ref, Rollout(rollout_id, name, str(request.image), new_ref.digest,
                                                   request.kind, scope.to_json()), summary)
    engine.log_decisions(plan)
    if summary["dry_run"]:
        report = dry_run_report(cfg, plan, new_ref, deps.rebase, now=deps.clock.now())
        log.notice("rollout.dry_run", **summary, waves=[len(w) for w in report["waves"]])
        return {**summary, **report}
    if existing is not None:
        log.info("rollout.already_started", rollout_id=rollout_id, status=existing.status)
        return {**summary, "status": existing.status}
    log.info("rollout.nothing_to_do", **summary)
    return {**summary, "status": "nothing-to-do"}


def _record_version_and_read(deps: Deps, request: RollRequest, track: str, digest: str,
                             rollout_id: str) -> RolloutRecord | None:
    """Record the track's new version (its tag points there now: rollout.lineage), then read the
    rollout's record, if a redelivery of the same event already started it."""
    if request.kind == "base":
        deps.lineage.record_version(track, digest)
    return deps.records.get(rollout_id)


def _begin(deps: Deps, plan: Plan, new_ref: ImageRef, ro: Rollout, summary: dict) -> dict:
    """Create the rollout's record, store its wave plan and send its first step as soon as the first
    wave is stored; each workload's planned decision is logged once that step is on its way."""
    cfg = deps.config
    if not deps.records.create(RolloutRecord(ro.rollout_id, ro.track, ro.base_digest, ro.track_image, ro.kind,
                                             dict(ro.scope))):
        # A concurrent start (the same push seen by two triggers) created it first: it sends the step.
        engine.log_decisions(plan)
        existing = deps.records.get(ro.rollout_id)
        status = existing.status if existing is not None else RUNNING
        log.info("rollout.already_started", rollout_id=ro.rollout_id, status=status)
        return {**summary, "status": status}

    def release_first_wave(header: stored_plan.Header) -> None:
        # Its step goes as soon as the first wave is stored: the later waves are rebased and stored
        # meanwhile (a step that finds its wave missing plans again, rollout.stored_plan).
        events.publish(deps.bus, E.started(ro, at=deps.clock.now(), to_roll=summary["to_roll"],
                                           skipped=summary["skipped"], wave_sizes=header.sizes,
                                           approval=cfg.rollout.approval))
        bus_mod.send(deps.bus, topics.RESULTS, Step(ro, wave=0, cursor=0, seq=1, plan=1))
        log.notice("rollout.started", **summary)
        engine.log_decisions(plan)

    # Rebases run wave by wave before each wave is stored, so a refused rebase shows in the log at once.
    stored_plan.make(deps, plan, ro.rollout_id, 1, new_ref, first_stored=release_first_wave)
    return {**summary, "status": "running"}


def _rollout_of(rec: RolloutRecord) -> Rollout:
    return Rollout(rec.rollout_id, rec.track, rec.track_image, rec.base_digest, rec.kind, rec.scope)


def control(deps: Deps, action: str, rollout_id: str) -> dict:
    """`abort`: stop a rollout (steps are dropped, queued tasks become no-ops; rolled services stay
    rolled). `resume`: continue a halted rollout from the wave it halted in, accepting its failures.
    `approve` (or `resume` of a rollout awaiting approval): release the wave it waits at
    (rollout.gates). Each decides on the record as it is at the write (one conditional write)."""
    seen: list[RolloutRecord] = []  # the record as last read, when the write was refused
    if action == "abort":
        return _abort(deps, rollout_id, seen) or _ignored(action, rollout_id, seen)

    def decide(rec: RolloutRecord) -> _Restart | None:
        seen[:] = [rec]
        if action == "approve" or rec.status == AWAITING_APPROVAL:
            verdict = gates.approve(rec)
            if isinstance(verdict, gates.Refusal):
                log.info("rollout.approve_refused", rollout_id=rollout_id, reason=verdict.reason,
                         already=verdict.already)
                return None
            return _Restart(verdict.wave, verdict.fields["reason"], fields=verdict.fields, cause="approve")
        if rec.status != HALTED:
            return None
        accepted = next((w.get("failed", 0) for w in rec.waves if w.get("wave") == rec.wave), 0)
        return _Restart(rec.wave, f"resumed at wave {rec.wave}", accepted, cause="resume")

    restarted = _restart(deps, rollout_id, decide)
    if restarted is None:
        return _ignored(action, rollout_id, seen)
    how, _ = restarted
    log.notice("rollout.resumed", rollout_id=rollout_id, wave=how.wave, accepted_failures=how.accepted_failures,
               cause=how.cause)
    return {"status": RUNNING, "rollout_id": rollout_id}


def _abort(deps: Deps, rollout_id: str, seen: list[RolloutRecord]) -> dict | None:
    def abort(rec: RolloutRecord) -> RolloutRecord | None:
        seen[:] = [rec]
        if rec.status in TERMINAL:
            return None
        rec.status, rec.reason, rec.resume_at = ABORTED, "aborted by request", 0.0
        return rec

    written = deps.records.update(rollout_id, abort)
    if written is None:
        return None
    log.notice("rollout.aborted", rollout_id=rollout_id, wave=written.wave)
    events.publish(deps.bus, E.aborted(_rollout_of(written), at=deps.clock.now(), seq=written.seq, wave=written.wave,
                                       reason=written.reason))
    return {"status": ABORTED, "rollout_id": rollout_id}


def _ignored(action: str, rollout_id: str, seen: list[RolloutRecord]) -> dict:
    if not seen:
        log.warning("request.unknown_rollout", action=action, rollout_id=rollout_id)
        return {"status": "unknown-rollout", "rollout_id": rollout_id}
    log.info(f"rollout.{action}_ignored", rollout_id=rollout_id, status=seen[0].status)
    return {"status": seen[0].status, "rollout_id": rollout_id}


@dataclass(frozen=True)
class _Restart:
    wave: int
    reason: str
    accepted_failures: int = 0
    fields: dict = field(default_factory=dict)  # more record fields to write (an approval's)
    cause: str = "sweep"  # approve | resume | sweep: the `resumed` event's


def _restart(deps: Deps, rollout_id: str,
             decide: Callable[[RolloutRecord], _Restart | None]) -> tuple[_Restart, Step] | None:
    """Run the rollout again with a fresh step, if `decide` (on the record as it is at the write) says
    from where; reported as `resumed`. The record's seq moves past every step already in flight, so a
    late copy of one is dropped as stale."""
    chosen: list[_Restart] = []

    def restart(rec: RolloutRecord) -> RolloutRecord | None:
        how = decide(rec)
        if how is None:
            return None
        chosen[:] = [how]
        for key, value in how.fields.items():
            setattr(rec, key, value)
        rec.status, rec.reason, rec.owner, rec.resume_at = RUNNING, how.reason, "", 0.0
        rec.seq += 1
        return rec

    rec = deps.records.update(rollout_id, restart)
    if rec is None:
        return None
    how = chosen[0]
    nxt = Step(_rollout_of(rec), how.wave, 0, None, rec.seq + 1, how.accepted_failures)
    bus_mod.send(deps.bus, topics.RESULTS, nxt)
    events.publish(deps.bus, E.resumed(nxt.rollout, at=deps.clock.now(), seq=nxt.seq, wave=how.wave, cause=how.cause,
                                       reason=how.reason, accepted_failures=how.accepted_failures))
    return how, nxt


def sweep(deps: Deps, scope: ServiceFilter | None = None) -> dict:
    """Reconcile what a lost event or a lost step missed: for each base track, start the rollout
    to its current digest if none exists, and restart a running rollout whose steps went quiet or a
    finished one that has stragglers. Halted and aborted rollouts are left to the operator."""
    out = []
    for track in deps.config.base_tracks:
        try:
            out.append(_sweep_track(deps, track, scope))
        except Exception as exc:  # noqa: BLE001 - one track's failure never stops the others; the next sweep retries it
            log.error("sweep.track_failed", track=track.name, image=str(track.image), error=type(exc).__name__,
                      reason=str(exc))
            out.append({"track": track.name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
    out.extend(_resume_parked(deps))
    return {"status": "swept", "rollouts": out}


def _resume_parked(deps: Deps) -> list[dict]:
    """Run on every rollout parked until a maintenance window that has opened by now (an app rollout,
    or a filtered one, is no track's current rollout: the loop over the tracks does not see it)."""
    out = []
    for rollout_id in deps.records.parked(deps.clock.now()):
        restarted = _restart(deps, rollout_id, lambda rec: _sweep_restart(deps, rec, 0))
        if restarted is not None:
            log.notice("rollout.swept", rollout_id=rollout_id, wave=restarted[0].wave, to_roll=None)
            out.append({"rollout_id": rollout_id, "status": "restarted"})
    return out


def _sweep_track(deps: Deps, track: BaseTrack, scope: ServiceFilter | None) -> dict:
    request = RollRequest("base", track.image, None, "sweep", f"sweep:{track.name}")
    result = start(deps, request, scope)
    restarted = _restart(deps, result["rollout_id"], lambda rec: _sweep_restart(deps, rec, result["to_roll"]))
    if restarted is not None:
        log.notice("rollout.swept", rollout_id=result["rollout_id"], wave=restarted[0].wave, to_roll=result["to_roll"])
        result = {**result, "status": "restarted"}
    return result


def _sweep_restart(deps: Deps, rec: RolloutRecord, to_roll: int) -> _Restart | None:
    """A rollout parked until a maintenance window opens goes on once it has opened (never before);
    a quiet rollout picks up where it stopped; a finished one walks its waves again for stragglers."""
    if rec.status == RUNNING and rec.resume_at:
        return _Restart(rec.wave, "window opened: restarted by sweep") if deps.clock.now() >= rec.resume_at else None
    if rec.status == RUNNING and deps.clock.now() - rec.updated > LEASE_S:
        return _Restart(rec.wave, "restarted by sweep")
    if rec.status == FINISHED and to_roll:
        return _Restart(0, "restarted by sweep")
    return None


def dry_run_report(cfg: Config, plan: Plan, new_ref: ImageRef, rebase: engine.Rebase, *, now: float) -> dict:
    """The full plan as data: nothing is pushed (rebases run with dry_run) and nothing is deployed.
    With `rollout.windows`, each row says whether its service's maintenance window is open at `now`."""
    rebased = engine.rebase_jobs_for(plan.jobs, new_ref, rebase, dry_run=True)
    fleet_now = [sp.service for sp in plan.services]
    all_waves = waves.assign(members(plan, fleet_now, ""), cfg.rollout.waves, cohort_label=cfg.labels.cohort)
    wave_of = {name: i for i, w in enumerate(all_waves) for name in w}
    services = []
    for sp in plan.services:
        row: dict = {"service": sp.service.name, "images": list(sp.service.images), "action": sp.action,
                     "reason": sp.reason}
        if cfg.rollout.windows:
            row["window"] = windows.describe(cfg.rollout.windows, sp.service, windows.at(now))
        if sp.action == "roll":
            targets = engine.targets_for(sp, rebased)
            row.update(strategy=sp.strategy, wave=wave_of.get(sp.service.name))
            if isinstance(targets, str):
                row.update(action="skip", reason=targets)
            else:
                row.update(targets={str(i): v for i, v in targets[0].items()},
                           base_uris={str(i): v for i, v in targets[1].items()})
        services.append(row)
    return {"waves": all_waves, "services": services}
