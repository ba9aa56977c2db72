"""Verify at zero traffic through `deploy.apply`, on the in-memory fleet and prober: every transition.

Each case checks the traffic of every write (docs/GOOGLE_APIS.md#verify-at-zero-traffic), the
requests sent (to the tag's URL, audience the service URL), where the service ends and the ledger.
"""
from __future__ import annotations

import pytest
from baseroll.clock import FakeClock
from baseroll.contracts import ledger
from baseroll.fleet import deploy, traffic
from baseroll.fleet.fake import FakeFleet, FakeProber, Verdict
from baseroll.fleet.verification import VERIFY_TAG, Check, Probe, Reply
from baseroll.fleet.view import (
    ALL_TO_LATEST,
    LATEST,
    REVISION,
    ServiceView,
    TrafficSplit,
)

from tests.unit.test_deploy import no_real_time  # noqa: F401  (autouse: deploy waits only on its clock)

NAME = "projects/tenants-a/locations/us-central1/services/shop"
OLD = "reg.example.com/apps/shop@sha256:" + "1" * 64
NEW = "reg.example.com/apps/shop@sha256:" + "2" * 64
BASE = "sha256:" + "b" * 64
RID = ledger.rollout_id("python", BASE)
REV0, REV1 = "shop-00000", "shop-00001"  # an older revision, and the one serving when the task begins
URI = "https://shop-tenants-a.us-central1.run.app"
TAG_URI = f"https://{VERIFY_TAG}---shop-tenants-a.us-central1.run.app"


def world(*splits: TrafficSplit) -> tuple[FakeFleet, FakeProber]:
    return FakeFleet([ServiceView(NAME, (OLD,), traffic=splits or ALL_TO_LATEST)]), FakeProber()


DEFAULT_PROBE = Probe()


def roll(fleet: FakeFleet, prober: FakeProber, probe: Probe = DEFAULT_PROBE) -> deploy.Outcome:
    return deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                        timeout_s=60.0, clock=FakeClock(), check=Check(probe, prober))


def new_revision() -> str:
    return traffic.revision_name(ServiceView(NAME, (OLD,), generation=1), (NEW,))


# ---------------------------------------------------------------- pass

PASS_CASES = {
    # name: (the traffic before, the traffic of the deploy (the new revision's tag entry appended), after a pass)
    "all on LATEST": ((TrafficSplit(LATEST, 100),), (TrafficSplit(REVISION, 100, REV1),),
                      (TrafficSplit(LATEST, 100),)),
    "pinned to the serving revision": ((TrafficSplit(REVISION, 100, REV1),), (TrafficSplit(REVISION, 100, REV1),),
                                       (TrafficSplit(REVISION, 100, "{new}"),)),
    "split: an older pin kept, LATEST pinned during the check": (
        (TrafficSplit(REVISION, 80, REV0), TrafficSplit(LATEST, 20)),
        (TrafficSplit(REVISION, 80, REV0), TrafficSplit(REVISION, 20, REV1)),
        (TrafficSplit(REVISION, 80, REV0), TrafficSplit(LATEST, 20))),
    "a user's tag on LATEST stays": ((TrafficSplit(LATEST, 100, tag="live"),),
                                     (TrafficSplit(REVISION, 100, REV1, "live"),),
                                     (TrafficSplit(LATEST, 100, tag="live"),)),
}


@pytest.mark.parametrize("name", PASS_CASES)
def test_a_passing_revision_gets_the_traffic_the_service_had(name: str) -> None:
    before, during, after = PASS_CASES[name]
    fleet, prober = world(*before)
    out = roll(fleet, prober)
    svc, new = fleet.services[NAME], new_revision()
    assert out.result == "updated", out.reason
    assert out.reason.startswith("3 x GET / -> 200")
    tag = TrafficSplit(REVISION, 0, new, VERIFY_TAG)
    resolve = tuple(TrafficSplit(t.type, t.percent, t.revision.replace("{new}", new), t.tag) for t in after)
    assert fleet.traffic_writes == [during + (tag,), resolve]  # deploy at 0 %, then the traffic back
    assert svc.traffic == resolve and svc.images == (NEW,) and svc.latest_ready_revision == new
    assert VERIFY_TAG not in svc.tag_uris
    assert prober.sent == [("GET", TAG_URI + "/", URI)] * 3
    assert svc.annotations[ledger.STATE] == ledger.ROLLED
    assert svc.annotations[ledger.VERIFY] == "passed: 3 x GET / -> 200"
    assert traffic.from_json(svc.annotations[ledger.PREVIOUS_TRAFFIC]) == before


