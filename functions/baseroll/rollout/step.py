"""The coordinator: walk a rollout one step at a time.

A step ("wave W from position C") re-plans from the live fleet (membership is stable, see
`waves`), releases that wave's tasks to `baseroll-tasks` at the Admin API write quota of each
project × region, waits for the wave to settle, checks the failure budget, and hands over to the
next step by publishing it. Every step fits in one invocation (`invocation_budget_s`); a step that
runs out of time publishes its own continuation. The rollout record makes duplicate step
deliveries harmless: a step already done is dropped, a step another invocation holds is
redelivered later.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from baseroll import log
from baseroll.contracts import topics
from baseroll.contracts.messages import Rollout, Step, Task
from baseroll.contracts.records import TERMINAL, RolloutRecord
from baseroll.contracts.requests import parse_filter
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.view import Fleet, FleetError, ServiceView
from baseroll.images import signatures
from baseroll.images.catalog import Catalog
from baseroll.images.refs import ImageRef, parse
from baseroll.rollout import bus as bus_mod
from baseroll.rollout import pacing, waves
from baseroll.rollout import pipeline as engine
from baseroll.rollout.deps import Busy, Deps
from baseroll.rollout.pipeline import current_digest
from baseroll.rollout.plan import Plan, RebaseJob, ServicePlan, members

CLAIM_SETTLE_S = 0.3  # let a concurrent claimant's write land before re-reading the record
HEARTBEAT_S = 10.0  # a running step renews its hold on the rollout this often
LEASE_S = 3 * HEARTBEAT_S + 15.0  # a step silent this long is taken to be dead (crashed invocation)
SETTLE_GRACE_S = 60.0
POLL_COST_RATIO = 3.0
TARGETED_POLL_MAX = 64  # a wave's last few pending services are read one by one, not by re-planning the fleet


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
    all_waves = waves.assign(members(plan, fleet_now, ro.rollout_id), cfg.rollout.waves,
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
