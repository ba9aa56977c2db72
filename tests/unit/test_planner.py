"""The planner (`rollout.planner`: start, dry run, control, sweep) against in-memory fakes.

A base track `python:3.12` moved from 3.12.1 to 3.12.2 in a FakeRegistry; four services run one app
image built on 3.12.1, one of them opted out, and one runs an image on another base.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from typing import Callable

import pytest
from baseroll.config.windows import parse_windows
from baseroll.contracts import topics
from baseroll.contracts.records import RolloutRecord
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.rollout import fakes, lease, planner, step
from baseroll.rollout.fakes import REGISTRY, layer

TRACK = f"{REGISTRY}/bases/python:3.12"
RESULTS = topics.RESULTS


@dataclasses.dataclass
class Base:
    w: fakes.FakeWorld
    app: refs.ImageRef  # the app image the fleet runs, built on 3.12.1
    new_base: refs.ImageRef

    def request(self, *, dry_run: bool = False) -> RollRequest:
        return RollRequest("base", refs.parse(TRACK), None, "artifact-push", "e-1", dry_run)

    def start(self, **kw: bool) -> dict:
        return planner.start(self.w.deps, self.request(**kw))

    def writes(self) -> int:
        return len(self.w.records.puts)


def svc(name: str, image: str, **labels: str) -> ServiceView:
    return ServiceView(f"projects/tenants-aaaaa/locations/us-east1/services/{name}", (image,), labels=labels)


def base_world(*, app_base: str = "3.12.1", **rollout: object) -> Base:
    rollout.setdefault("waves", (0.5, 1.0))
    w = fakes.FakeWorld(fakes.config(**rollout))
    v1 = w.registry.push(f"{REGISTRY}/bases/python:3.12.1", [layer("os"), layer("py-3.12.1")])
    w.lineage.record_version("python", v1.digest or "")  # the track's tag was seen at 3.12.1 before it moved
    v2 = w.registry.push(f"{REGISTRY}/bases/python:3.12.2", [layer("os"), layer("py-3.12.2")])
    w.registry.move_tag(TRACK, v2.digest)
    on = {"3.12.1": v1, "3.12.2": v2}[app_base]
    app = w.registry.push(f"{REGISTRY}/apps/shop:v1", [layer("os"), layer(f"py-{app_base}"), layer("shop")])
    other = w.registry.push(f"{REGISTRY}/apps/tool:v1", [layer("alpine"), layer("tool")])
    assert on.digest
    for i in range(4):
        w.fleet.add(svc(f"shop{i}", str(app.pinned())))
    w.fleet.add(svc("shop-optout", str(app.pinned()), **{"baseroll-opt-out": "true"}))
    w.fleet.add(svc("tool", str(other.pinned())))
    return Base(w, app.pinned(), refs.parse(TRACK).at(v2.digest))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ start


def test_start_writes_the_record_hands_over_the_first_step_and_rebases_each_image_once() -> None:
    b = base_world()
    out = b.start()
    assert (out["status"], out["to_roll"], out["skipped"]) == ("running", 4, 2)
    rec = b.w.records.get(out["rollout_id"])
    assert rec is not None and (rec.status, rec.seq, rec.base_digest, rec.track) == ("running", 0, b.new_base.digest,
                                                                                    "python")
    (first,) = b.w.bus.steps(RESULTS)
    assert (first.wave, first.cursor, first.seq, first.rollout.rollout_id) == (0, 0, 1, out["rollout_id"])
    assert [(job.app, new, dry) for job, new, dry in b.w.rebase.calls] == [(b.app, b.new_base, False)]
    assert b.w.fleet.calls["update_images"] == 0  # the planner deploys nothing itself


def test_the_fleet_is_listed_while_the_store_and_the_registry_are_read() -> None:
    """What the start needs from the store (record the track's version, read the record) and from the
    registry and the lineage store (the base's versions) is read while the fleet is listed: the first
    of each meets the others at a barrier, which a start doing them one after another would break."""
    b = base_world()
    meet = threading.Barrier(3, timeout=5)
    who: list[str] = []

    def rendezvous(name: str, call: Callable) -> Callable:
        def wrapped(*args, **kw):
            if name not in who:
                who.append(name)
                meet.wait()
            return call(*args, **kw)
        return wrapped

    b.w.lineage.record_version = rendezvous("record the version", b.w.lineage.record_version)  # type: ignore[method-assign]
    b.w.lineage.versions = rendezvous("read the versions", b.w.lineage.versions)  # type: ignore[method-assign]
    b.w.fleet.list_services = rendezvous("list the fleet", b.w.fleet.list_services)  # type: ignore[method-assign]
    out = b.start()
    assert out["status"] == "running" and out["to_roll"] == 4 and not meet.broken
    assert sorted(who) == ["list the fleet", "read the versions", "record the version"]
    assert b.w.lineage.by_track["python"][-1] == b.new_base.digest


def test_each_decision_is_logged_once_the_first_step_is_on_its_way(capsys: pytest.CaptureFixture) -> None:
    b = base_world()
    b.start()
    messages = [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    planned = [i for i, m in enumerate(messages) if m == "service.planned"]
    assert len(planned) == 6  # every workload, rolled or skipped, once
    assert messages.index("rollout.started") < planned[0]
    b.start()  # a redelivered event: the plan is made again and said again
    again = [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert again.count("service.planned") == 6 and "rollout.already_started" in again


@pytest.mark.parametrize("how", ["request", "config"])
def test_a_dry_run_returns_the_plan_and_writes_nothing(how: str) -> None:
    b = base_world(**({"dry_run": True} if how == "config" else {}))
    out = b.start(dry_run=how == "request")
    assert out["dry_run"] is True and "status" not in out
    rows = {row["service"].rsplit("/", 1)[-1]: row for row in out["services"]}
    assert {n for n, row in rows.items() if row["action"] == "roll"} == {"shop0", "shop1", "shop2", "shop3"}
    assert rows["shop-optout"]["reason"].startswith("opted out")
    assert rows["shop0"]["strategy"] == "rebase" and rows["shop0"]["targets"]["0"].startswith(f"{REGISTRY}/apps/shop@")
    assert sorted(n for wave in out["waves"] for n in wave) == sorted(r["service"] for r in rows.values()
                                                                     if r["action"] == "roll")
    assert b.w.records.puts == [] and dict(b.w.bus.published) == {}
    assert b.w.rebase.calls and all(dry for _, _, dry in b.w.rebase.calls)
    assert b.w.fleet.calls["update_images"] == 0


def test_a_dry_run_shows_each_services_maintenance_window() -> None:
    """The fake clock reads Tue 2023-11-14 22:13:20 UTC; shop0 (label maint=night) opens at 23:00."""
    rules = parse_windows([{"match": {"label": "maint=night"}, "days": ["tue"], "start": "23:00", "end": "24:00",
                            "time_zone": "UTC"}])
    b = base_world(windows=rules)
    b.w.fleet.services[svc("shop0", "").name] = dataclasses.replace(b.w.fleet.services[svc("shop0", "").name],
                                                                   labels={"maint": "night"})
    rows = {row["service"].rsplit("/", 1)[-1]: row for row in b.start(dry_run=True)["services"]}
    assert rows["shop0"]["window"] == "closed; opens Tue 2023-11-14 23:00 UTC (2023-11-14T23:00Z)"
    assert rows["shop1"]["window"] == "no window (any time)"


def test_a_dry_run_without_windows_has_no_window_column() -> None:
    assert all("window" not in row for row in base_world().start(dry_run=True)["services"])


def test_a_repeated_start_is_a_no_op() -> None:
    b = base_world()
    first = b.start()
    again = b.start()
    assert again["rollout_id"] == first["rollout_id"] and again["status"] == "running"
    assert b.writes() == 1 and len(b.w.bus.published[RESULTS]) == 1
    assert len(b.w.rebase.calls) == 1


def test_a_start_of_a_rollout_that_ended_reports_it_and_starts_nothing() -> None:
    b = base_world()
    out = b.start()
    b.w.records.write_by_someone_else(out["rollout_id"], status="halted")
    assert b.start()["status"] == "halted"
    assert b.writes() == 1 and len(b.w.bus.published[RESULTS]) == 1


def test_nothing_to_do_when_every_service_is_on_the_new_base() -> None:
    b = base_world(app_base="3.12.2")
    out = b.start()
    assert (out["status"], out["to_roll"]) == ("nothing-to-do", 0)
    assert b.w.records.puts == [] and dict(b.w.bus.published) == {} and b.w.rebase.calls == []


# ------------------------------------------------------------------------------------------ control


def _running(b: Base, rid: str) -> None:
    pass


def _halted_at_wave_1(b: Base, rid: str) -> None:
    b.w.records.write_by_someone_else(rid, status="halted", wave=1, seq=3, owner="m-3:x:done", reason="over budget",
                                      waves=[{"wave": 0, "failed": 0}, {"wave": 1, "failed": 2}])


def _finished(b: Base, rid: str) -> None:
    b.w.records.write_by_someone_else(rid, status="finished")


@dataclasses.dataclass
class Control:
    name: str
    action: str
    prepare: Callable[[Base, str], None]
    status: str  # what control answers
    record: tuple[str, str] | None  # (status, reason) written, or None when nothing is written
    step: tuple[int, int, int] | None = None  # (wave, seq, halted_failures) of the step it hands over


CONTROLS = [
    Control("abort-running", "abort", _running, "aborted", ("aborted", "aborted by request")),
    Control("abort-halted", "abort", _halted_at_wave_1, "halted", None),
    Control("abort-finished", "abort", _finished, "finished", None),
    Control("resume-halted", "resume", _halted_at_wave_1, "running", ("running", "resumed at wave 1"), (1, 5, 2)),
    Control("resume-running", "resume", _running, "running", None),
    Control("resume-finished", "resume", _finished, "finished", None),
]


@pytest.mark.parametrize("case", CONTROLS, ids=[c.name for c in CONTROLS])
def test_control(case: Control) -> None:
    b = base_world()
    rid = b.start()["rollout_id"]
    case.prepare(b, rid)
    writes, steps = b.writes(), len(b.w.bus.steps(RESULTS))
    out = planner.control(b.w.deps, case.action, rid)
    assert out == {"status": case.status, "rollout_id": rid}
    rec = b.w.records.get(rid)
    if case.record is None:
        assert b.writes() == writes
    else:
        assert b.writes() == writes + 1 and (rec.status, rec.reason) == case.record
    handed = b.w.bus.steps(RESULTS)[steps:]
    if case.step is None:
        assert handed == []
    else:
        (nxt,) = handed
        assert (nxt.wave, nxt.cursor, nxt.seq, nxt.halted_failures) == (case.step[0], 0, *case.step[1:])
        assert rec.owner == "" and rec.seq == nxt.seq - 1


def test_control_of_an_unknown_rollout() -> None:
    b = base_world()
    assert planner.control(b.w.deps, "abort", "python-000000000000")["status"] == "unknown-rollout"
    assert b.w.records.puts == []


def test_after_a_resume_a_late_copy_of_an_old_step_is_dropped() -> None:
    b = base_world()
    rid = b.start()["rollout_id"]
    (old,) = b.w.bus.steps(RESULTS)
    _halted_at_wave_1(b, rid)
    planner.control(b.w.deps, "resume", rid)
    writes = b.writes()
    step.handle_step(b.w.deps, dataclasses.replace(old, seq=3), "late")
    assert b.writes() == writes and b.w.bus.published[topics.TASKS] == []


# ------------------------------------------------------------------------------------------ sweep


def _quiet(b: Base, rid: str | None) -> None:
    assert rid
    b.w.records.write_by_someone_else(rid, wave=1, seq=2, owner="m-2:x")
    b.w.clock.advance(lease.LEASE_S + 1)


def _recent(b: Base, rid: str | None) -> None:
    assert rid
    b.w.records.write_by_someone_else(rid, wave=1, seq=2, owner="m-2:x")
    b.w.clock.advance(lease.LEASE_S - 5)


def _finished_with_stragglers(b: Base, rid: str | None) -> None:
    assert rid
    b.w.records.write_by_someone_else(rid, status="finished", wave=1, seq=2, owner="m-2:x:done")


def _halted_and_quiet(b: Base, rid: str | None) -> None:
    assert rid
    b.w.records.write_by_someone_else(rid, status="halted", wave=0, seq=1)
    b.w.clock.advance(lease.LEASE_S + 1)


SWEEPS = [
    # (name, started before, prepare, answer, handed-over step (wave, seq) or None)
    ("event-lost", False, lambda b, rid: None, "running", (0, 1)),
    ("quiet-running", True, _quiet, "restarted", (1, 4)),
    ("recently-running", True, _recent, "running", None),
    ("finished-with-stragglers", True, _finished_with_stragglers, "restarted", (0, 4)),
    ("halted", True, _halted_and_quiet, "halted", None),
]


@pytest.mark.parametrize("started, prepare, answer, handed", [s[1:] for s in SWEEPS], ids=[s[0] for s in SWEEPS])
def test_sweep(started: bool, prepare: Callable[[Base, str | None], None], answer: str,
               handed: tuple[int, int] | None) -> None:
    b = base_world()
    rid = b.start()["rollout_id"] if started else None
    prepare(b, rid)
    steps = len(b.w.bus.steps(RESULTS))
    out = planner.sweep(b.w.deps)
    (result,) = out["rollouts"]
    assert out["status"] == "swept" and result["status"] == answer
    new_steps = b.w.bus.steps(RESULTS)[steps:]
    if handed is None:
        assert new_steps == []
    else:
        (nxt,) = new_steps
        assert (nxt.wave, nxt.cursor, nxt.seq) == (handed[0], 0, handed[1])
        rec: RolloutRecord | None = b.w.records.get(result["rollout_id"])
        assert rec is not None and rec.status == "running" and rec.seq == nxt.seq - 1
