"""The coordinator step with operators in the loop, against in-memory fakes and a FakeClock (the rigs
of test_step): the rollout events each point publishes, approval holds, maintenance windows."""
from __future__ import annotations

import base64

from baseroll.config.windows import parse_windows
from baseroll.contracts import events as E
from baseroll.contracts import messages, topics
from baseroll.contracts.messages import Step
from baseroll.contracts.roll import RollRequest
from baseroll.edge import handlers
from baseroll.fleet.fake import Verdict
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.images.registry import RegistryError
from baseroll.rollout import fakes, lease, planner, step, worker

from tests.unit.test_step import (  # noqa: F401 - no_real_sleep: the autouse fixture, here too
    APP,
    TASKS,
    Rig,
    _abort_once_tasks_are_out,
    _fail_every_revision,
    _tag_moved,
    first_step,
    no_real_sleep,
    rig,
)

# ------------------------------------------------------------------------------------------ rollout events


def sent_events(w: fakes.FakeWorld) -> list[E.RolloutEvent]:
    """Every event published to baseroll-events, decoded strictly as a subscriber would."""
    return [E.decode(m) for m in w.bus.published[topics.EVENTS]]


def kinds(w: fakes.FakeWorld) -> list[tuple[str, int | None]]:
    return [(e.kind, e.wave) for e in sent_events(w)]


def walk(r: Rig, first: Step, limit: int = 10) -> None:
    """Run each step the previous one handed over until none is handed over."""
    s, seen = first, set()
    for i in range(limit):
        if s.seq in seen:
            return
        seen.add(s.seq)
        step.handle_step(r.w.deps, s, f"m-{s.seq}-{i}")
        s = r.steps()[-1]


def test_a_rollout_reports_each_point_once_in_the_schema() -> None:
    r = rig(6, waves=(0.2, 0.5, 1.0))
    walk(r, first_step(r))
    assert r.record.status == "finished"
    assert kinds(r.w) == [("started", None), ("wave-released", 0), ("wave-settled", 0), ("wave-released", 1),
                          ("wave-settled", 1), ("wave-released", 2), ("wave-settled", 2), ("finished", None)]
    evs = sent_events(r.w)
    assert len({e.event_id for e in evs}) == len(evs)
    assert evs[0].detail == {"to_roll": 6, "skipped": 0, "wave_sizes": [2, 1, 3], "approval": "none"}
    assert [e.detail["size"] for e in evs if e.kind == "wave-released"] == [2, 1, 3]
    assert evs[-1].detail == {"waves": 3, "size": 6, "done": 6, "failed": 0, "skipped": 0}
    assert {e.rollout_id for e in evs} == {r.rollout_id}


def test_a_redelivered_step_reports_nothing_again() -> None:
    r = rig()
    s = first_step(r)
    step.handle_step(r.w.deps, s, "m-1")
    before = kinds(r.w)
    step.handle_step(r.w.deps, s, "m-1-again")
    assert kinds(r.w) == before == [("started", None), ("wave-released", 0), ("wave-settled", 0)]


def test_a_halt_reports_the_failing_services_and_why() -> None:
    r = rig()
    _fail_every_revision(r)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert kinds(r.w)[-2:] == [("wave-settled", 0), ("halted", 0)]
    halted = sent_events(r.w)[-1]
    wave0 = {t.service for t in r.w.bus.tasks(TASKS)}
    assert halted.detail["failed_total"] == 2 and {f["service"] for f in halted.detail["failed"]} == wave0
    assert all(f["reason"] for f in halted.detail["failed"])  # the worker's reason for each
    assert halted.detail["reason"] == r.record.reason


def test_a_superseded_rollout_reports_where_its_track_moved() -> None:
    r = rig()
    _tag_moved(r)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    (ev,) = [e for e in sent_events(r.w) if e.kind == "superseded"]
    assert ev.detail["now_digest"].startswith("sha256:") and ev.detail["reason"] == r.record.reason


def test_a_step_whose_finish_is_refused_reports_nothing() -> None:
    """The abort lands while the wave settles: the step's write is refused, so no `wave-settled`."""
    r = rig(workers=False)
    _abort_once_tasks_are_out(r, deliver=True)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.status == "aborted"
    assert kinds(r.w) == [("started", None), ("wave-released", 0), ("aborted", 0)]


def test_a_permanently_failing_step_halts_and_reports_it() -> None:
    r = rig()
    s = first_step(r)

    def refused(ref):
        raise RegistryError(f"HEAD {ref}: denied", 403, "DENIED")

    r.w.registry.head_manifest = refused  # type: ignore[method-assign]
    data, attributes = messages.encode(s)
    envelope = {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "m-7"},
                "subscription": "projects/p/subscriptions/s"}
    assert handlers.on_roll_result(envelope, "e-7", lambda: r.w.deps)["status"] == "rejected"
    assert r.record.status == "halted"
    (ev,) = [e for e in sent_events(r.w) if e.kind == "halted"]
    assert (ev.seq, ev.wave, ev.detail["reason"]) == (1, 0, r.record.reason)