def test_the_path_and_expected_statuses_come_from_the_probe() -> None:
    fleet, prober = world()
    prober.default = Reply(204)
    out = roll(fleet, prober, Probe(path="/healthz", expect_status=(204,), requests=2))
    assert out.result == "updated" and prober.sent == [("GET", TAG_URI + "/healthz", URI)] * 2


# ---------------------------------------------------------------- fail

FAIL_CASES = {
    "500": (Reply(500, b"Internal Server Error: /etc/app.conf: No such file " + b"x" * 400), "answered 500"),
    "timeout": (Reply(None, error="timed out after 5 s"), "no answer (timed out after 5 s)"),
    "403 from Cloud Run": (Reply(403, b"Your client does not have permission"),
                           "answered 403 (Cloud Run refused the worker's ID token: roles/run.invoker?)"),
    "401 from Cloud Run": (Reply(401, b""), "answered 401"),
}


@pytest.mark.parametrize("name", FAIL_CASES)
def test_a_failing_revision_never_gets_traffic_and_is_rolled_back(name: str) -> None:
    reply, why = FAIL_CASES[name]
    fleet, prober = world()
    prober.default = reply
    out = roll(fleet, prober)
    svc, new = fleet.services[NAME], new_revision()
    assert out.result == "rolled-back" and "verification failed: request 1/3 GET / " + why in out.reason
    assert len(prober.sent) == 1  # the first failing request ends the check
    # deploy (0 % + tag), rollback (pinned by name, no tag), then LATEST again
    assert fleet.traffic_writes == [(TrafficSplit(REVISION, 100, REV1), TrafficSplit(REVISION, 0, new, VERIFY_TAG)),
                                    (TrafficSplit(REVISION, 100, REV1),), ALL_TO_LATEST]
    assert [u[1] for u in fleet.updates] == [{0: NEW}, {0: OLD}, {}]
    assert svc.images == (OLD,) and svc.traffic == ALL_TO_LATEST and svc.latest_ready_revision != new
    assert svc.annotations[ledger.STATE] == ledger.ROLLED_BACK
    assert svc.annotations[ledger.VERIFY].startswith("failed: request 1/3 GET / " + why)
    assert svc.annotations[ledger.PINNED_TRAFFIC] == ""
    assert len(svc.annotations[ledger.REASON]) <= ledger.MAX_REASON
    if reply.body:
        assert "x" * 250 not in out.reason  # the body is cut at its first 200 bytes


def test_a_500_on_a_pinned_service_needs_no_last_write() -> None:
    """Traffic pinned by name already serves the old revision: the rollback writes it as it was."""
    fleet, prober = world(TrafficSplit(REVISION, 100, REV1))
    prober.default = Reply(500, b"boom")
    out = roll(fleet, prober)
    assert out.result == "rolled-back"
    assert fleet.traffic_writes[1:] == [(TrafficSplit(REVISION, 100, REV1),)]
    assert fleet.services[NAME].traffic == (TrafficSplit(REVISION, 100, REV1),)


def test_a_revision_that_does_not_start_is_rolled_back_by_readiness_without_a_request() -> None:
    fleet, prober = world()
    fleet.verdicts[NEW] = Verdict(ready=False, reads_to_settle=1)
    out = roll(fleet, prober)
    assert out.result == "rolled-back" and "HEALTH_CHECK_CONTAINER_ERROR" in out.reason
    assert prober.sent == [] and fleet.services[NAME].traffic == ALL_TO_LATEST
    assert fleet.services[NAME].images == (OLD,)


def test_no_verification_without_a_check() -> None:
    """An opted-out service (`policy.verification_probe` None): readiness only, one write, no request."""
    fleet, prober = world()
    out = deploy.apply(fleet, fleet.services[NAME], deploy.Target({0: NEW}), rollout=RID, base_digest=BASE,
                       timeout_s=60.0, clock=FakeClock())
    assert out.result == "updated" and fleet.traffic_writes == [None] and prober.sent == []


