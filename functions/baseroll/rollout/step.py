"""The coordinator: walk a rollout one step at a time.

A step ("wave W from position C") re-plans from the live fleet (membership is stable, see
`waves`), releases that wave's tasks to `baseroll-tasks` at the Admin API write quota of each
project × region, waits for the wave to settle, checks the failure budget, and hands over to the
next step by publishing it. Every step fits in one invocation (`invocation_budget_s`); a step that
runs out of time publishes its own continuation. How a step holds its rollout record (claim,
lease, finish) is in `rollout.lease`; every wait goes through `deps.clock`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from baseroll import log
from baseroll.contracts import topics
from baseroll.contracts.messages import Rollout, Step, Task
from baseroll.contracts.records import RolloutRecord
from baseroll.contracts.requests import parse_filter
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.view import Fleet, FleetError, ServiceView
from baseroll.images import signatures
from baseroll.images.catalog import Catalog
from baseroll.images.refs import ImageRef, parse
from baseroll.images.registry import RegistryError
from baseroll.images.registry.transport import RETRYABLE
from baseroll.rollout import bus as bus_mod
from baseroll.rollout import lease, pacing, policy, waves
from baseroll.rollout import pipeline as engine
from baseroll.rollout.deps import Deps
from baseroll.rollout.pipeline import current_digest
from baseroll.rollout.plan import Plan, RebaseJob, ServicePlan, members

SETTLE_GRACE_S = 60.0
POLL_COST_RATIO = 3.0
TARGETED_POLL_MAX = 64  # a wave's last few pending services are read one by one, not by re-planning the fleet


@dataclass
class _StepCache:
    """What one step learns once: rebase results and signature verdicts (a later step asks again,
    so a signature added meanwhile is seen)."""

    rebased: dict[RebaseJob, ImageRef | str] = field(default_factory=dict)
    signature: dict[ImageRef, str | None] = field(default_factory=dict)


@dataclass
class _Run:
    """One invocation's work on one step: what it plans against, its hold on the record, its deadline."""

    deps: Deps
    rec: RolloutRecord
    ro: Rollout
    request: RollRequest
    new_base: ImageRef
    scope: engine.Scope
    catalog: Catalog
    hold: lease.Lease
    deadline: float  # on the monotonic clock
    cache: _StepCache = field(default_factory=_StepCache)

    def plan(self) -> Plan:
        return engine.build_plan(self.deps.config, self.deps.fleet, self.catalog, self.request, self.new_base,
                                 scope=self.scope, quiet=True)


def handle_step(deps: Deps, step: Step, delivery: str) -> None:
    rec = lease.claim(deps, step, delivery)
    if rec is None:
        return
    try:
        _run_step(deps, rec, step, delivery)
    except lease.Stopped:
        log.info("step.stopped", rollout_id=rec.rollout_id, seq=step.seq, status="aborted")
    except lease.Busy:
        raise  # another invocation holds the step now: leave its hold alone
    except Exception:
        lease.give_back(deps, rec)
        raise


def _run_step(deps: Deps, rec: RolloutRecord, step: Step, delivery: str) -> None:
    ro = step.rollout
    hold = lease.Lease(deps, rec)
    deadline = deps.clock.monotonic() + deps.config.rollout.invocation_budget_s
    track_image = parse(ro.track_image)
    current = current_digest(deps.registry, ro)
    if current != ro.base_digest:
        log.notice("rollout.superseded", rollout_id=ro.rollout_id, base_digest=ro.base_digest, now=current)
        lease.finish(deps, rec, step, None, status="superseded", reason=f"{track_image} moved to {current}")
        return
    request = RollRequest(ro.kind, track_image, ro.base_digest, "step", delivery)  # type: ignore[arg-type]
    run = _Run(deps, rec, ro, request, track_image.at(ro.base_digest), parse_filter(dict(ro.scope)).matches,
               deps.catalog(), hold, deadline)
    plan = run.plan()
    fleet_now = [sp.service for sp in plan.services]
    all_waves = waves.assign(members(plan, fleet_now, ro.rollout_id), deps.config.rollout.waves,
                             cohort_label=deps.config.labels.cohort)
    if step.wave >= len(all_waves):
        log.notice("rollout.finished", rollout_id=ro.rollout_id, waves=rec.waves)
        lease.finish(deps, rec, step, None, status="finished", wave=step.wave)
        return
    wave = all_waves[step.wave]
    if step.cursor < len(wave):
        cursor = _release(run, plan, step, wave)
        if cursor < len(wave):  # out of time: continue in a fresh invocation
            lease.finish(deps, rec, step, Step(ro, step.wave, cursor, None, step.seq + 1, step.halted_failures))
            return
    released_at = step.released_at or deps.clock.now()  # a continuation keeps its wave's release time
    status = _await_wave(run, wave, released_at)
    if not status.settled:
        log.info("wave.waiting", rollout_id=ro.rollout_id, wave=step.wave, pending=len(status.pending))
        lease.finish(deps, rec, step, Step(ro, step.wave, len(wave), released_at, step.seq + 1, step.halted_failures))
        return
    _settled(run, step, wave, status, len(all_waves))


