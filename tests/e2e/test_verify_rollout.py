"""Issue #15 end to end, on revisions that really run: the Cloud Run stand-in pulls each revision's image,
starts it chrooted and serves it behind its loopback proxy; the fleet is busybox-httpd apps on a busybox
base (infra/local/server_apps.py). Three patches of the base, pushed in turn, each rolled through Pub/Sub
and the functions while simulated users hit every service URL:

- good: every service rolls, its new revision verified at zero traffic, then given the traffic;
- answers-500: every new revision starts and listens, verification gets 500 from its tag URL, and the
  traffic never moves: the service's traffic is as it was and the previous revision answers;
- startup-broken: no new revision listens, readiness fails, the service is rolled back.

No user request may be answered by a revision on a broken base; the count is printed (pytest -s).
"""
from __future__ import annotations

import time

import pytest
from baseroll.contracts import ledger
from google.cloud import run_v2

from infra.local import scenario, server_apps
from infra.local.stack import LocalStack
from infra.local.users import Tally

pytestmark = pytest.mark.e2e

SERVICES = 4  # one per app kind (annotated OCI, plain OCI, Docker schema 2) and location
USERS = {"threads": 2, "pause_s": 0.05, "max_seconds": 120, "max_requests": 20_000}


@pytest.fixture(scope="module")
def stack():
    # One wave and no failure budget to speak of: every service meets every base, so each is asserted on.
    with LocalStack(run_revisions=True, extra_tracks=[server_apps.TRACK], ready_timeout_s=30,
                    rollout={"waves": [1.0], "failure_budget": "100%"}) as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_server_fleet(stack, SERVICES)


def roll(stack, fleet, flavour: str):
    """Push the next patch in `flavour` and roll it with users on every service; (new base, record, tally)."""
    new_base = scenario.push_server_base(stack, fleet, flavour)
    t0 = time.monotonic()
    with scenario.simulated_users(stack, fleet.services, **USERS) as users:
        scenario.publish_push(stack, new_base, server_apps.TAG)
        record = scenario.wait_rollout(stack, scenario.rollout_id(server_apps.BASE, new_base), timeout=90)
        print(f"\n[{flavour}] rollout {record['status']} in {time.monotonic() - t0:.1f} s")
        time.sleep(1.0)  # users keep coming after the rollout: they meet whatever now serves
    return new_base, record, users.tally


def report(flavour: str, tally: Tally, failing: set[str]) -> int:
    answered_by_failing = tally.from_revisions(failing)
    print(f"\n[{flavour}] simulated users sent {tally.sent} requests, statuses {dict(tally.statuses)}; "
          f"answered by a failing revision: {answered_by_failing}")
    return answered_by_failing


def serving(stack, service: str) -> tuple[run_v2.Service, scenario.Answer]:
    """The service as the Admin API shows it, and what one user request to its URL gets."""
    return stack.run_client().get_service(name=service), scenario.ask(stack, service)


def traffic(svc: run_v2.Service) -> list[tuple]:
    return [(t.type_, t.revision, t.percent, t.tag) for t in svc.traffic]


def test_good_base_rolls_and_is_verified_before_it_gets_traffic(stack, fleet):
    new_base, record, tally = roll(stack, fleet, server_apps.GOOD)
    assert record["status"] == "finished", record
    patch = len(fleet.base_versions[server_apps.BASE])
    new_revisions = scenario.revisions_on(stack, fleet.services, new_base)
    for s in fleet.services:
        svc, r = serving(stack, s.name)
        assert svc.annotations[ledger.STATE] == ledger.ROLLED, (s.name, dict(svc.annotations))
        assert svc.annotations[ledger.VERIFY].startswith("passed"), svc.annotations[ledger.VERIFY]
        assert scenario.on_base(stack, svc.template.containers[0].image, new_base)
        # All the traffic on the new revision, no tag left behind.
        assert [(t.percent, t.tag) for t in svc.traffic_statuses] == [(100, "")], svc.traffic_statuses
        assert r.revision in new_revisions
        assert (r.status, r.body) == (200, f"{s.app} says: hello from busybox 1.35 patch {patch}\n")
    assert report("good", tally, set()) == 0 and tally.server_errors == 0, tally.first_error
    assert tally.from_revisions(new_revisions) > 0, "users must have met the new revisions too"


def test_base_answering_500_is_caught_at_zero_traffic_and_traffic_never_moves(stack, fleet):
    before = {s.name: serving(stack, s.name) for s in fleet.services}
    served_before = dict(stack.cloudrun.proxy.served)
    new_base, record, tally = roll(stack, fleet, server_apps.ANSWERS_500)
    assert record["status"] in ("finished", "halted"), record
    failing = scenario.revisions_on(stack, fleet.services, new_base)
    assert len(failing) == SERVICES, "each service must have had a revision on the broken base, started and probed"
    for s in fleet.services:
        (old, old_answer), (svc, r) = before[s.name], serving(stack, s.name)
        assert svc.annotations[ledger.STATE] == ledger.ROLLED_BACK, (s.name, dict(svc.annotations))
        verify = svc.annotations[ledger.VERIFY]
        assert svc.annotations[ledger.REASON].startswith("verification failed"), svc.annotations[ledger.REASON]
        assert verify.startswith("failed") and "500" in verify and "cannot read /etc/baseroll/greeting" in verify, verify
        # Traffic never moved: as it was, served by the same revision, which answers as before.
        assert traffic(svc) == traffic(old) and svc.template.containers[0].image == old.template.containers[0].image
        # Putting the template back makes a revision of the old image (Cloud Run makes one per template
        # change): the one that answers now runs what answered before, and answers the same.
        images = scenario.revision_images(stack, s.name)
        assert r.revision not in failing and images[r.revision] == images[old_answer.revision], (r, old_answer)
        assert (r.status, r.body) == (old_answer.status, old_answer.body)
    # The failing revisions did answer, but only verification's requests to their tag URLs.
    answered = {rev: n - served_before.get(rev, 0) for rev, n in stack.cloudrun.proxy.served.items() if rev in failing}
    assert set(answered) == failing and all(n >= 1 for n in answered.values()), answered
    assert report("answers-500", tally, failing) == 0 and tally.server_errors == 0, tally.first_error
    assert tally.sent > 0


def test_base_breaking_startup_is_rolled_back_by_readiness(stack, fleet):
    before = {s.name: serving(stack, s.name) for s in fleet.services}
    new_base, record, tally = roll(stack, fleet, server_apps.STARTUP_BROKEN)
    assert record["status"] in ("finished", "halted"), record
    failing = scenario.revisions_on(stack, fleet.services, new_base)
    assert failing, "the broken revisions must have been created"
    for s in fleet.services:
        (old, old_answer), (svc, r) = before[s.name], serving(stack, s.name)
        assert svc.annotations[ledger.STATE] == ledger.ROLLED_BACK, (s.name, dict(svc.annotations))
        assert "HEALTH_CHECK_CONTAINER_ERROR" in svc.annotations[ledger.REASON] \
            or "failed to start and listen" in svc.annotations[ledger.REASON], svc.annotations[ledger.REASON]
        assert svc.template.containers[0].image == old.template.containers[0].image
        images = scenario.revision_images(stack, s.name)
        assert r.revision not in failing and images[r.revision] == images[old_answer.revision], (r, old_answer)
        assert (r.status, r.body) == (old_answer.status, old_answer.body)
    assert not set(stack.cloudrun.proxy.served) & failing, "a revision that never listened answered a request"
    assert report("startup-broken", tally, failing) == 0 and tally.server_errors == 0, tally.first_error
