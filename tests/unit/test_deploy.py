"""`deploy.apply` on the in-memory fleet with a fake clock: one service, one target, every path.

Each case arranges the fleet (and the view the task was planned on), applies the target once,
then checks the outcome, the update calls the fleet saw (`fleet.calls`: a repeated task must make
none), the updates that landed, where the service ends, and what the ledger annotations say.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pytest
from baseroll.clock import FakeClock
from baseroll.contracts import ledger
from baseroll.fleet import deploy, traffic
from baseroll.fleet.fake import FakeFleet, Verdict
from baseroll.fleet.view import LATEST, REVISION, ServiceView, TrafficSplit

NAME = "projects/tenants-a/locations/us-central1/services/shop"
OLD = "reg.example.com/apps/shop@sha256:" + "1" * 64
NEW = "reg.example.com/apps/shop@sha256:" + "2" * 64  # the rebased image
OTHER = "reg.example.com/apps/shop@sha256:" + "3" * 64  # someone else's deploy
BASE = "sha256:" + "b" * 64
RID = ledger.rollout_id("python", BASE)
TIMEOUT_S = 60.0
FAILED = "HEALTH_CHECK_CONTAINER_ERROR"


@pytest.fixture(autouse=True)
def no_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy waits and measures deadlines only through the clock it is given."""
    def refuse(*_: object) -> float:
        raise AssertionError("deploy must use its injected clock, not the time module")
    monkeypatch.setattr(time, "sleep", refuse)
    monkeypatch.setattr(time, "monotonic", refuse)