def _settled(run: _Run, step: Step, wave: list[str], status: waves.WaveStatus, wave_count: int) -> None:
    """The wave is over: halt on its failure budget, finish after the last wave, else hand over to the next."""
    deps, rec, ro = run.deps, run.rec, run.ro
    counts = {"wave": step.wave, "size": len(wave), "done": len(status.done), "failed": len(status.failed),
              "skipped": len(status.skipped)}
    log.notice("wave.settled", rollout_id=ro.rollout_id, **counts, failed_services=status.failed[:50])
    wave_log = [w for w in rec.waves if w.get("wave") != step.wave] + [counts]
    failures = max(0, len(status.failed) - step.halted_failures)
    if deps.config.rollout.failure_budget.exceeded(failures, len(wave)):
        reason = f"wave {step.wave}: {len(status.failed)} of {len(wave)} failed, over the failure budget"
        log.error("rollout.halted", rollout_id=ro.rollout_id, reason=reason, failed_services=status.failed[:50],
                  untouched_waves=wave_count - step.wave - 1)
        lease.finish(deps, rec, step, None, status="halted", reason=reason, waves=wave_log, wave=step.wave)
        return
    if step.wave + 1 >= wave_count:
        log.notice("rollout.finished", rollout_id=ro.rollout_id, waves=wave_log)
        lease.finish(deps, rec, step, None, status="finished", waves=wave_log, wave=step.wave)
        return
    lease.finish(deps, rec, step, Step(ro, step.wave + 1, 0, None, step.seq + 1), waves=wave_log, wave=step.wave + 1)


def _release(run: _Run, plan: Plan, step: Step, wave: list[str]) -> int:
    """Publish tasks for wave[step.cursor:] at the write quota; return the new cursor."""
    deps, cfg, clock = run.deps, run.deps.config, run.deps.clock
    to_roll = {sp.service.name: sp for sp in plan.to_roll}
    timed = pacing.schedule(wave[step.cursor:], lambda n: (n.split("/")[1], n.split("/")[3]),
                            lambda loc: cfg.rollout.quota_for(loc[1]), start=clock.monotonic(),
                            burst=cfg.rollout.concurrency)
    released: set[str] = set()
    batch: list[Task] = []

    def flush() -> None:
        if batch:
            bus_mod.send(deps.bus, topics.TASKS, *batch)
            released.update(t.service for t in batch)
            batch.clear()

    for at, name in timed:
        if at > run.deadline - cfg.rollout.poll_interval_s:
            break
        if at > clock.monotonic():
            flush()
            run.hold.renew()
            clock.sleep(max(0.0, at - clock.monotonic()))
        sp = to_roll.get(name)
        if sp is None:
            released.add(name)  # already rolled, or no longer needs it: nothing to send
            continue
        targets = _targets(run, sp)
        if isinstance(targets, str):
            log.warning("service.skipped", service=name, reason=targets)
            released.add(name)
            continue
        images, uris = targets
        batch.append(Task(run.ro, name, step.wave, sp.service.images, {str(i): v for i, v in images.items()},
                          {str(i): v for i, v in uris.items()}))
    flush()
    # The cursor only moves past a prefix that is entirely released.
    cursor = step.cursor
    while cursor < len(wave) and wave[cursor] in released:
        cursor += 1
    log.info("wave.released", rollout_id=run.ro.rollout_id, wave=step.wave, released=len(released),
             cursor=cursor, size=len(wave))
    return cursor


def _targets(run: _Run, sp: ServicePlan) -> tuple[dict[int, str], dict[int, str]] | str:
    """What a planned service goes to, or why it cannot go: a refused rebase, or (policy `require`)
    a rebased image nobody has signed yet."""
    cache = run.cache
    missing = [c.job for c in sp.containers.values() if c.job is not None and c.job not in cache.rebased]
    cache.rebased.update(engine.rebase_jobs_for(missing, run.new_base, run.deps.rebase))
    for change in sp.containers.values():
        result = cache.rebased.get(change.job) if change.job is not None else None
        if change.job is not None and isinstance(result, ImageRef):
            problem = _signature_check(run, change.job, result)
            if problem:
                return problem
    return engine.targets_for(sp, cache.rebased)