# ------------------------------------------------------------------------------------------ approvals


def test_after_canary_holds_the_second_wave_until_approved() -> None:
    r = rig(approval="after-canary")
    step.handle_step(r.w.deps, first_step(r), "m-1")
    held = r.steps()[-1]
    step.handle_step(r.w.deps, held, "m-2")
    rec = r.record
    assert (rec.status, rec.wave) == ("awaiting-approval", 1) and "awaiting approval before wave 1" in rec.reason
    assert len(r.w.bus.tasks(TASKS)) == 2 and r.steps()[-1] == held  # wave 1: nothing sent, no step in flight
    step.handle_step(r.w.deps, held, "m-2-again")  # a redelivery is dropped and says nothing again
    assert [k for k, _ in kinds(r.w)].count("awaiting-approval") == 1
    ev = sent_events(r.w)[-1]
    assert ev.detail["approve"] == f"baseroll approve {r.rollout_id}" and ev.detail["approval"] == "after-canary"

    assert planner.control(r.w.deps, "approve", r.rollout_id) == {"status": "running", "rollout_id": r.rollout_id}
    assert r.record.approved_waves == [1]
    resumed = sent_events(r.w)[-1]
    nxt = r.steps()[-1]
    assert (resumed.kind, resumed.wave, resumed.detail["cause"], resumed.seq) == ("resumed", 1, "approve", nxt.seq)
    assert planner.control(r.w.deps, "approve", r.rollout_id)["status"] == "running"  # twice: nothing more
    assert r.steps()[-1] == nxt
    walk(r, nxt)
    assert r.record.status == "finished" and len(r.w.bus.tasks(TASKS)) == 4


def test_every_wave_holds_before_anything_is_written_and_resume_approves() -> None:
    r = rig(approval="every-wave")
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert (r.record.status, r.record.wave) == ("awaiting-approval", 0) and r.w.bus.tasks(TASKS) == []
    assert planner.control(r.w.deps, "resume", r.rollout_id)["status"] == "running"  # resume = approve here
    walk(r, r.steps()[-1])
    assert len(r.w.bus.tasks(TASKS)) == 2 and r.record.status == "awaiting-approval" and r.record.wave == 1
    assert r.record.approved_waves == [0]


def test_an_approval_of_a_rollout_not_waiting_changes_nothing() -> None:
    r = rig(approval="after-canary")
    puts = len(r.w.records.puts)
    assert planner.control(r.w.deps, "approve", r.rollout_id) == {"status": "running", "rollout_id": r.rollout_id}
    assert len(r.w.records.puts) == puts and r.steps() == [first_step(r)]
    assert "resumed" not in [k for k, _ in kinds(r.w)]


def test_abort_ends_a_rollout_awaiting_approval() -> None:
    r = rig(approval="every-wave")
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert planner.control(r.w.deps, "abort", r.rollout_id)["status"] == "aborted"
    assert planner.control(r.w.deps, "approve", r.rollout_id)["status"] == "aborted"  # over: not approved
    assert kinds(r.w)[-2:] == [("awaiting-approval", 0), ("aborted", 0)]


# ------------------------------------------------------------------------------------------ maintenance windows

EAST, WEST = "us-east1", "us-west1"
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def window_rig(start: str, *, end: str = "24:00", budget: float = 480.0) -> Rig:
    """Two services in each of two regions, one wave; us-west1 may be written only from `start` to
    `end` (UTC). The fake clock starts on Tue 2023-11-14 22:13:20 UTC."""
    rules = parse_windows([{"match": {"region": WEST}, "days": EVERY_DAY, "start": start, "end": end,
                            "time_zone": "UTC"}])
    w = fakes.FakeWorld(fakes.config(regions=(EAST, WEST), waves=(1.0,), windows=rules, invocation_budget_s=budget))
    old = w.registry.push(APP, [fakes.layer("app-v1")])
    new = w.registry.push(APP, [fakes.layer("app-v2")])
    for region in (EAST, WEST):
        for i in range(2):
            w.fleet.add(ServiceView(f"projects/tenants-aaaaa/locations/{region}/services/shop{i}",
                                    (str(old.pinned()),), labels={"baseroll-app-tag": "prod"}))
    w.bus.subscribe(TASKS, lambda task: step.record_result(w.deps, worker.roll_service(w.deps, task)))
    out = planner.start(w.deps, RollRequest("app", refs.parse(APP), None, "request", "e-1"))
    r = Rig(w, out["rollout_id"], str(new.pinned()))
    r.workers_run_while_the_step_waits()
    return r