def _ready(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    return fleet.services[NAME]


def _slow_ready(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.verdicts[NEW] = Verdict(reads_to_settle=3)
    return fleet.services[NAME]


def _failed(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=2)
    return fleet.services[NAME]


def _stale_once(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.stale_updates[NAME] = 1  # a label edit lands between our read and our write
    return fleet.services[NAME]


def _stale_forever(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.stale_updates[NAME] = deploy.MAX_STALE_RETRIES + 5
    return fleet.services[NAME]


def _changed_since_planning(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    planned = fleet.services[NAME]
    fleet.write_by_someone_else(NAME, {0: OTHER})  # a human deploys between planning and the task
    return planned


def _crashed_before_rollback(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    """A worker updated the service, saw the revision fail and died before rolling back; the
    task is redelivered and the new worker reads the service on the failed target."""
    fleet.verdicts[NEW] = Verdict(ready=False)
    fleet.update_images(fleet.services[NAME], {0: NEW}, annotations=ledger.rolled(RID, BASE, (OLD,)),
                        timeout=TIMEOUT_S)
    return fleet.services[NAME]


def _crashed_after_ready(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    """The task is redelivered after a worker's update already went ready (a lost ack)."""
    fleet.update_images(fleet.services[NAME], {0: NEW}, annotations=ledger.rolled(RID, BASE, (OLD,)),
                        timeout=TIMEOUT_S)
    return fleet.services[NAME]


def _on_target_failing_not_ours(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    """On the target but failing, with no ledger of ours: nothing to restore it to."""
    fleet.verdicts[NEW] = Verdict(ready=False)
    fleet.update_images(fleet.services[NAME], {0: NEW}, annotations={}, timeout=TIMEOUT_S)
    return fleet.services[NAME]


def _rollback_update_refused(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.verdicts[NEW] = Verdict(ready=False)

    def refuse_after_first_update(name: str) -> None:
        if fleet.updates:  # the target landed: the next update is the rollback
            fleet.failing_updates[name] = "403 PERMISSION_DENIED: run.services.update"

    fleet.before_update.append(refuse_after_first_update)
    return fleet.services[NAME]


def _rollback_not_ready(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.verdicts[NEW] = Verdict(ready=False)
    fleet.verdicts[OLD] = Verdict(ready=False, reason="CONTAINER_MISSING", message="Image not found")
    return fleet.services[NAME]


def _already_rolled_back(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.write_by_someone_else(NAME, annotations=ledger.rolled_back(RID, BASE, f"{FAILED}: crashed"))
    return fleet.services[NAME]


def _rolled_back_from_an_older_target(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    """A rollback from another base digest does not block this one."""
    fleet.write_by_someone_else(NAME, annotations=ledger.rolled_back("python-aaaa", "sha256:" + "a" * 64, FAILED))
    return fleet.services[NAME]


def _never_settles(fleet: FakeFleet, clock: FakeClock) -> ServiceView:
    fleet.verdicts[NEW] = Verdict(reads_to_settle=10**6)
    return fleet.services[NAME]


@dataclass(frozen=True)
class Case:
    arrange: Callable[[FakeFleet, FakeClock], ServiceView]  # returns the view the task was planned on
    result: str
    reason: str  # a part of the outcome's reason ("" = empty reason)
    update_calls: int  # update_images calls, refused ones included
    landed: tuple[str, ...]  # images of the updates that landed, in order
    final: str  # the service's image at the end
    state: str | None  # the ledger state at the end (None: no ledger)
    ledger_reason: str = ""  # a part of the ledger's reason


CASES = {
    "ready": Case(_ready, "updated", "", 1, (NEW,), NEW, ledger.ROLLED),
    "ready-after-polling": Case(_slow_ready, "updated", "", 1, (NEW,), NEW, ledger.ROLLED),
    "failed-rolled-back": Case(_failed, "rolled-back", FAILED, 2, (NEW, OLD), OLD, ledger.ROLLED_BACK, FAILED),
    "stale-etag-then-success": Case(_stale_once, "updated", "", 2, (NEW,), NEW, ledger.ROLLED),
    "stale-etag-every-time": Case(_stale_forever, "failed", "etag conflicts", deploy.MAX_STALE_RETRIES + 1, (),
                                  OLD, None),
    "changed-since-planning": Case(_changed_since_planning, "skipped", deploy.CHANGED_SINCE_PLANNING, 1, (),
                                   OTHER, None),
    "redelivered-after-crash-finishes-rollback": Case(_crashed_before_rollback, "rolled-back", FAILED, 1, (OLD,),
                                                      OLD, ledger.ROLLED_BACK, FAILED),
    "redelivered-after-ready": Case(_crashed_after_ready, "already-current", "already on the target", 0, (), NEW,
                                    ledger.ROLLED),
    "on-target-failing-not-ours": Case(_on_target_failing_not_ours, "failed", f"on the target but {FAILED}", 0, (),
                                       NEW, None),
    "rollback-update-fails": Case(_rollback_update_refused, "rollback-failed", "rollback: 403 PERMISSION_DENIED",
                                  2, (NEW,), NEW, ledger.ROLLED),
    "rollback-not-ready": Case(_rollback_not_ready, "rollback-failed", "rollback: CONTAINER_MISSING", 2, (NEW, OLD),
                               OLD, ledger.ROLLED_BACK, FAILED),
    "already-rolled-back-skipped": Case(_already_rolled_back, "skipped", "already rolled back from this target: "
                                        f"{FAILED}: crashed", 0, (), OLD, ledger.ROLLED_BACK, FAILED),
    "rolled-back-from-another-target": Case(_rolled_back_from_an_older_target, "updated", "", 1, (NEW,), NEW,
                                            ledger.ROLLED),
    "readiness-deadline-passes": Case(_never_settles, "rolled-back", "readiness deadline passed", 2, (NEW, OLD), OLD,
                                      ledger.ROLLED_BACK, "readiness deadline passed"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_apply(case: Case) -> None:
    fleet = FakeFleet([ServiceView(NAME, (OLD,), labels={"team": "shop"})])
    clock = FakeClock()
    planned = case.arrange(fleet, clock)
    fleet.calls.clear()
    fleet.updates.clear()

    out = deploy.apply(fleet, planned, deploy.Target({0: NEW}), rollout=RID, base_digest=BASE, timeout_s=TIMEOUT_S,
                       clock=clock)

    assert (out.result, out.service) == (case.result, NAME)
    assert case.reason in out.reason and (case.reason or not out.reason), out.reason
    assert fleet.calls["update_images"] == case.update_calls, fleet.calls
    assert tuple(images[0] for _, images, _ in fleet.updates) == case.landed
    svc = fleet.services[NAME]
    assert svc.images == (case.final,)
    assert svc.labels == {"team": "shop"}
    assert svc.annotations.get(ledger.STATE) == case.state
    if case.state is not None:
        assert case.ledger_reason in svc.annotations[ledger.REASON]
    if case.state == ledger.ROLLED_BACK and case.result == "rolled-back":
        assert svc.annotations[ledger.ROLLOUT_ID] == RID and svc.annotations[ledger.BASE_DIGEST] == BASE
        assert out.after == (OLD,)


def test_a_rolled_service_records_what_it_ran_before() -> None:
    """The ledger keeps the images the rollout replaced: a redelivered task restores from it."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                 timeout_s=TIMEOUT_S, clock=FakeClock())
    ann = fleet.services[NAME].annotations
    assert (ann[ledger.ROLLOUT_ID], ann[ledger.BASE_DIGEST]) == (RID, BASE)
    assert ledger.previous(ann) == ((OLD,), ())


def test_readiness_is_polled_on_the_injected_clock() -> None:
    """Waiting for a revision sleeps on the clock it is given (no real time passes), and gives up
    once the clock passes the readiness deadline."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    clock = FakeClock()
    _never_settles(fleet, clock)
    start = clock.monotonic()
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=clock)
    assert out.reason == "readiness deadline passed"
    assert set(clock.slept) == {deploy.POLL_INTERVAL_S}
    assert TIMEOUT_S <= clock.monotonic() - start <= TIMEOUT_S + deploy.POLL_INTERVAL_S


def test_only_the_targeted_container_changes() -> None:
    """A sidecar the target does not name keeps its image, and a change to it alone is not a
    reason to skip."""
    sidecar, sidecar2 = "reg.example.com/tools/proxy@sha256:" + "4" * 64, "reg.example.com/tools/proxy@sha256:" + "5" * 64
    fleet = FakeFleet([ServiceView(NAME, (OLD, sidecar))])
    planned = fleet.services[NAME]
    fleet.write_by_someone_else(NAME, {1: sidecar2})
    out = deploy.apply(fleet, planned, deploy.Target({0: NEW}), rollout=RID, base_digest=BASE, timeout_s=TIMEOUT_S,
                       clock=FakeClock())
    assert out.result == "updated"
    assert fleet.services[NAME].images == (NEW, sidecar2)


def test_base_image_uri_target() -> None:
    """A container whose base Cloud Run manages moves its base_image_uri pin; its image stays."""
    old_uri, new_uri = "reg.example.com/bases/python@" + "sha256:" + "a" * 64, "reg.example.com/bases/python@" + BASE
    fleet = FakeFleet([ServiceView(NAME, (OLD,), base_image_uris=(old_uri,))])
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({}, {0: new_uri}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    assert out.result == "updated"
    svc = fleet.services[NAME]
    assert (svc.images, svc.base_image_uris) == ((OLD,), (new_uri,))
    assert ledger.previous(svc.annotations) == ((OLD,), (old_uri,))


def test_ledger_state_values_are_what_fleets_already_carry() -> None:
    """The ledger lives on the services: renaming a state would orphan every rollout recorded so far."""
    assert (ledger.ROLLED, ledger.ROLLED_BACK) == ("rolled", "rolled-back")
    assert ledger.rolled(RID, BASE, (OLD,))[ledger.STATE] == "rolled"
    assert ledger.rolled_back(RID, BASE, FAILED)[ledger.STATE] == "rolled-back"


# ---------------------------------------------------------------- Cloud Run's documented failure, found fast


def test_a_failed_revision_is_found_at_its_terminal_condition_not_at_the_deadline() -> None:
    """On failure Cloud Run keeps observed_generation at the last serving generation; the gate reads
    the terminal condition first, so it rolls back after the revision settles, with Cloud Run's reason."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=2)
    clock = FakeClock()
    start = clock.monotonic()
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=clock)
    assert (out.result, out.reason.split(":")[0]) == ("rolled-back", FAILED)
    assert clock.monotonic() - start <= 3 * deploy.POLL_INTERVAL_S  # a few polls, not TIMEOUT_S


# ---------------------------------------------------------------- rollback only undoes our own change


def _someone_deploys_during_the_gate(fleet: FakeFleet, image: str) -> None:
    """A person's deploy lands after our update, before our rollback."""
    def hotfix(name: str) -> None:
        if len(fleet.updates) == 1 and fleet.services[name].images == (NEW,):
            fleet.write_by_someone_else(name, {0: image})
    fleet.before_update.append(hotfix)


def test_a_hotfix_deployed_during_the_gate_is_not_rolled_back() -> None:
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=1)
    _someone_deploys_during_the_gate(fleet, OTHER)
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    assert out.result == "failed" and out.reason.startswith(deploy.CHANGED_DURING_GATE + ": " + FAILED)
    svc = fleet.services[NAME]
    assert svc.images == (OTHER,)  # their hotfix stays
    assert [images for _, images, _ in fleet.updates] == [{0: NEW}, {}]  # our update, then the ledger only
    assert svc.annotations[ledger.STATE] == ledger.CHANGED_BY_SOMEONE_ELSE
    assert svc.annotations[ledger.REASON].startswith(ledger.CHANGED_DURING_GATE)
    assert svc.latest_created_revision == "shop-00003"  # the ledger write made no revision


def test_a_change_elsewhere_during_the_gate_still_rolls_back() -> None:
    """A label or env change by someone else is not a change to the containers we watch."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=1)
    fleet.before_update.append(lambda name: fleet.write_by_someone_else(name, annotations={"owner": "ops"})
                               if len(fleet.updates) == 1 else None)
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    assert out.result == "rolled-back"
    assert fleet.services[NAME].images == (OLD,) and fleet.services[NAME].annotations["owner"] == "ops"


def test_a_rollback_refused_as_stale_rereads_and_leaves_a_hotfix() -> None:
    """The server refuses our rollback (someone wrote); on the re-read the containers are theirs."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    fleet.verdicts[NEW] = Verdict(ready=False)

    def refuse_rollback(name: str) -> None:
        if len(fleet.updates) == 1 and fleet.services[name].images == (NEW,):
            fleet.stale_updates[name] = 1
            fleet.write_by_someone_else(name, {0: OTHER})
    fleet.before_update.append(refuse_rollback)
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    assert out.reason.startswith(deploy.CHANGED_DURING_GATE) and fleet.services[NAME].images == (OTHER,)


# ---------------------------------------------------------------- traffic-aware rolls

REV1 = "shop-00001"


def _pinned(*splits: TrafficSplit) -> FakeFleet:
    return FakeFleet([ServiceView(NAME, (OLD,), traffic=splits)])


def test_traffic_pinned_to_the_replaced_revision_follows_to_the_new_one() -> None:
    fleet = _pinned(TrafficSplit(REVISION, 100, REV1))
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    svc = fleet.services[NAME]
    new_rev = svc.latest_ready_revision
    assert out.result == "updated" and new_rev.startswith("shop-00002-b")
    assert svc.traffic == svc.traffic_statuses == (TrafficSplit(REVISION, 100, new_rev),)
    assert out.reason == svc.annotations[ledger.TRAFFIC] == f"traffic followed: 100% {REV1} -> 100% {new_rev}"
    assert traffic.from_json(svc.annotations[ledger.PREVIOUS_TRAFFIC]) == (TrafficSplit(REVISION, 100, REV1),)


def test_a_tagged_revision_keeps_its_tag_and_other_pins_stay() -> None:
    """90 % pinned to an older revision (kept), 10 % and the tag `canary` on the replaced one (moved)."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,), generation=2, latest_ready_revision="shop-00002",
                                   traffic=(TrafficSplit(REVISION, 90, REV1),
                                            TrafficSplit(REVISION, 10, "shop-00002", "canary")))])
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    svc = fleet.services[NAME]
    assert out.result == "updated"
    assert svc.traffic == (TrafficSplit(REVISION, 90, REV1), TrafficSplit(REVISION, 10, svc.latest_ready_revision,
                                                                        "canary"))


def test_a_tag_on_latest_follows_by_itself() -> None:
    fleet = _pinned(TrafficSplit(LATEST, 100, tag="live"))
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    svc = fleet.services[NAME]
    assert out.result == "updated" and svc.traffic == (TrafficSplit(LATEST, 100, tag="live"),)
    assert svc.traffic_statuses == (TrafficSplit(LATEST, 100, svc.latest_ready_revision, "live"),)
    assert svc.annotations[ledger.TRAFFIC] == "traffic kept: 100% LATEST tag=live"


def test_pinned_traffic_skip_leaves_the_service() -> None:
    fleet = _pinned(TrafficSplit(REVISION, 100, REV1))
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock(), pinned_traffic="skip")
    assert (out.result, out.reason) == ("skipped", traffic.TRAFFIC_PINNED.format(split=f"100% {REV1}"))
    assert fleet.calls["update_images"] == 0


def test_traffic_all_on_another_revision_is_skipped() -> None:
    """A person sent all traffic to an older revision (a hand rollback): a new revision would serve nothing."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,), generation=2, latest_ready_revision="shop-00002",
                                   traffic=(TrafficSplit(REVISION, 100, REV1),))])
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    assert (out.result, out.reason) == ("skipped", traffic.NO_TRAFFIC_WOULD_FOLLOW.format(split=f"100% {REV1}"))
    assert fleet.calls["update_images"] == 0


def test_a_failed_revision_with_followed_traffic_restores_the_pins() -> None:
    """Cloud Run keeps serving the last revision on failure; the rollback puts the traffic spec back."""
    fleet = _pinned(TrafficSplit(REVISION, 100, REV1))
    fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=1)
    seen: list[tuple[TrafficSplit, ...]] = []
    fleet.before_update.append(lambda name: seen.append(fleet.services[name].traffic_statuses))
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    svc = fleet.services[NAME]
    assert out.result == "rolled-back" and svc.images == (OLD,)
    assert seen[1] == (TrafficSplit(REVISION, 100, REV1),)  # while failed: still the last serving state
    assert svc.traffic == svc.traffic_statuses == (TrafficSplit(REVISION, 100, REV1),)


def test_a_deploy_that_lands_while_our_revision_settles_is_not_called_ours() -> None:
    """Someone else's revision replaced ours before it settled: not "updated", and nothing rolled back."""
    fleet = FakeFleet([ServiceView(NAME, (OLD,))])
    fleet.verdicts[NEW] = Verdict(reads_to_settle=2)
    real_get = fleet.get_service

    def get_after_a_hotfix(name: str) -> ServiceView:
        if fleet.services[name].images == (NEW,):
            fleet.write_by_someone_else(name, {0: OTHER})
        return real_get(name)
    fleet.get_service = get_after_a_hotfix  # type: ignore[method-assign]
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=TIMEOUT_S, clock=FakeClock())
    assert (out.result, out.reason) == ("failed", f"{deploy.CHANGED_DURING_GATE}: our revision was replaced")
    assert fleet.services[NAME].images == (OTHER,)
    assert fleet.services[NAME].annotations[ledger.STATE] == ledger.CHANGED_BY_SOMEONE_ELSE
