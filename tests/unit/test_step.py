"""The coordinator step (`rollout.step.handle_step`) against in-memory fakes and a FakeClock.

Each test starts a rollout with the planner, then runs the step it published. Workers are the real
`rollout.worker` over the FakeFleet, delivered tasks only while the step sleeps (`FakeClock.on_sleep`),
the way Pub/Sub delivers them to another function while the coordinator waits. Nothing sleeps for real.
"""
from __future__ import annotations

import base64
import dataclasses
import threading
import time
from typing import Callable

import pytest
from baseroll.config import FailureBudget, SigningPolicy
from baseroll.contracts import messages, topics
from baseroll.contracts.messages import Result, Step, Task
from baseroll.contracts.roll import RollRequest
from baseroll.edge import handlers
from baseroll.fleet.fake import Verdict
from baseroll.fleet.view import ServiceView
from baseroll.images import refs, signatures
from baseroll.images.registry import RegistryError
from baseroll.rollout import fakes, lease, planner, step, worker

APP = f"{fakes.REGISTRY}/apps/shop:prod"
TASKS, RESULTS = topics.TASKS, topics.RESULTS


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core waits only through the injected clock."""
    def refuse(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) called: the core must sleep on deps.clock")
    monkeypatch.setattr(time, "sleep", refuse)


@dataclasses.dataclass
class Rig:
    w: fakes.FakeWorld
    rollout_id: str
    new_image: str  # the app build the rollout deploys, pinned

    @property
    def record(self):
        return self.w.records.get(self.rollout_id)

    def steps(self) -> list[Step]:
        return self.w.bus.steps(RESULTS)

    def workers_run_while_the_step_waits(self) -> None:
        self.w.clock.on_sleep.append(lambda now: self.w.bus.deliver(TASKS))


def rig(services: int = 4, *, workers: bool = True, results: bool = True, **rollout: object) -> Rig:
    """An app rollout of `services` services (all in one location), started: its first step is on the bus."""
    rollout.setdefault("waves", (0.5, 1.0))
    w = fakes.FakeWorld(fakes.config(**rollout))
    old = w.registry.push(APP, [fakes.layer("app-v1")])
    new = w.registry.push(APP, [fakes.layer("app-v2")])
    for i in range(services):
        w.fleet.add(ServiceView(f"projects/tenants-aaaaa/locations/us-east1/services/shop{i}",
                                (str(old.pinned()),), labels={"baseroll-app-tag": "prod"}))
    # A task for a service deleted meanwhile fails in its worker; here it is simply lost. A worker's
    # result is recorded as `on_roll_result` records it, unless the test loses every result.

    def work(task: Task) -> None:
        if task.service in w.fleet.services:
            result = worker.roll_service(w.deps, task)
            if results:
                step.record_result(w.deps, result)

    w.bus.subscribe(TASKS, work)
    out = planner.start(w.deps, RollRequest("app", refs.parse(APP), None, "request", "e-1"))
    assert out["status"] == "running" and out["to_roll"] == services
    r = Rig(w, out["rollout_id"], str(new.pinned()))
    if workers:
        r.workers_run_while_the_step_waits()
    return r


def first_step(r: Rig) -> Step:
    (s,) = r.steps()
    assert (s.wave, s.cursor, s.seq) == (0, 0, 1)
    return s


# ------------------------------------------------------------------------------------------ outcomes


def _fail_every_revision(r: Rig) -> None:
    r.w.fleet.verdicts[r.new_image] = Verdict(ready=False)


def _tag_moved(r: Rig) -> None:
    r.w.registry.push(APP, [fakes.layer("app-v3")])


@dataclasses.dataclass
class Case:
    name: str
    rollout: dict = dataclasses.field(default_factory=dict)
    setup: Callable[[Rig], None] = lambda r: None
    step: Callable[[Step], Step] = lambda s: s
    status: str = "running"
    reason: str = ""
    wave: int = 0
    next_step: tuple | None = None  # (wave, cursor, seq, halted_failures) of the step handed over
    tasks: int = 2
    waves_log: list | None = None
    workers: bool = True


OUTCOMES = [
    Case("wave-settles", next_step=(1, 0, 2, 0), wave=1,
         waves_log=[{"wave": 0, "size": 2, "done": 2, "failed": 0, "skipped": 0}]),
    Case("last-wave-settles", rollout={"waves": (1.0,)}, status="finished", tasks=4,
         waves_log=[{"wave": 0, "size": 4, "done": 4, "failed": 0, "skipped": 0}]),
    Case("budget-exceeded", setup=_fail_every_revision, status="halted",
         reason="wave 0: 2 of 2 failed, over the failure budget",
         waves_log=[{"wave": 0, "size": 2, "done": 0, "failed": 2, "skipped": 0}]),
    Case("failures-within-budget", rollout={"budget": FailureBudget(count=2)}, setup=_fail_every_revision,
         next_step=(1, 0, 2, 0), wave=1, waves_log=[{"wave": 0, "size": 2, "done": 0, "failed": 2, "skipped": 0}]),
    Case("failures-accepted-by-resume", setup=_fail_every_revision, step=lambda s: dataclasses.replace(s, halted_failures=2),
         next_step=(1, 0, 2, 0), wave=1),
    Case("no-wave-left", step=lambda s: dataclasses.replace(s, wave=2), status="finished", wave=2, tasks=0),
    Case("superseded", setup=_tag_moved, status="superseded", reason=f"{APP} moved to sha256:", tasks=0),
    # Quota 120 writes/min, two per task (the deploy at zero traffic and the traffic write after
    # verification), with a burst of 1 releases one task a second; a 4 s budget stops releasing 2 s
    # (one poll interval) before its end: services 0, 1 and 2 go, the continuation starts at 3.
    Case("out-of-time-releasing", rollout={"waves": (1.0,), "concurrency": 1, "write_quota_per_min": 120,
                                           "invocation_budget_s": 4.0, "poll_interval_s": 2.0},
         next_step=(0, 3, 2, 0), tasks=3),
    Case("out-of-time-waiting", rollout={"invocation_budget_s": 30.0}, workers=False, next_step=(0, 2, 2, 0)),
]


@pytest.mark.parametrize("case", OUTCOMES, ids=[c.name for c in OUTCOMES])
def test_step_outcome(case: Case) -> None:
    r = rig(5 if case.name == "out-of-time-releasing" else 4, workers=case.workers, **case.rollout)
    case.setup(r)
    s = case.step(first_step(r))
    step.handle_step(r.w.deps, s, "m-1")

    rec = r.record
    assert (rec.status, rec.wave, rec.seq) == (case.status, case.wave, 1)
    assert rec.owner.startswith("m-1:") and rec.owner.endswith(":done")
    assert case.reason in rec.reason
    if case.waves_log is not None:
        assert rec.waves == case.waves_log
    assert len(r.w.bus.tasks(TASKS)) == case.tasks
    handed = r.steps()[1:]
    if case.next_step is None:
        assert handed == []
    else:
        (nxt,) = handed
        assert (nxt.wave, nxt.cursor, nxt.seq, nxt.halted_failures) == case.next_step
        assert nxt.rollout == s.rollout


def test_a_step_that_runs_out_of_time_waiting_hands_over_its_release_time() -> None:
    r = rig(workers=False, invocation_budget_s=30.0)
    s = first_step(r)
    released_at = r.w.clock.now()  # the claim waits for nothing
    step.handle_step(r.w.deps, s, "m-1")
    (nxt,) = r.steps()[1:]
    assert nxt.released_at == released_at
    # The continuation releases nothing again and picks up the wait where it stopped.
    r.workers_run_while_the_step_waits()
    step.handle_step(r.w.deps, nxt, "m-2")
    assert len(r.w.bus.tasks(TASKS)) == 2
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 2, "failed": 0, "skipped": 0}]
    assert r.steps()[-1].wave == 1


def test_a_continuation_past_its_wave_settle_deadline_counts_the_pending_as_failed() -> None:
    r = rig(workers=False, invocation_budget_s=30.0)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    (nxt,) = r.steps()[1:]
    settle_s = step.settle_after_s(r.w.config.rollout)
    r.w.clock.advance(settle_s)  # the workers never answered
    step.handle_step(r.w.deps, nxt, "m-2")
    assert r.record.status == "halted"
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 0, "failed": 2, "skipped": 0}]
    assert len(r.w.bus.tasks(TASKS)) == 2  # nothing released twice


def test_a_waves_deadline_leaves_room_for_the_longest_verification() -> None:
    """A job's verification execution may run `job_verify_timeout_s` between its update's gate and its
    result: a wave whose results have not come by twice the readiness timeout and the grace is still
    waiting when that check is long, and fails its silent members only once it is over too."""
    r = rig(workers=False, invocation_budget_s=30.0, job_verify_timeout_s=300.0)
    cfg = r.w.config.rollout
    assert step.settle_after_s(cfg) == 2 * cfg.ready_timeout_s + 300.0 + step.SETTLE_GRACE_S
    step.handle_step(r.w.deps, first_step(r), "m-1")
    (nxt,) = r.steps()[1:]
    r.w.clock.advance(2 * cfg.ready_timeout_s + step.SETTLE_GRACE_S)  # the old deadline: not over yet
    step.handle_step(r.w.deps, nxt, "m-2")
    assert r.record.status == "running" and r.record.waves == []
    r.w.clock.advance(300.0)
    step.handle_step(r.w.deps, r.steps()[-1], "m-3")
    assert r.record.status == "halted"
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 0, "failed": 2, "skipped": 0}]


def test_a_member_deleted_while_the_wave_waits_is_skipped() -> None:
    r = rig(workers=False)
    s = first_step(r)
    gone: list[str] = []

    def hook(now: float) -> None:
        if r.w.bus.published[TASKS] and not gone:
            gone.append(r.w.bus.tasks(TASKS)[0].service)
            del r.w.fleet.services[gone[0]]
        r.w.bus.deliver(TASKS)

    r.w.clock.on_sleep.append(hook)
    step.handle_step(r.w.deps, s, "m-1")
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 1, "failed": 0, "skipped": 1}]
    assert r.steps()[-1].wave == 1


def test_a_rollout_walks_every_wave_to_finished_and_rolls_each_service_once() -> None:
    r = rig(6, waves=(0.2, 0.5, 1.0))
    s = first_step(r)
    for i in range(1, 10):
        step.handle_step(r.w.deps, s, f"m-{i}")
        if r.record.status != "running":
            break
        s = r.steps()[-1]
    assert r.record.status == "finished"
    assert [w["size"] for w in r.record.waves] == [2, 1, 3]
    assert r.w.fleet.calls["update_images"] == 6
    assert {svc.images for svc in r.w.fleet.services.values()} == {(r.new_image,)}
    assert sum(r.w.clock.slept) < 60  # fake seconds: settling is seen within a few polls


def test_later_steps_never_list_the_fleet_and_walk_the_plan_the_start_stored() -> None:
    r = rig(6, waves=(0.2, 0.5, 1.0))
    listed = r.w.fleet.calls["list_services"]  # the start's listing: the only one
    s = first_step(r)
    assert s.plan == 1
    for i in range(1, 10):
        step.handle_step(r.w.deps, s, f"m-{i}")
        if r.record.status != "running":
            break
        s = r.steps()[-1]
        assert s.plan == 1  # every hand-over names the same stored plan
    assert r.record.status == "finished" and r.w.fleet.calls["list_services"] == listed


def _reads_by_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    real = step._read_each

    def spy(fleet, names):
        read.extend(names)
        return real(fleet, names)

    monkeypatch.setattr(step, "_read_each", spy)
    return read


def test_a_wave_settles_on_its_results_without_reading_its_members(monkeypatch: pytest.MonkeyPatch) -> None:
    read = _reads_by_steps(monkeypatch)
    r = rig()
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 2, "failed": 0, "skipped": 0}]
    assert read == [] and r.w.records.result_queries >= 1
    assert sum(r.w.clock.slept) < 2 * r.w.config.rollout.poll_interval_s + 1  # seen at the first poll after them


def test_members_whose_results_are_lost_are_read_one_by_one_once_overdue(monkeypatch: pytest.MonkeyPatch) -> None:
    read = _reads_by_steps(monkeypatch)
    r = rig(results=False)
    s = first_step(r)
    step.handle_step(r.w.deps, s, "m-1")
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 2, "failed": 0, "skipped": 0}]
    wave0 = {t.service for t in r.w.bus.tasks(TASKS)}
    assert set(read) == wave0  # just the wave's members, never a listing
    overdue = step.overdue_after_s(r.w.config.rollout)
    assert overdue <= sum(r.w.clock.slept) < overdue + 2 * r.w.config.rollout.poll_interval_s + 1


def test_redelivered_stale_and_uninformative_results_count_once_or_not_at_all() -> None:
    r = rig(workers=False)
    s = first_step(r)
    rid = r.rollout_id
    planned_at = r.w.records.plan(rid, 1)["planned_at"]
    names = sorted(svc for svc in r.w.fleet.services)[:4]
    wave0 = [m["service"] for m in r.w.records.wave(rid, 1, 0)]
    a, b = wave0
    other = next(n for n in names if n not in wave0)
    put = lambda name, outcome, at, wave=0: r.w.records.record_result(
        rid, wave, name, {"service": name, "wave": wave, "outcome": outcome, "reason": "", "recorded": at})
    put(a, "failed", planned_at - 1)  # from before this plan: not this plan's result
    put(a, "updated", planned_at + 1)
    put(a, "updated", planned_at + 2)  # the same result redelivered
    put(b, "cancelled", planned_at + 1)  # says nothing about the member: still pending
    put(other, "failed", planned_at + 1, wave=0)  # not a member of this wave: ignored
    step.handle_step(r.w.deps, s, "m-1")
    assert r.record.waves == [] and r.steps()[-1].released_at is not None  # b still pending
    put(b, "skipped", planned_at + 3)
    step.handle_step(r.w.deps, r.steps()[-1], "m-2")
    assert r.record.waves == [{"wave": 0, "size": 2, "done": 1, "failed": 0, "skipped": 1}]


def test_a_result_delivered_twice_to_on_roll_result_is_one_record() -> None:
    r = rig(workers=False)
    s = first_step(r)
    name = r.w.records.wave(r.rollout_id, 1, 0)[0]["service"]
    result = Result(s.rollout, name, 0, "updated", "", ("a",), ("b",))
    data, attributes = messages.encode(result)
    envelope = {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "m-9"},
                "subscription": "projects/p/subscriptions/s"}
    for _ in range(2):  # at-least-once delivery
        assert handlers.on_roll_result(envelope, "e-9", lambda: r.w.deps) == {"status": "recorded"}
    (doc,) = r.w.records.results(r.rollout_id, 0, 0.0)
    assert (doc["service"], doc["outcome"], doc["wave"]) == (name, "updated", 0)


def test_the_first_step_is_sent_once_the_first_wave_is_stored_before_the_later_waves() -> None:
    w = fakes.FakeWorld(fakes.config(waves=(0.5, 1.0)))
    order: list[str] = []
    real_put, real_publish = w.records.put_wave, w.bus.publish
    w.records.put_wave = lambda rid, seq, wave, chunks: (order.append(f"wave {wave}"),  # type: ignore[method-assign]
                                                         real_put(rid, seq, wave, chunks))
    w.bus.publish = lambda topic, items: (order.append(topic), real_publish(topic, items))[1]  # type: ignore
    old = w.registry.push(APP, [fakes.layer("app-v1")])
    w.registry.push(APP, [fakes.layer("app-v2")])
    for i in range(4):
        w.fleet.add(ServiceView(f"projects/tenants-aaaaa/locations/us-east1/services/shop{i}",
                                (str(old.pinned()),), labels={"baseroll-app-tag": "prod"}))
    planner.start(w.deps, RollRequest("app", refs.parse(APP), None, "request", "e-1"))
    assert order == ["wave 0", topics.EVENTS, RESULTS, "wave 1"]  # `started`, then the first step


def test_a_step_whose_wave_was_never_stored_plans_again_and_hands_its_plan_on() -> None:
    r = rig(6, waves=(0.2, 0.5, 1.0))
    step.handle_step(r.w.deps, first_step(r), "m-1")
    s = r.steps()[-1]
    assert (s.wave, s.plan) == (1, 1)
    for key in [k for k in r.w.records.docs if k[:4] == (r.rollout_id, "wave", 1, 1)]:
        del r.w.records.docs[key]  # the start stopped after storing wave 0
    listed = r.w.fleet.calls["list_services"]
    step.handle_step(r.w.deps, s, "m-2")
    assert r.w.fleet.calls["list_services"] == listed + 1
    nxt = r.steps()[-1]
    assert (nxt.wave, nxt.plan) == (2, s.seq)  # the plan made by that step, stored under its seq
    assert r.w.records.plan(r.rollout_id, s.seq) is not None


# ------------------------------------------------------------------------------------------ abort mid-step


def _abort_once_tasks_are_out(r: Rig, deliver: bool) -> list[int]:
    """An operator aborts while the step waits for its wave; returns [number of writes after the abort]."""
    at_abort: list[int] = []

    def hook(now: float) -> None:
        if deliver:
            r.w.bus.deliver(TASKS)  # before the abort: a worker that sees the abort first does nothing
        if r.w.bus.published[TASKS] and not at_abort:
            assert planner.control(r.w.deps, "abort", r.rollout_id)["status"] == "aborted"
            at_abort.append(len(r.w.records.puts))

    r.w.clock.on_sleep.insert(0, hook)
    return at_abort


@pytest.mark.parametrize("workers", [False, True], ids=["wave-still-pending", "wave-settles-meanwhile"])
def test_an_abort_seen_mid_step_stops_the_step_and_stays(workers: bool) -> None:
    r = rig(workers=False)
    at_abort = _abort_once_tasks_are_out(r, deliver=workers)
    step.handle_step(r.w.deps, first_step(r), "m-1")

    assert at_abort, "the abort landed while the step waited"
    assert len(r.w.records.puts) == at_abort[0], "nothing written after the abort"
    rec = r.record
    assert (rec.status, rec.reason) == ("aborted", "aborted by request")
    assert r.steps()[1:] == []  # no hand-over
    # Within one heartbeat of the abort, not at the end of the invocation budget.
    assert sum(r.w.clock.slept) <= lease.HEARTBEAT_S + 2 * r.w.config.rollout.poll_interval_s


# ------------------------------------------------------------------------------------------ lease lost


def _take_over_while_waiting(r: Rig) -> list[int]:
    taken: list[int] = []

    def hook(now: float) -> None:
        if r.w.bus.published[TASKS] and not taken:
            r.w.records.write_by_someone_else(r.rollout_id, owner="m-2:takeover")
            taken.append(len(r.w.records.puts))

    r.w.clock.on_sleep.insert(0, hook)
    return taken


@pytest.mark.parametrize("workers", [False, True], ids=["noticed-on-renewal", "noticed-when-finishing"])
def test_a_step_taken_over_raises_busy_and_leaves_the_record_alone(workers: bool) -> None:
    r = rig(workers=workers)
    taken = _take_over_while_waiting(r)
    with pytest.raises(lease.Busy):
        step.handle_step(r.w.deps, first_step(r), "m-1")
    assert taken
    assert len(r.w.records.puts) == taken[0]
    rec = r.record
    assert (rec.status, rec.owner, rec.wave) == ("running", "m-2:takeover", 0)
    assert r.steps()[1:] == []


def test_a_step_held_by_a_live_invocation_is_busy_without_a_write() -> None:
    r = rig()
    r.w.records.write_by_someone_else(r.rollout_id, seq=1, owner="m-0:alive")
    puts = len(r.w.records.puts)
    with pytest.raises(lease.Busy):
        step.handle_step(r.w.deps, first_step(r), "m-1")
    assert len(r.w.records.puts) == puts
    assert r.record.owner == "m-0:alive"
    assert r.w.bus.published[TASKS] == []


def test_a_step_whose_holder_went_silent_is_taken_over() -> None:
    r = rig()
    r.w.records.write_by_someone_else(r.rollout_id, seq=1, owner="m-0:crashed")
    r.w.clock.advance(lease.LEASE_S + 1)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.owner.startswith("m-1:")
    assert r.steps()[-1].wave == 1


def test_a_concurrent_claim_between_the_claims_read_and_its_write_is_busy() -> None:
    r = rig()

    def claim_first(rollout_id: str) -> None:
        r.w.records.between_read_and_write = None
        r.w.records.write_by_someone_else(rollout_id, seq=1, owner="m-2:claim")

    r.w.records.between_read_and_write = claim_first
    with pytest.raises(lease.Busy):
        step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.owner == "m-2:claim"
    assert r.w.bus.published[TASKS] == []


def test_an_unexpected_error_gives_the_step_back() -> None:
    r = rig()

    def broken(*args: object):
        raise RuntimeError("store failed")

    r.w.records.wave = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        step.handle_step(r.w.deps, first_step(r), "m-1")
    assert (r.record.seq, r.record.owner, r.record.status) == (1, "", "running")


# ------------------------------------------------------------------------------------------ duplicates


def _finished_once(r: Rig, s: Step) -> Step:
    step.handle_step(r.w.deps, s, "m-1")
    return s


def _stale(r: Rig, s: Step) -> Step:
    r.w.records.write_by_someone_else(r.rollout_id, seq=3)
    return s


def _over(r: Rig, s: Step) -> Step:
    planner.control(r.w.deps, "abort", r.rollout_id)
    return s


def _unknown(r: Rig, s: Step) -> Step:
    return dataclasses.replace(s, rollout=dataclasses.replace(s.rollout, rollout_id="app-shop-000000000000"))


@pytest.mark.parametrize("prepare", [_finished_once, _stale, _over, _unknown],
                         ids=["same-step-again", "older-seq", "rollout-over", "unknown-rollout"])
def test_a_duplicate_or_stale_step_is_dropped(prepare: Callable[[Rig, Step], Step]) -> None:
    r = rig()
    s = prepare(r, first_step(r))
    before = (len(r.w.records.puts), r.record, len(r.w.bus.published[RESULTS]), len(r.w.bus.published[TASKS]),
              r.w.fleet.calls["update_images"])
    step.handle_step(r.w.deps, s, "m-9")
    after = (len(r.w.records.puts), r.record, len(r.w.bus.published[RESULTS]), len(r.w.bus.published[TASKS]),
             r.w.fleet.calls["update_images"])
    assert after == before


# ------------------------------------------------------------------------------------------ base rollouts

TRACK = f"{fakes.REGISTRY}/bases/python:3.12"
SIGN_TOPIC = "sign-requests"


def base_rig(signing: str = "report", *, app_signed: bool = False, refuse: str = "",
             apps: tuple[str, ...] = ("shop",)) -> tuple[fakes.FakeWorld, Step]:
    """Two services on each app image (`shop`: the first app), built on python 3.12.1; the track moved
    to 3.12.2; started."""
    cfg = dataclasses.replace(fakes.config(waves=(1.0,)), signatures=SigningPolicy(signing, SIGN_TOPIC))
    w = fakes.FakeWorld(cfg)
    v1 = w.registry.push(f"{TRACK}.1", [fakes.layer("os"), fakes.layer("py-3.12.1")])
    w.lineage.record_version("python", v1.digest or "")  # the track's tag was seen at 3.12.1 before it moved
    v2 = w.registry.push(f"{TRACK}.2", [fakes.layer("os"), fakes.layer("py-3.12.2")])
    w.registry.move_tag(TRACK, v2.digest or "")
    for n, name in enumerate(apps):
        app = w.registry.push(f"{fakes.REGISTRY}/apps/{name}:v1",
                              [fakes.layer("os"), fakes.layer("py-3.12.1"), fakes.layer(name)]).pinned()
        if app_signed and n == 0:
            w.registry.push(app.with_tag(signatures.signature_tag(app.digest or "")), [fakes.layer("sig")])
        for i in range(2):
            w.fleet.add(ServiceView(f"projects/tenants-aaaaa/locations/us-east1/services/{name}{i}", (str(app),)))
        if refuse and n == 0:
            w.rebase.refuse[str(app)] = refuse
    w.bus.subscribe(TASKS, lambda task: step.record_result(w.deps, worker.roll_service(w.deps, task)))
    w.clock.on_sleep.append(lambda now: w.bus.deliver(TASKS))
    out = planner.start(w.deps, RollRequest("base", refs.parse(TRACK), None, "artifact-push", "e-1"))
    assert out["status"] == "running" and out["to_roll"] == 2 * len(apps)
    (s,) = w.bus.steps(RESULTS)
    return w, s


def test_a_base_rollout_deploys_the_rebased_image_and_sees_it_current() -> None:
    w, s = base_rig(app_signed=True)
    step.handle_step(w.deps, s, "m-1")
    rec = w.records.get(s.rollout.rollout_id)
    assert rec is not None and rec.status == "finished"
    rebased = w.rebase.results[-1]
    assert [dry for _, _, dry in w.rebase.calls] == [False]  # the start's: a step reads the stored plan
    assert {svc.images for svc in w.fleet.services.values()} == {(str(rebased),)}
    assert {t.targets["0"] for t in w.bus.tasks(TASKS)} == {str(rebased)}
    assert w.bus.published[SIGN_TOPIC] == []  # `report` never asks for a signature


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed-meanwhile"])
def test_signatures_required_hold_back_an_unsigned_rebased_image(signed: bool) -> None:
    w, s = base_rig("require")
    if signed:
        rebased = w.rebase.results[-1]  # the start's rebase, stored in the plan
        w.registry.push(rebased.with_tag(signatures.signature_tag(rebased.digest or "")), [fakes.layer("sig")])
    step.handle_step(w.deps, s, "m-1")
    rec = w.records.get(s.rollout.rollout_id)
    assert rec is not None
    if signed:
        assert rec.status == "finished" and len(w.bus.tasks(TASKS)) == 2
        assert w.bus.published[SIGN_TOPIC] == []
    else:
        assert (rec.status, rec.reason) == ("halted", "wave 0: 2 of 2 failed, over the failure budget")
        assert w.bus.tasks(TASKS) == [] and w.fleet.calls["update_images"] == 0
        assert len(w.bus.published[SIGN_TOPIC]) == 1  # one request per image and step, not per service


def test_a_refused_rebase_fails_its_services_at_once_and_sends_nothing() -> None:
    w, s = base_rig(refuse="config drift: Env differs")
    step.handle_step(w.deps, s, "m-1")
    rec = w.records.get(s.rollout.rollout_id)
    assert rec is not None and (rec.status, rec.waves[0]["failed"]) == ("halted", 2)
    assert w.bus.tasks(TASKS) == []
    assert sum(w.clock.slept) == 0  # failed now, not at the wave's deadline


def _refuse_signature_lookups(w: fakes.FakeWorld, status: int) -> None:
    real = w.registry.head_manifest

    def head(ref):
        if ref.tag and ref.tag.endswith(".sig"):
            raise RegistryError(f"HEAD {ref}: denied", status, "DENIED" if status == 403 else None)
        return real(ref)

    w.registry.head_manifest = head  # type: ignore[method-assign]


@pytest.mark.parametrize("signing", ["report", "require"])
def test_a_refused_signature_lookup_fails_only_that_image(signing: str) -> None:
    w, s = base_rig(signing)
    _refuse_signature_lookups(w, 403)
    step.handle_step(w.deps, s, "m-1")  # no exception: the step decides per image
    rec = w.records.get(s.rollout.rollout_id)
    assert rec is not None
    if signing == "report":  # nothing to enforce: the rollout goes on, the log says why
        assert rec.status == "finished" and w.fleet.calls["update_images"] == 2
    else:  # unverifiable under `require`: its services fail now, with the reason, and nothing is deployed
        assert (rec.status, rec.waves[0]["failed"]) == ("halted", 2)
        assert w.fleet.calls["update_images"] == 0 and w.bus.published[SIGN_TOPIC] == []


def test_a_flaky_signature_lookup_redelivers_the_step() -> None:
    w, s = base_rig("require")
    _refuse_signature_lookups(w, 503)
    with pytest.raises(RegistryError):
        step.handle_step(w.deps, s, "m-1")
    rec = w.records.get(s.rollout.rollout_id)
    assert rec is not None and rec.status == "running" and not rec.owner  # given back for the redelivery
    assert w.fleet.calls["update_images"] == 0



def test_a_waves_signature_lookups_are_asked_together_not_one_after_another() -> None:
    """Two app images, so two rebased images to ask about: their lookups must overlap (each waits for
    the other at a barrier; asked in turn, the first would wait out the barrier's timeout and fail)."""
    w, s = base_rig("report", apps=("shop", "cart"))
    meet = threading.Barrier(2, timeout=5)
    met: list[str] = []
    real = w.registry.head_manifest

    def head(ref):
        if ref.tag and ref.tag.endswith(".sig") and len(met) < 2:
            met.append(ref.repository)
            meet.wait()
        return real(ref)

    w.registry.head_manifest = head  # type: ignore[method-assign]
    step.handle_step(w.deps, s, "m-1")
    rec = w.records.get(s.rollout.rollout_id)
    assert rec is not None and rec.status == "finished" and not meet.broken
    assert sorted(met) == ["apps/cart", "apps/shop"] and w.fleet.calls["update_images"] == 4