def regions_sent(r: Rig) -> list[str]:
    return [t.service.split("/")[3] for t in r.w.bus.tasks(TASKS)]


def test_a_closed_window_parks_its_region_and_the_sweep_runs_it_on_when_it_opens() -> None:
    r = window_rig("23:00")  # 46 min 40 s away: past the invocation budget
    step.handle_step(r.w.deps, first_step(r), "m-1")
    rec = r.record
    opens = 1_700_000_000.0 + 2800
    assert (rec.status, rec.resume_at) == ("running", opens) and "wait for a maintenance window" in rec.reason
    assert regions_sent(r) == [EAST, EAST] and r.steps()[1:] == []  # parked: no step in flight
    assert "wave-released" not in [k for k, _ in kinds(r.w)]
    r.w.bus.deliver(TASKS)  # the east tasks in flight are done meanwhile

    r.w.clock.advance(opens - r.w.clock.now() - 1)
    assert planner.sweep(r.w.deps)["rollouts"][-1:] != [{"rollout_id": r.rollout_id, "status": "restarted"}]
    assert r.steps()[1:] == [] and r.record.resume_at == opens  # not a second early
    r.w.clock.advance(1)
    assert planner.sweep(r.w.deps)["rollouts"][-1] == {"rollout_id": r.rollout_id, "status": "restarted"}
    assert r.record.resume_at == 0 and sent_events(r.w)[-1].detail["cause"] == "sweep"
    step.handle_step(r.w.deps, r.steps()[-1], "m-2")
    assert r.record.status == "finished" and sorted(regions_sent(r)) == [EAST, EAST, WEST, WEST]
    assert r.record.waves == [{"wave": 0, "size": 4, "done": 4, "failed": 0, "skipped": 0}]


def test_a_window_that_opens_within_the_invocation_is_waited_for() -> None:
    r = window_rig("22:15")  # 100 s away
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.status == "finished" and sorted(regions_sent(r)) == [EAST, EAST, WEST, WEST]
    released = [e for e in sent_events(r.w) if e.kind == "wave-released"]
    assert [(e.detail["size"], e.detail["held"]) for e in released] == [(4, 2)]
    assert sum(r.w.clock.slept) >= 100  # the west services went once their window opened, not before


def test_a_parked_rollout_is_not_restarted_as_quiet_before_its_window() -> None:
    r = window_rig("23:00")
    step.handle_step(r.w.deps, first_step(r), "m-1")
    r.w.clock.advance(lease.LEASE_S * 10)  # long silent: a quiet running rollout would be restarted
    planner.sweep(r.w.deps)
    assert r.steps()[1:] == [] and r.record.resume_at > 0


def test_an_abort_while_a_step_waits_for_a_window_stops_it_within_a_heartbeat() -> None:
    r = window_rig("22:15")  # 100 s away: the step waits for it
    aborted: list[float] = []

    def abort_once(now: float) -> None:
        if r.w.bus.published[TASKS] and not aborted:
            planner.control(r.w.deps, "abort", r.rollout_id)
            aborted.append(now)

    r.w.clock.on_sleep.insert(0, abort_once)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.status == "aborted" and regions_sent(r) == [EAST, EAST]  # the west never sent
    assert r.w.clock.now() - aborted[0] <= lease.HEARTBEAT_S
    assert [k for k, _ in kinds(r.w)] == ["started", "aborted"]


def test_members_already_rolled_never_wait_for_their_window_again() -> None:
    """West rolls in its window, east fails and halts the wave; resumed after the west window closed,
    the wave settles at once: only a member with a task to send waits for its window."""
    r = window_rig("22:15", end="22:17")
    r.w.fleet.verdicts[r.new_image] = Verdict(ready=False)
    ready = {n for n in r.w.fleet.services if n.split("/")[3] == WEST}
    r.w.clock.on_sleep.insert(0, lambda now: r.w.fleet.verdicts.pop(r.new_image, None)
                              if {t.service for t in r.w.bus.tasks(TASKS)} >= ready else None)
    step.handle_step(r.w.deps, first_step(r), "m-1")
    assert r.record.status == "halted" and sorted(regions_sent(r)) == [EAST, EAST, WEST, WEST]
    r.w.clock.advance(3600)  # the west window closed at 22:17
    assert planner.control(r.w.deps, "resume", r.rollout_id)["status"] == "running"
    step.handle_step(r.w.deps, r.steps()[-1], "m-2")
    assert (r.record.status, r.record.resume_at) == ("finished", 0)
