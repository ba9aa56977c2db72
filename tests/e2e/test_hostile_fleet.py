"""A fleet in which some tenants' images live on a hostile registry (infra/local/hostile_registry.py):
one answers 401 naming a token realm on the attacker host, one redirects to the attacker host.
Every other eligible service rolls; those are skipped with the reason; the attacker host sees no
credential (it records every header); no registry call outlives its deadline."""
from __future__ import annotations

import time

import pytest
from baseroll.images.registry.transport import DEFAULT_DEADLINE

from infra.local import scenario, seed
from infra.local.hostile_registry import Hostile
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

HOSTILE_CASES = ("realm-elsewhere", "redirect")
# The redirecting repository is on the same registry host as the one that named the attacker's realm:
# once that host has said how it authenticates, the redirect case may fail on the realm first.
REASONS = {"realm-elsewhere": ("refused token realm",), "redirect": ("refused location", "refused token realm")}


class HostileStack(LocalStack):
    """The local stack with the hostile registry allow-listed, as a tenant's registry would be."""

    def __init__(self, hostile_host: str, **kw) -> None:
        super().__init__(**kw)
        self.hostile_host = hostile_host

    def config(self) -> dict:
        cfg = super().config()
        cfg["allowed_registries"] = [*cfg["allowed_registries"], self.hostile_host]
        return cfg


@pytest.fixture(scope="module")
def world():
    with Hostile() as hostile, HostileStack(hostile.registry.host) as stack:
        # Cloud Run can pull from the tenant's registry (the stand-in reaches only the local one).
        checker = stack.cloudrun._checker
        own_check = checker.check
        checker.check = lambda image: None if image.startswith(hostile.registry.host) else own_check(image)
        fleet = scenario.seed_fleet(stack, services=10, canaries=2)
        bad = {}
        for i, case in enumerate(HOSTILE_CASES):
            name = f"projects/{stack.projects[0]}/locations/{stack.regions[0]}/services/hostile-{i}"
            image = f"{hostile.registry.host}/{case}/app:v1"
            seed.create_service(stack.run_client(), name, image, labels={"tenant": f"hostile-{i}"})
            bad[name] = case
        yield hostile, stack, fleet, bad


def test_one_bad_registry_never_stalls_the_fleet_nor_gets_a_credential(world):
    hostile, stack, fleet, bad = world
    before = stack.update_counts()
    started = time.monotonic()
    new_base = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, new_base, "3.12")
    record = scenario.wait_rollout(stack, scenario.rollout_id("python", new_base), timeout=180)
    took = time.monotonic() - started
    assert record["status"] == "finished", record

    rolled = []
    for r in scenario.results(stack, fleet):
        if r.seeded.eligible_for("python") and not scenario.other_track(r.seeded, "python"):
            assert r.changed and scenario.on_base(stack, r.image, new_base), r
            rolled.append(r.seeded.name)
        else:
            assert not r.changed, r
    after = stack.update_counts()
    reasons = scenario.planned_reasons(stack)
    for name, case in bad.items():
        assert after.get(name, 0) == before.get(name, 0), name  # never updated
        assert any(why in reasons.get(name, "") for why in REASONS[case]), (name, reasons.get(name))
    seen = hostile.attacker.seen
    assert hostile.attacker.credentials_seen() == [], seen
    assert hostile.registry.longest_call() < DEFAULT_DEADLINE
    print(f"\nhostile fleet: {len(rolled)} services rolled in {took:.1f}s; skipped: "
          + "; ".join(f"{n.rsplit('/', 1)[-1]}: {reasons.get(n)}" for n in bad)
          + f"; attacker host saw {len(seen)} request(s), headers {sorted({k for s in seen for k in s.headers})}"
          + f"; longest hostile-registry call {hostile.registry.longest_call():.2f}s")