# ---------------------------------------------------------------- redelivery: nothing twice

def test_a_redelivered_task_after_a_pass_changes_nothing() -> None:
    fleet, prober = world()
    assert roll(fleet, prober).result == "updated"
    calls, sent = fleet.calls["update_images"], len(prober.sent)
    again = roll(fleet, prober)
    assert again.result == "already-current"
    assert fleet.calls["update_images"] == calls and len(prober.sent) == sent


def test_a_redelivered_task_after_a_failure_changes_nothing() -> None:
    fleet, prober = world()
    prober.default = Reply(500)
    assert roll(fleet, prober).result == "rolled-back"
    calls, sent = fleet.calls["update_images"], len(prober.sent)
    prober.default = Reply(200)
    again = roll(fleet, prober)
    assert again.result == "skipped" and again.reason.startswith("already rolled back")
    assert fleet.calls["update_images"] == calls and len(prober.sent) == sent


def _deployed_at_zero(fleet: FakeFleet) -> None:
    """What a worker that died during the check left: the deploy's write, as `deploy` makes it."""
    svc = fleet.services[NAME]
    new = new_revision()
    annotations = {**ledger.rolled(RID, BASE, (OLD,), previous_traffic=traffic.to_json(ALL_TO_LATEST),
                                   state=ledger.VERIFYING), ledger.REPLACED_REVISION: REV1}
    fleet.update_images(svc, {0: NEW}, annotations=annotations, timeout=60.0, revision=new,
                        traffic=(TrafficSplit(REVISION, 100, REV1), TrafficSplit(REVISION, 0, new, VERIFY_TAG)))


def test_a_worker_that_died_during_the_check_is_finished_by_the_redelivery() -> None:
    fleet, prober = world()
    _deployed_at_zero(fleet)
    out = roll(fleet, prober)
    assert out.result == "updated" and len(prober.sent) == 3
    assert [u[1] for u in fleet.updates] == [{0: NEW}, {}]  # no second deploy: the traffic write only
    assert fleet.services[NAME].traffic == ALL_TO_LATEST
    assert fleet.services[NAME].annotations[ledger.STATE] == ledger.ROLLED


def test_a_worker_that_died_during_the_check_of_a_failing_revision_rolls_back_on_redelivery() -> None:
    fleet, prober = world()
    _deployed_at_zero(fleet)
    prober.default = Reply(502, b"bad gateway")
    out = roll(fleet, prober)
    assert out.result == "rolled-back" and fleet.services[NAME].images == (OLD,)
    assert fleet.services[NAME].traffic == ALL_TO_LATEST


def test_a_rollback_that_died_before_restoring_the_traffic_is_finished_by_the_redelivery() -> None:
    fleet, prober = world()
    prober.default = Reply(500)
    held = (TrafficSplit(REVISION, 100, REV1),)

    def die_before_the_last_write(name: str) -> None:
        if fleet.services[name].traffic == held:
            raise SystemExit("worker killed")  # not an Exception: nothing in deploy catches it
    fleet.before_update.append(die_before_the_last_write)
    with pytest.raises(SystemExit):
        roll(fleet, prober)
    assert fleet.services[NAME].traffic == held and fleet.services[NAME].images == (OLD,)
    fleet.before_update.clear()
    out = roll(fleet, prober)
    assert out.result == "skipped" and fleet.services[NAME].traffic == ALL_TO_LATEST
    assert fleet.services[NAME].annotations[ledger.PINNED_TRAFFIC] == ""
    assert [u[1] for u in fleet.updates][-1] == {}  # the traffic write only: no new revision


def test_traffic_changed_by_someone_else_during_the_check_is_kept() -> None:
    fleet, _ = world()
    theirs = (TrafficSplit(REVISION, 100, REV1, "frozen"),)

    class Meddling(FakeProber):
        def send(self, method: str, url: str, *, audience: str, timeout_s: float) -> Reply:
            if not self.sent:
                fleet.write_by_someone_else(NAME, traffic=theirs)
            return super().send(method, url, audience=audience, timeout_s=timeout_s)
    out = roll(fleet, Meddling())
    assert out.result == "updated" and "kept as they made it" in out.reason
    assert fleet.services[NAME].traffic == theirs
