"""The coordinator: walk a rollout one step at a time.

A step ("wave W from position C") reads its wave from the rollout's stored wave plan
(`rollout.stored_plan`; planned once, so a step never lists the fleet), releases that wave's tasks to
`baseroll-tasks` at the Admin API write quota of each project × region, waits for the wave to settle
on the results its tasks report (recorded beside the rollout record by `record_result`) and on reads
of just its members that stay silent, checks the failure budget, and hands over to the next step by
publishing it. Every step fits in one invocation (`invocation_budget_s`); a step that runs out of
time publishes its own continuation. How a step holds its rollout record (claim, lease, finish) is in
`rollout.lease`; every wait goes through `deps.clock`.

The points a step passes, in order: `_wave_of` (the plan read, or made), the approval gate
(`rollout.holds`: held until an operator approves), `_release_wave` (the wave released, members whose
maintenance window is closed held until it opens), `_await_wave` (settled, or out of time), `_settled`
(halted over its budget, finished after the last wave, or handed over to the next wave). Each point
that changes the record reports a rollout event (`contracts.events`) once its write is done.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from baseroll import log
from baseroll.config import RolloutSettings
from baseroll.contracts import events as E
from baseroll.contracts import ledger, topics
from baseroll.contracts.messages import Result, Rollout, Step, Task
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
from baseroll.rollout import (
    events,
    holds,
    lease,
    pacing,
    policy,
    stored_plan,
    waves,
    windows,
)
from baseroll.rollout import pipeline as engine
from baseroll.rollout.deps import Deps
from baseroll.rollout.pipeline import current_digest
from baseroll.rollout.waveplan import Header, Member

SETTLE_GRACE_S = 60.0
TARGETED_POLL_MAX = 64  # members read one by one per poll (those no result will tell about, or overdue)
MAX_WINDOW_WAITS = 100  # windows a step waits for to open in one invocation (its budget bounds it first)
SIGNATURE_WORKERS = 8  # rebased images asked about at once
RESULT_LAG_S = 5.0  # a result may be stamped this long before it can be read: each query reaches back so far


@dataclass
class _StepCache:
    """What one step learns once: signature verdicts (a later step asks again, so a signature added
    meanwhile is seen)."""

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


def record_result(deps: Deps, result: Result) -> None:
    """Keep a worker's result beside its rollout record, where the step waiting on its wave reads it.
    Idempotent: a redelivered result overwrites its own document (docs/STORE.md#task-results)."""
    deps.records.record_result(result.rollout.rollout_id, result.wave, result.service, {
        "service": result.service, "wave": result.wave, "outcome": result.outcome, "reason": result.reason[:500],
        "recorded": deps.clock.now()})


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
        if lease.finish(deps, rec, step, None, status="superseded", reason=f"{track_image} moved to {current}"):
            events.publish(deps.bus, E.superseded(ro, at=deps.clock.now(), seq=step.seq, wave=step.wave,
                                                  now_digest=current))
        return
    request = RollRequest(ro.kind, track_image, ro.base_digest, "step", delivery)  # type: ignore[arg-type]
    run = _Run(deps, rec, ro, request, track_image.at(ro.base_digest), parse_filter(dict(ro.scope)).matches,
               deps.catalog(), hold, deadline)
    header, wave = _wave_of(run, step)
    step = dataclasses.replace(step, plan=header.seq)  # every step after this one walks the same plan
    if step.wave >= len(header.sizes):
        _finish(run, step, rec.waves)
        return
    if step.cursor == 0 and not step.released_at and holds.held_for_approval(deps, rec, step, header):
        return
    if step.cursor < len(wave):
        cursor = _release_wave(run, step, wave)
        if cursor is None:  # parked until a maintenance window opens, or halted
            return
        if cursor < len(wave):  # out of time: continue in a fresh invocation
            lease.finish(deps, rec, step, dataclasses.replace(step, cursor=cursor, released_at=None, seq=step.seq + 1))
            return
    released_at = step.released_at or deps.clock.now()  # a continuation keeps its wave's release time
    status = _await_wave(run, header, step.wave, wave, released_at)
    if not status.settled:
        log.info("wave.waiting", rollout_id=ro.rollout_id, wave=step.wave, pending=len(status.pending))
        lease.finish(deps, rec, step, dataclasses.replace(step, cursor=len(wave), released_at=released_at,
                                                          seq=step.seq + 1))
        return
    _settled(run, step, wave, status, len(header.sizes))


def _wave_of(run: _Run, step: Step) -> tuple[Header, list[Member]]:
    """The step's wave from the stored plan it names; a step that names none (a restarted rollout) or
    finds it incomplete plans the fleet now and stores that plan under its own seq."""
    deps, ro = run.deps, run.ro
    if step.plan:
        stored = stored_plan.load(deps, ro.rollout_id, step.plan, step.wave)
        if stored is not None:
            return stored
        log.warning("plan.missing", rollout_id=ro.rollout_id, plan=step.plan, wave=step.wave)
    plan = engine.build_plan(deps.config, deps.fleet, run.catalog, run.request, run.new_base, scope=run.scope,
                             quiet=True)
    header, assigned = stored_plan.make(deps, plan, ro.rollout_id, step.seq, run.new_base)
    return header, assigned[step.wave] if step.wave < len(assigned) else []


def _settled(run: _Run, step: Step, wave: list[Member], status: waves.WaveStatus, wave_count: int) -> None:
    """The wave is over: halt on its failure budget, finish after the last wave, else hand over to the next."""
    deps, rec, ro = run.deps, run.rec, run.ro
    counts = {"wave": step.wave, "size": len(wave), "done": len(status.done), "failed": len(status.failed),
              "skipped": len(status.skipped)}
    log.notice("wave.settled", rollout_id=ro.rollout_id, **counts, failed_services=status.failed[:50])
    wave_log = [w for w in rec.waves if w.get("wave") != step.wave] + [counts]
    failures = max(0, len(status.failed) - step.halted_failures)
    settled = E.wave_settled(ro, at=deps.clock.now(), seq=step.seq, counts=counts)
    if deps.config.rollout.failure_budget.exceeded(failures, len(wave)):
        reason = f"wave {step.wave}: {len(status.failed)} of {len(wave)} failed, over the failure budget"
        log.error("rollout.halted", rollout_id=ro.rollout_id, reason=reason, failed_services=status.failed[:50],
                  untouched_waves=wave_count - step.wave - 1)
        if lease.finish(deps, rec, step, None, status="halted", reason=reason, waves=wave_log, wave=step.wave):
            events.publish(deps.bus, settled, E.halted(ro, at=deps.clock.now(), seq=step.seq, wave=step.wave,
                                                       reason=reason, failures=_failure_reasons(run, step, wave,
                                                                                                status.failed)))
        return
    if step.wave + 1 >= wave_count:
        _finish(run, step, wave_log, settled)
        return
    nxt = Step(ro, step.wave + 1, 0, None, step.seq + 1, plan=step.plan)
    if lease.finish(deps, rec, step, nxt, waves=wave_log, wave=step.wave + 1):
        events.publish(deps.bus, settled)


def _finish(run: _Run, step: Step, wave_log: list[dict], *before: E.RolloutEvent) -> None:
    """The last wave is over: the rollout finished (reported after `before`, the last wave's settling)."""
    log.notice("rollout.finished", rollout_id=run.ro.rollout_id, waves=wave_log)
    if lease.finish(run.deps, run.rec, step, None, status="finished", waves=wave_log, wave=step.wave):
        events.publish(run.deps.bus, *before, E.finished(run.ro, at=run.deps.clock.now(), seq=step.seq,
                                                         waves=wave_log))


def _failure_reasons(run: _Run, step: Step, wave: list[Member], failed: list[str]) -> dict[str, str]:
    """Why each of the first failing members failed, for a `halted` event: its task's result, else
    why it was refused, else the ledger's reason on the service itself."""
    names = set(failed[:E.MAX_SERVICES])
    # One document per member and wave, so each holds its latest result (docs/STORE.md#task-results).
    reasons = {str(d.get("service")): str(d.get("reason", "")) for d in
               run.deps.records.results(run.ro.rollout_id, step.wave, 0.0) if d.get("service") in names}
    refused = {m.service: m.refused for m in wave if m.service in names and m.refused}
    out = {}
    for name in sorted(names):
        why = reasons.get(name) or refused.get(name)
        if not why:
            svc = _read_each(run.deps.fleet, [name])[name]
            why = (svc.annotations.get(ledger.REASON) if svc is not None else "") or "no result in time"
        out[name] = why
    return out


def _release_wave(run: _Run, step: Step, wave: list[Member]) -> int | None:
    """Release wave[step.cursor:]; a member whose maintenance window is closed is held while the
    members behind it go, and the step waits for its window when it opens within this invocation.
    The cursor reached (len(wave): all released), or None when the rollout was parked until a window
    opens (or halted: none opens)."""
    sent: set[str] = set()  # released by this invocation: never sent twice by it
    waited: set[str] = set()
    cursor = step.cursor
    for _ in range(MAX_WINDOW_WAITS):
        out = _release(run, dataclasses.replace(step, cursor=cursor), wave, sent)
        cursor = out.cursor
        waited.update(m.service for m in out.held)
        if not out.held or out.out_of_time:
            break
        if not holds.wait_for_window(run.deps, run.rec, step, run.hold, run.deadline, out.held):
            return None
    if cursor >= len(wave):
        events.publish(run.deps.bus, E.wave_released(run.ro, at=run.deps.clock.now(), seq=step.seq, wave=step.wave,
                                                     size=len(wave), held=len(waited)))
    return cursor


@dataclass(frozen=True)
class _Released:
    cursor: int  # past the prefix of the wave that is entirely released
    held: list[Member]  # waiting for their maintenance window
    out_of_time: bool  # stopped before every open member was released


def _release(run: _Run, step: Step, wave: list[Member], sent: set[str]) -> _Released:
    """Publish tasks for the members of wave[step.cursor:] not in `sent` (adding them) at the write
    quota, except those whose maintenance window is closed now."""
    deps, cfg, clock = run.deps, run.deps.config, run.deps.clock
    rules = cfg.rollout.windows
    todo = [m for m in wave[step.cursor:] if m.service not in sent]
    # Only a member with a task to send waits for its window: one already touched or refused is not written.
    held = [m for m in todo if m.sendable and not _window_open(rules, m, clock.now())]
    closed = {m.service for m in held}
    timed = pacing.schedule([m for m in todo if m.service not in closed],
                            lambda m: (m.service.split("/")[1], m.service.split("/")[3]),
                            lambda loc: cfg.rollout.quota_for(loc[1]), start=clock.monotonic(),
                            burst=cfg.rollout.concurrency)
    _ask_signatures(run, [m for m in todo if m.sendable and m.service not in closed])
    released = sent
    out_of_time = False
    batch: list[Task] = []

    def flush() -> None:
        if batch:
            bus_mod.send(deps.bus, topics.TASKS, *batch)
            released.update(t.service for t in batch)
            batch.clear()

    for at, member in timed:
        if at > run.deadline - cfg.rollout.poll_interval_s:
            out_of_time = True
            break
        if at > clock.monotonic():
            flush()
            run.hold.renew()
            clock.sleep(max(0.0, at - clock.monotonic()))
        if member.sendable and not _window_open(rules, member, clock.now()):  # closed while it waited its turn
            held.append(member)
            continue
        problem = member.refused or (_signature_problem(run, member) if member.sendable else None)
        if not member.sendable or problem:
            if problem:
                log.warning("service.skipped", service=member.service, reason=problem)
            released.add(member.service)  # nothing to send: already touched by this rollout, or refused
            continue
        batch.append(Task(run.ro, member.service, step.wave, member.expected, dict(member.targets),
                          dict(member.base_uris)))
    flush()
    # The cursor only moves past a prefix that is entirely released.
    cursor = step.cursor
    while cursor < len(wave) and wave[cursor].service in released:
        cursor += 1
    log.info("wave.released", rollout_id=run.ro.rollout_id, wave=step.wave, released=len(released),
             cursor=cursor, size=len(wave), held=len(held))
    return _Released(cursor, held, out_of_time)


def _window_open(rules: tuple, member: Member, now: float) -> bool:
    """May `member` be written now (`rollout.windows`; no rules: always)."""
    return not rules or windows.is_open(rules, windows.place(member.service, member.labels), windows.at(now))


def _signature_problem(run: _Run, member: Member) -> str | None:
    """Why a member's rebased images may not be deployed yet (policy `require`: nobody signed one)."""
    for index, app in member.apps.items():
        problem = _signature_check(run, parse(app), parse(member.targets[index]))
        if problem:
            return problem
    return None


def _ask_signatures(run: _Run, members: list[Member]) -> None:
    """Ask the registry about the members' rebased images all at once, before their tasks are paced
    out: each is a few lookups, and a wave's first tasks would otherwise wait on every one in turn."""
    pairs = {(parse(app), parse(m.targets[index])) for m in members for index, app in m.apps.items()}
    todo = [(app, image) for app, image in pairs if image not in run.cache.signature]
    if len(todo) > 1:
        with ThreadPoolExecutor(max_workers=min(SIGNATURE_WORKERS, len(todo))) as pool:
            list(pool.map(lambda pair: _signature_check(run, *pair), todo))


def _signature_check(run: _Run, app: ImageRef, image: ImageRef) -> str | None:
    """None when `image` (rebased from `app`) may be deployed; else why not. Logs once per image and step."""
    deps, ro, cache = run.deps, run.ro, run.cache
    signing = deps.config.signatures
    if image not in cache.signature:
        was_signed, signed = _signed(run, app), _signed(run, image)
        if isinstance(was_signed, str) or isinstance(signed, str):
            # A registry that refuses the signature lookup fails this image only (docs/RELIABILITY.md).
            why = was_signed if isinstance(was_signed, str) else signed
            log.warning("signature.unreadable", rebased=str(image), reason=why, rollout_id=ro.rollout_id)
            cache.signature[image] = why if signing.policy == "require" else None
            return cache.signature[image]
        if was_signed and not signed:
            log.warning("signature.not_carried", app=str(app), rebased=str(image), rollout_id=ro.rollout_id,
                        policy=signing.policy)
        cache.signature[image] = policy.signature_verdict(image, signed, signing.policy)
        if cache.signature[image] and signing.request_topic:
            deps.bus.publish(signing.request_topic, [(signatures.sign_request(image, app, ro.rollout_id),
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


def _await_wave(run: _Run, header: Header, wave_no: int, wave: list[Member], released_at: float) -> waves.WaveStatus:
    """Poll the wave's results (one query for what was recorded since the last) until every member is
    settled or the step runs out of time. A member no result will tell about (not sent by this plan),
    or whose result is overdue, is read by itself; nothing lists the fleet."""
    deps, clock, rid = run.deps, run.deps.clock, run.ro.rollout_id
    cfg = deps.config.rollout
    settle_by = released_at + settle_after_s(cfg)
    overdue_at = released_at + overdue_after_s(cfg)
    names = [m.service for m in wave]
    expected = {m.service: m.expected for m in wave}
    silent = {m.service for m in wave if m.verdict == waves.PENDING}  # touched before this plan: no task, no result
    known = _known_at_plan(run, wave)
    since = header.planned_at
    while True:
        asked = clock.now()
        for doc in deps.records.results(rid, wave_no, since):
            state = waves.result_state(str(doc.get("outcome", "")), str(doc.get("reason", "")))
            if state is not None and doc.get("service") in expected and doc.get("recorded", 0.0) >= header.planned_at:
                known[doc["service"]] = state
        since = max(header.planned_at, asked - RESULT_LAG_S)
        deadline_passed = clock.now() > settle_by
        unknown = [n for n in names if n not in known]
        to_read = _to_read(unknown, silent, overdue=clock.now() > overdue_at, deadline_passed=deadline_passed)
        for name, svc in _read_each(deps.fleet, to_read).items():
            state = waves.judge(svc, expected[name], rid, deadline_passed=deadline_passed)
            if state != waves.PENDING:
                known[name] = state
        st = waves.settle(names, known, deadline_passed=deadline_passed)
        if st.settled or clock.monotonic() + cfg.poll_interval_s > run.deadline:
            return st
        run.hold.renew()
        clock.sleep(cfg.poll_interval_s)


def settle_after_s(cfg: RolloutSettings) -> float:
    """How long after its release a wave waits for its members at most: each may update and roll
    back, each write gated, with the longest check (a verification) between them."""
    return 2 * cfg.ready_timeout_s + cfg.check_budget_s + SETTLE_GRACE_S


def overdue_after_s(cfg: RolloutSettings) -> float:
    """When a member's result should be in, if its update passed: its gate and its check."""
    return cfg.ready_timeout_s + cfg.check_budget_s + SETTLE_GRACE_S


def _known_at_plan(run: _Run, wave: list[Member]) -> dict[str, str]:
    """Members settled before any result: touched by this rollout before the plan and settled then,
    or refused (a rebase the registry refused, or unsigned under `require`): they fail now."""
    known = {m.service: m.verdict for m in wave if m.verdict in (waves.DONE, waves.FAILED, waves.SKIPPED)}
    for m in wave:
        if m.refused or (m.sendable and _signature_problem(run, m)):
            known[m.service] = waves.FAILED
    return known


def _to_read(unknown: list[str], silent: set[str], *, overdue: bool, deadline_passed: bool) -> list[str]:
    """Which unsettled members to read one by one this poll: all of them once the settle deadline
    passed (their last chance to be found done); else the silent ones, and the overdue tail."""
    if deadline_passed:
        return unknown
    waiting = [n for n in unknown if n not in silent]
    quiet = [n for n in unknown if n in silent][:TARGETED_POLL_MAX]
    return quiet + (waiting if overdue and len(waiting) <= TARGETED_POLL_MAX else [])


def _read_each(fleet: Fleet, names: list[str]) -> dict[str, ServiceView | None]:
    """The named services as they are now; None for a service that is gone."""
    out: dict[str, ServiceView | None] = {}
    for name in names:
        try:
            out[name] = fleet.get_service(name)
        except FleetError:
            out[name] = None
    return out
