"""The planner: start a rollout (or dry-run it), abort or resume one, and sweep for what was missed.

Starting plans from the live fleet, rebases what the plan needs, writes the rollout record and
hands the first step to the coordinator (`rollout.step`), which walks the waves.
"""
from __future__ import annotations

import hashlib
import json

from baseroll import log
from baseroll.config import BaseTrack, Config
from baseroll.contracts import ledger, topics
from baseroll.contracts.messages import Rollout, Step
from baseroll.contracts.records import TERMINAL, RolloutRecord
from baseroll.contracts.requests import ServiceFilter
from baseroll.contracts.roll import RollRequest
from baseroll.images.refs import ImageRef
from baseroll.rollout import bus as bus_mod
from baseroll.rollout import pipeline as engine
from baseroll.rollout import waves
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
    if request.kind == "app":
        return "app-" + request.image.repository.rsplit("/", 1)[-1][:30]
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
    plan = engine.build_plan(cfg, deps.fleet, deps.catalog(), request, new_ref, scope=scope.matches)
    summary = {"rollout_id": rollout_id, "kind": request.kind, "image": str(request.image), "target": str(new_ref),
               "to_roll": len(plan.to_roll), "skipped": len(plan.services) - len(plan.to_roll),
               "dry_run": request.dry_run or cfg.rollout.dry_run}
    if request.dry_run or cfg.rollout.dry_run:
        report = dry_run_report(cfg, plan, new_ref, deps.rebase)
        log.notice("rollout.dry_run", **summary, waves=[len(w) for w in report["waves"]])
        return {**summary, **report}
    existing = deps.records.get(rollout_id)
    if existing is not None:
        log.info("rollout.already_started", rollout_id=rollout_id, status=existing.status)
        return {**summary, "status": existing.status}
    if not plan.to_roll:
        log.info("rollout.nothing_to_do", **summary)
        return {**summary, "status": "nothing-to-do"}
    # Rebase before anything is released, so a refused rebase shows up in the plan's log at once.
    engine.rebase_jobs_for(plan.jobs, new_ref, deps.rebase)
    ro = Rollout(rollout_id, name, str(request.image), new_ref.digest, request.kind, scope.to_json())
    deps.records.put(RolloutRecord(rollout_id, name, new_ref.digest, ro.track_image, ro.kind, dict(ro.scope)))
    bus_mod.send(deps.bus, topics.RESULTS, Step(ro, wave=0, cursor=0, seq=1))
    log.notice("rollout.started", **summary)
    return {**summary, "status": "running"}


def _rollout_of(rec: RolloutRecord) -> Rollout:
    return Rollout(rec.rollout_id, rec.track, rec.track_image, rec.base_digest, rec.kind, rec.scope)


def control(deps: Deps, action: str, rollout_id: str) -> dict:
    """`abort`: stop a rollout (steps are dropped, queued tasks become no-ops; rolled services stay
    rolled). `resume`: continue a halted rollout from the wave it halted in, accepting its failures."""
    rec = deps.records.get(rollout_id)
    if rec is None:
        log.warning("request.unknown_rollout", action=action, rollout_id=rollout_id)
        return {"status": "unknown-rollout", "rollout_id": rollout_id}
    if action == "abort":
        if rec.status in TERMINAL:
            log.info("rollout.abort_ignored", rollout_id=rollout_id, status=rec.status)
            return {"status": rec.status, "rollout_id": rollout_id}
        rec.status, rec.reason = "aborted", "aborted by request"
        deps.records.put(rec)
        log.notice("rollout.aborted", rollout_id=rollout_id, wave=rec.wave)
        return {"status": "aborted", "rollout_id": rollout_id}
    if rec.status != "halted":
        log.info("rollout.resume_ignored", rollout_id=rollout_id, status=rec.status)
        return {"status": rec.status, "rollout_id": rollout_id}
    accepted = next((w.get("failed", 0) for w in rec.waves if w.get("wave") == rec.wave), 0)
    _restart(deps, rec, rec.wave, f"resumed at wave {rec.wave}", accepted)
    log.notice("rollout.resumed", rollout_id=rollout_id, wave=rec.wave, accepted_failures=accepted)
    return {"status": "running", "rollout_id": rollout_id}


def _restart(deps: Deps, rec: RolloutRecord, wave: int, reason: str, accepted_failures: int = 0) -> None:
    """Run the rollout again from `wave` with a fresh step. The record's seq moves past every step
    already in flight, so a late copy of one is dropped as stale."""
    rec.status, rec.reason, rec.owner = "running", reason, ""
    rec.seq += 1
    deps.records.put(rec)
    bus_mod.send(deps.bus, topics.RESULTS, Step(_rollout_of(rec), wave, 0, None, rec.seq + 1, accepted_failures))


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
    return {"status": "swept", "rollouts": out}


def _sweep_track(deps: Deps, track: BaseTrack, scope: ServiceFilter | None) -> dict:
    request = RollRequest("base", track.image, None, "sweep", f"sweep:{track.name}")
    result = start(deps, request, scope)
    rec = deps.records.get(result["rollout_id"])
    quiet = rec is not None and deps.clock.now() - rec.updated > LEASE_S
    if rec is not None and ((rec.status == "running" and quiet) or (rec.status == "finished" and result["to_roll"])):
        # A quiet rollout picks up where it stopped; a finished one walks its waves again for stragglers.
        wave = rec.wave if rec.status == "running" else 0
        _restart(deps, rec, wave, "restarted by sweep")
        log.notice("rollout.swept", rollout_id=rec.rollout_id, wave=wave, to_roll=result["to_roll"])
        result = {**result, "status": "restarted"}
    return result


def dry_run_report(cfg: Config, plan: Plan, new_ref: ImageRef, rebase: engine.Rebase) -> dict:
    """The full plan as data: nothing is pushed (rebases run with dry_run) and nothing is deployed."""
    rebased = engine.rebase_jobs_for(plan.jobs, new_ref, rebase, dry_run=True)
    fleet_now = [sp.service for sp in plan.services]
    all_waves = waves.assign(members(plan, fleet_now, ""), cfg.rollout.waves, cohort_label=cfg.labels.cohort)
    wave_of = {name: i for i, w in enumerate(all_waves) for name in w}
    services = []
    for sp in plan.services:
        row: dict = {"service": sp.service.name, "images": list(sp.service.images), "action": sp.action,
                     "reason": sp.reason}
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
