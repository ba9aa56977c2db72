"""Fan-out rollout over Pub/Sub: the planner starts a rollout, the coordinator walks it one step at a time.

A step ("wave W from position C") re-plans from the live fleet (membership is stable, see
`waves`), releases that wave's tasks to `baseroll-tasks` at the Admin API write quota of each
project × region, waits for the wave to settle, checks the failure budget, and hands over to the
next step by publishing it. Every step fits in one invocation (`invocation_budget_s`); a step that
runs out of time publishes its own continuation. A rollout record (see `records`) makes duplicate
step deliveries harmless: a step already done is dropped, a step another invocation holds is
redelivered later.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from . import bus as bus_mod, ledger, log, pacing, signatures, topics, waves
from .catalog import Catalog
from .config import Config
from .events import RollRequest
from .fleet import Fleet, FleetError, ServiceView
from .messages import Rollout, Step, Task
from .plan import Plan, RebaseJob, ServicePlan
from .records import TERMINAL, RecordStore, RolloutRecord
from .refs import ImageRef, parse
from .registry import RegistryClient
from .requests import ServiceFilter, parse_filter
from . import rollout as engine

CLAIM_SETTLE_S = 0.3  # let a concurrent claimant's write land before re-reading the record
HEARTBEAT_S = 10.0  # a running step renews its hold on the rollout this often
LEASE_S = 3 * HEARTBEAT_S + 15.0  # a step silent this long is taken to be dead (crashed invocation)
SETTLE_GRACE_S = 60.0
POLL_COST_RATIO = 3.0
TARGETED_POLL_MAX = 64  # a wave's last few pending services are read one by one, not by re-planning the fleet


class Busy(Exception):
    """Another invocation holds this step: raise, so the trigger redelivers it later."""


@dataclass
class Deps:
    config: Config
    fleet: Fleet
    registry: RegistryClient
    bus: bus_mod.Bus
    records: RecordStore
    rebase: engine.Rebase
    clock: Callable[[], float] = time.time
    # Lists every version of an Artifact Registry base (tags alone miss untagged old versions).
    version_lister: Callable[[ImageRef], list[str]] | None = None

    def catalog(self) -> Catalog:
        return Catalog(self.registry, version_lister=self.version_lister)


# ---------------------------------------------------------------- planner


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
    cfg = deps.config
    out = []
    for track in cfg.base_tracks:
        request = RollRequest("base", track.image, None, "sweep", f"sweep:{track.name}")
        result = start(deps, request, scope)
        rec = deps.records.get(result["rollout_id"])
        quiet = rec is not None and deps.clock() - rec.updated > LEASE_S
        if rec is not None and ((rec.status == "running" and quiet) or (rec.status == "finished" and result["to_roll"])):
            # A quiet rollout picks up where it stopped; a finished one walks its waves again for stragglers.
            wave = rec.wave if rec.status == "running" else 0
            _restart(deps, rec, wave, "restarted by sweep")
            log.notice("rollout.swept", rollout_id=rec.rollout_id, wave=wave, to_roll=result["to_roll"])
            result = {**result, "status": "restarted"}
        out.append(result)
    return {"status": "swept", "rollouts": out}


def dry_run_report(cfg: Config, plan: Plan, new_ref: ImageRef, rebase: engine.Rebase) -> dict:
    """The full plan as data: nothing is pushed (rebases run with dry_run) and nothing is deployed."""
    rebased = engine.rebase_jobs_for(plan.jobs, new_ref, rebase, dry_run=True)
    fleet_now = [sp.service for sp in plan.services]
    all_waves = waves.assign(_members(plan, fleet_now, ""), cfg.rollout.waves, cohort_label=cfg.labels.cohort)
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


# ---------------------------------------------------------------- coordinator


def current_digest(registry: RegistryClient, ro: Rollout) -> str | None:
    """What the followed tag points at now (a newer digest supersedes the rollout); an untagged
    target cannot be superseded."""
    image = parse(ro.track_image)
    if image.tag is None:
        return ro.base_digest
    return registry.head_manifest(image)


def _claim(deps: Deps, step: Step, delivery: str) -> RolloutRecord | None:
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
    if rec.seq == step.seq and rec.owner and deps.clock() - rec.updated < LEASE_S:
        raise Busy(f"step {step.seq} of {rec.rollout_id} is held by another invocation")
    me = f"{delivery}:{uuid.uuid4().hex[:8]}"
    rec.seq, rec.owner = step.seq, me
    deps.records.put(rec)
    time.sleep(CLAIM_SETTLE_S)
    rec = deps.records.get(step.rollout.rollout_id)
    if rec is None or rec.owner != me:
        raise Busy(f"step {step.seq} of {step.rollout.rollout_id} was claimed concurrently")
    return rec


class Stopped(Exception):
    """The rollout was aborted (or otherwise ended) while this step ran."""


def _stopped(deps: Deps, rollout_id: str) -> RolloutRecord | None:
    """The record when an operator (or a newer step) ended the rollout meanwhile, else None."""
    now = deps.records.get(rollout_id)
    return now if now is not None and now.status in TERMINAL else None


class _Lease:
    """This step's hold on its rollout: renewed every HEARTBEAT_S, so a crashed step is noticed
    within LEASE_S; renewing also notices an abort, or another invocation taking the step over."""

    def __init__(self, deps: Deps, rec: RolloutRecord) -> None:
        self.deps, self.rec, self.at = deps, rec, time.monotonic()

    def renew(self) -> None:
        if time.monotonic() - self.at < HEARTBEAT_S:
            return
        self.at = time.monotonic()
        now = self.deps.records.get(self.rec.rollout_id)
        if now is None or now.status in TERMINAL:
            raise Stopped()
        if now.owner != self.rec.owner:
            raise Busy(f"step {self.rec.seq} of {self.rec.rollout_id} was taken over")
        self.deps.records.put(self.rec)  # `updated` moves: still alive


def _finish_step(deps: Deps, rec: RolloutRecord, step: Step, nxt: Step | None, **changes: object) -> None:
    ended = _stopped(deps, rec.rollout_id)
    if ended is not None:
        # Never write a stale copy over an abort, and never hand over to a next step.
        log.info("step.stopped", rollout_id=rec.rollout_id, seq=step.seq, status=ended.status)
        return
    for key, value in changes.items():
        setattr(rec, key, value)
    rec.owner = f"{rec.owner}:done"
    deps.records.put(rec)
    if nxt is not None:
        bus_mod.send(deps.bus, topics.RESULTS, nxt)


def _members(plan: Plan, fleet: list[ServiceView], rollout_id: str) -> list[ServiceView]:
    """Who belongs to the rollout: services still to roll, and services it already touched."""
    names = {sp.service.name for sp in plan.to_roll}
    return [s for s in fleet if s.name in names or s.annotations.get(ledger.ROLLOUT_ID) == rollout_id]


def handle_step(deps: Deps, step: Step, delivery: str) -> None:
    rec = _claim(deps, step, delivery)
    if rec is None:
        return
    try:
        _run_step(deps, rec, step, delivery)
    except Stopped:
        log.info("step.stopped", rollout_id=rec.rollout_id, seq=step.seq, status="aborted")
    except Busy:
        raise  # another invocation holds the step now: leave its hold alone
    except Exception:
        # Give the step back so its redelivery can run it at once rather than after the lease.
        if _stopped(deps, rec.rollout_id) is None:
            rec.owner = ""
            deps.records.put(rec)
        raise


def _run_step(deps: Deps, rec: RolloutRecord, step: Step, delivery: str) -> None:
    cfg, ro = deps.config, step.rollout
    lease = _Lease(deps, rec)
    cache = _StepCache()
    deadline = time.monotonic() + cfg.rollout.invocation_budget_s
    track_image = parse(ro.track_image)
    current = current_digest(deps.registry, ro)
    if current != ro.base_digest:
        log.notice("rollout.superseded", rollout_id=ro.rollout_id, base_digest=ro.base_digest, now=current)
        _finish_step(deps, rec, step, None, status="superseded", reason=f"{track_image} moved to {current}")
        return
    new_base = track_image.at(ro.base_digest)
    request = RollRequest(ro.kind, track_image, ro.base_digest, "step", delivery)  # type: ignore[arg-type]
    scope = parse_filter(dict(ro.scope)).matches
    catalog = deps.catalog()
    plan = engine.build_plan(cfg, deps.fleet, catalog, request, new_base, scope=scope, quiet=True)
    fleet_now = [sp.service for sp in plan.services]
    all_waves = waves.assign(_members(plan, fleet_now, ro.rollout_id), cfg.rollout.waves,
                             cohort_label=cfg.labels.cohort)
    if step.wave >= len(all_waves):
        log.notice("rollout.finished", rollout_id=ro.rollout_id, waves=rec.waves)
        _finish_step(deps, rec, step, None, status="finished", wave=step.wave)
        return
    wave = all_waves[step.wave]
    if step.cursor < len(wave):
        cursor = _release(deps, plan, new_base, ro, step, wave, deadline, lease, cache)
        if cursor < len(wave):  # out of time: continue in a fresh invocation
            _finish_step(deps, rec, step, Step(ro, step.wave, cursor, None, step.seq + 1, step.halted_failures))
            return
        step = Step(ro, step.wave, cursor, deps.clock(), step.seq, step.halted_failures)
    released_at = step.released_at or deps.clock()
    status = _await_wave(deps, catalog, request, new_base, ro, wave, released_at, deadline, scope, lease, cache)
    if not status.settled:
        log.info("wave.waiting", rollout_id=ro.rollout_id, wave=step.wave, pending=len(status.pending))
        _finish_step(deps, rec, step, Step(ro, step.wave, len(wave), released_at, step.seq + 1, step.halted_failures))
        return
    counts = {"wave": step.wave, "size": len(wave), "done": len(status.done), "failed": len(status.failed),
              "skipped": len(status.skipped)}
    log.notice("wave.settled", rollout_id=ro.rollout_id, **counts, failed_services=status.failed[:50])
    wave_log = [w for w in rec.waves if w.get("wave") != step.wave] + [counts]
    failures = max(0, len(status.failed) - step.halted_failures)
    if cfg.rollout.failure_budget.exceeded(failures, len(wave)):
        reason = f"wave {step.wave}: {len(status.failed)} of {len(wave)} failed, over the failure budget"
        log.error("rollout.halted", rollout_id=ro.rollout_id, reason=reason, failed_services=status.failed[:50],
                  untouched_waves=len(all_waves) - step.wave - 1)
        _finish_step(deps, rec, step, None, status="halted", reason=reason, waves=wave_log, wave=step.wave)
        return
    last = step.wave + 1 >= len(all_waves)
    if last:
        log.notice("rollout.finished", rollout_id=ro.rollout_id, waves=wave_log)
        _finish_step(deps, rec, step, None, status="finished", waves=wave_log, wave=step.wave)
        return
    _finish_step(deps, rec, step, Step(ro, step.wave + 1, 0, None, step.seq + 1), waves=wave_log, wave=step.wave + 1)


def _release(deps: Deps, plan: Plan, new_base: ImageRef, ro: Rollout, step: Step, wave: list[str],
             deadline: float, lease: _Lease, cache: _StepCache) -> int:
    """Publish tasks for wave[step.cursor:] at the write quota; return the new cursor."""
    cfg = deps.config
    to_roll = {sp.service.name: sp for sp in plan.to_roll}
    names = wave[step.cursor:]
    timed = pacing.schedule(names, lambda n: (n.split("/")[1], n.split("/")[3]),
                            lambda loc: cfg.rollout.quota_for(loc[1]), start=time.monotonic(),
                            burst=cfg.rollout.concurrency)
    released: set[str] = set()
    batch: list[Task] = []

    def flush() -> None:
        if batch:
            bus_mod.send(deps.bus, topics.TASKS, *batch)
            released.update(t.service for t in batch)
            batch.clear()

    for at, name in timed:
        if at > deadline - cfg.rollout.poll_interval_s:
            break
        if at > time.monotonic():
            flush()
            lease.renew()
            time.sleep(max(0.0, at - time.monotonic()))
        sp = to_roll.get(name)
        if sp is None:
            released.add(name)  # already rolled, or no longer needs it: nothing to send
            continue
        targets = _targets(deps, sp, new_base, ro, cache)
        if isinstance(targets, str):
            log.warning("service.skipped", service=name, reason=targets)
            released.add(name)
            continue
        images, uris = targets
        batch.append(Task(ro, name, step.wave, sp.service.images, {str(i): v for i, v in images.items()},
                          {str(i): v for i, v in uris.items()}))
    flush()
    # The cursor only moves past a prefix that is entirely released.
    cursor = step.cursor
    while cursor < len(wave) and wave[cursor] in released:
        cursor += 1
    log.info("wave.released", rollout_id=ro.rollout_id, wave=step.wave, released=len(released),
             cursor=cursor, size=len(wave))
    return cursor


@dataclass
class _StepCache:
    """What one step learns once: rebase results and signature verdicts (a later step asks again,
    so a signature added meanwhile is seen)."""

    rebased: dict[RebaseJob, ImageRef | str] = field(default_factory=dict)
    signature: dict[ImageRef, str | None] = field(default_factory=dict)


def _targets(deps: Deps, sp: ServicePlan, new_base: ImageRef, ro: Rollout,
             cache: _StepCache) -> tuple[dict[int, str], dict[int, str]] | str:
    """What a planned service goes to, or why it cannot go: a refused rebase, or (policy `require`)
    a rebased image nobody has signed yet."""
    missing = [c.job for c in sp.containers.values() if c.job is not None and c.job not in cache.rebased]
    cache.rebased.update(engine.rebase_jobs_for(missing, new_base, deps.rebase))
    for change in sp.containers.values():
        result = cache.rebased.get(change.job) if change.job is not None else None
        if change.job is not None and isinstance(result, ImageRef):
            problem = _signature_check(deps, change.job, result, ro, cache)
            if problem:
                return problem
    return engine.targets_for(sp, cache.rebased)


def _signature_check(deps: Deps, job: RebaseJob, image: ImageRef, ro: Rollout, cache: _StepCache) -> str | None:
    """None when the rebased image may be deployed; else why not. Logs once per image and step."""
    policy = deps.config.signatures
    key = image
    if key not in cache.signature:
        cache.signature[key] = None
        was_signed = signatures.is_signed(deps.registry, job.app)
        signed = signatures.is_signed(deps.registry, image)
        if was_signed and not signed:
            log.warning("signature.not_carried", app=str(job.app), rebased=str(image), rollout_id=ro.rollout_id,
                        policy=policy.policy)
        if policy.policy == "require" and not signed:
            cache.signature[key] = f"rebased image {image} is unsigned and signatures.policy is require"
            if policy.request_topic:
                deps.bus.publish(policy.request_topic, [(signatures.sign_request(image, job.app, ro.rollout_id),
                                                         {"schema": signatures.SIGN_REQUEST_SCHEMA})])
                log.notice("signature.requested", image=str(image), topic=policy.request_topic, rollout_id=ro.rollout_id)
    return cache.signature[key]


def _await_wave(deps: Deps, catalog: Catalog, request: RollRequest, new_base: ImageRef, ro: Rollout,
                wave: list[str], released_at: float, deadline: float, scope: engine.Scope,
                lease: _Lease, cache: _StepCache) -> waves.WaveStatus:
    cfg = deps.config
    settle_by = released_at + cfg.rollout.ready_timeout_s * 2 + SETTLE_GRACE_S  # an update and its rollback
    st: waves.WaveStatus | None = None
    planned: dict[str, tuple[str, ...]] = {}
    while True:
        polled = time.monotonic()
        deadline_passed = deps.clock() > settle_by
        narrowed = None
        if st is not None and len(st.pending) <= TARGETED_POLL_MAX:
            narrowed = waves.recheck(st, _read_each(deps.fleet, st.pending), planned, ro.rollout_id,
                                     deadline_passed=deadline_passed)
        if narrowed is None:
            st, planned = _plan_status(deps, catalog, request, new_base, ro, wave, scope, cache, deadline_passed)
        else:
            st = narrowed
        # Re-planning a large fleet takes a while: wait at least POLL_COST_RATIO times as long before
        # the next one, so polling stays a small share of the step's time and of the read quota. A
        # read of the few still pending is cheap whatever came before it.
        pause = cfg.rollout.poll_interval_s
        if narrowed is not None or len(st.pending) > TARGETED_POLL_MAX:
            pause = max(pause, POLL_COST_RATIO * (time.monotonic() - polled))
        if st.settled or time.monotonic() + pause > deadline:
            return st
        lease.renew()
        time.sleep(pause)


def _plan_status(deps: Deps, catalog: Catalog, request: RollRequest, new_base: ImageRef, ro: Rollout,
                 wave: list[str], scope: engine.Scope, cache: _StepCache,
                 deadline_passed: bool) -> tuple[waves.WaveStatus, dict[str, tuple[str, ...]]]:
    """The wave's status from a re-plan of the fleet, and the pending members' images as planned."""
    plan = engine.build_plan(deps.config, deps.fleet, catalog, request, new_base, scope=scope, quiet=True)
    views = {sp.service.name: sp.service for sp in plan.services}
    members = set(wave)
    outdated = {sp.service.name for sp in plan.to_roll}
    # A service that cannot be sent (refused rebase, unsigned under `require`) has failed now,
    # not at the deadline.
    refused = {sp.service.name: r for sp in plan.to_roll if sp.service.name in members
               and isinstance(r := _targets(deps, sp, new_base, ro, cache), str)}
    st = waves.status(wave, views, ro.rollout_id, outdated, deadline_passed=deadline_passed, refused=refused)
    return st, {name: views[name].images for name in st.pending if name in views}


def _read_each(fleet: Fleet, names: list[str]) -> dict[str, ServiceView]:
    """The named services as they are now; a service that cannot be read is left out."""
    out = {}
    for name in names:
        try:
            out[name] = fleet.get_service(name)
        except FleetError:
            pass
    return out