def _signature_check(run: _Run, job: RebaseJob, image: ImageRef) -> str | None:
    """None when the rebased image may be deployed; else why not. Logs once per image and step."""
    deps, ro, cache = run.deps, run.ro, run.cache
    signing = deps.config.signatures
    if image not in cache.signature:
        was_signed, signed = _signed(run, job.app), _signed(run, image)
        if isinstance(was_signed, str) or isinstance(signed, str):
            # A registry that refuses the signature lookup fails this image only (docs/RELIABILITY.md).
            why = was_signed if isinstance(was_signed, str) else signed
            log.warning("signature.unreadable", rebased=str(image), reason=why, rollout_id=ro.rollout_id)
            cache.signature[image] = why if signing.policy == "require" else None
            return cache.signature[image]
        if was_signed and not signed:
            log.warning("signature.not_carried", app=str(job.app), rebased=str(image), rollout_id=ro.rollout_id,
                        policy=signing.policy)
        cache.signature[image] = policy.signature_verdict(image, signed, signing.policy)
        if cache.signature[image] and signing.request_topic:
            deps.bus.publish(signing.request_topic, [(signatures.sign_request(image, job.app, ro.rollout_id),
                                                      {"schema": signatures.SIGN_REQUEST_SCHEMA})])
            log.notice("signature.requested", image=str(image), topic=signing.request_topic, rollout_id=ro.rollout_id)
    return cache.signature[image]


def _signed(run: _Run, image: ImageRef) -> bool | str:
    """Whether `image` has a signature, or why that cannot be known. A flaky registry (no answer, 408,
    429, 5xx) raises, so the step is redelivered; a refusal is this image's problem alone."""
    try:
        return signatures.is_signed(run.deps.registry, image)
    except RegistryError as exc:
        if exc.status is None or exc.status in RETRYABLE:
            raise
        return f"signature of {image} could not be read: {exc}"


def _await_wave(run: _Run, wave: list[str], released_at: float) -> waves.WaveStatus:
    deps, clock = run.deps, run.deps.clock
    cfg = deps.config
    settle_by = released_at + cfg.rollout.ready_timeout_s * 2 + SETTLE_GRACE_S  # an update and its rollback
    st: waves.WaveStatus | None = None
    planned: dict[str, tuple[str, ...]] = {}
    while True:
        polled = clock.monotonic()
        deadline_passed = clock.now() > settle_by
        narrowed = None
        if st is not None and len(st.pending) <= TARGETED_POLL_MAX:
            narrowed = waves.recheck(st, _read_each(deps.fleet, st.pending), planned, run.ro.rollout_id,
                                     deadline_passed=deadline_passed)
        if narrowed is None:
            st, planned = _plan_status(run, wave, deadline_passed)
        else:
            st = narrowed
        # Re-planning a large fleet takes a while: wait at least POLL_COST_RATIO times as long before
        # the next one, so polling stays a small share of the step's time and of the read quota. A
        # read of the few still pending is cheap whatever came before it.
        pause = cfg.rollout.poll_interval_s
        if narrowed is not None or len(st.pending) > TARGETED_POLL_MAX:
            pause = max(pause, POLL_COST_RATIO * (clock.monotonic() - polled))
        if st.settled or clock.monotonic() + pause > run.deadline:
            return st
        run.hold.renew()
        clock.sleep(pause)


def _plan_status(run: _Run, wave: list[str],
                 deadline_passed: bool) -> tuple[waves.WaveStatus, dict[str, tuple[str, ...]]]:
    """The wave's status from a re-plan of the fleet, and the pending members' images as planned."""
    plan = run.plan()
    views = {sp.service.name: sp.service for sp in plan.services}
    in_wave = set(wave)
    outdated = {sp.service.name for sp in plan.to_roll}
    # A service that cannot be sent (refused rebase, unsigned under `require`) has failed now,
    # not at the deadline.
    refused = {sp.service.name: r for sp in plan.to_roll if sp.service.name in in_wave
               and isinstance(r := _targets(run, sp), str)}
    st = waves.status(wave, views, run.ro.rollout_id, outdated, deadline_passed=deadline_passed, refused=refused)
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
