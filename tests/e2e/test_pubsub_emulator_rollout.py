"""One rollout end to end on gcloud's own Pub/Sub emulator instead of the stand-in: Artifact Registry's
event published on `gcr`, and every hop after it (requests, tasks, results) pushed by the emulator to the
functions as plain Pub/Sub push bodies, which functions-framework turns into CloudEvents
(docs/GOOGLE_APIS.md#pubsub-emulator). A dozen services, so it stays cheap."""
from __future__ import annotations

import pytest

from infra.local import pubsub_emulator, scenario
from infra.local.pubsub_emulator import PubSubEmulator
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

SERVICES = 12


def test_a_small_fleet_rolls_through_the_real_pubsub_emulator() -> None:
    reason = pubsub_emulator.missing()
    if reason:  # the same rollout on the stand-in is tests/e2e/test_fleet_rollout.py's
        pytest.skip(f"gcloud's Pub/Sub emulator is absent: {reason}")
    with LocalStack(ready_timeout_s=20, pubsub_emulator=True, projects=("tenants-prod-a",),
                    regions=("us-central1",), targets=("on_artifact_push", "roll_service", "on_roll_result")) as stack:
        assert isinstance(stack.pubsub, PubSubEmulator)
        fleet = scenario.seed_fleet(stack, services=SERVICES, canaries=2)
        before = stack.update_counts()
        new_base = scenario.push_new_base(stack, fleet, "python")
        scenario.publish_push(stack, new_base, "3.12")
        rid = scenario.rollout_id("python", new_base)
        record = scenario.wait_rollout(stack, rid, timeout=60)
        assert record["status"] == "finished", record

        after = stack.update_counts()
        eligible = [s for s in fleet.services if s.eligible_for("python")]
        assert eligible, "the seeded fleet has services on the python track"
        for r in scenario.results(stack, fleet):
            delta = after[r.seeded.name] - before.get(r.seeded.name, 0)
            if r.seeded.eligible_for("python"):
                assert delta == 1 and r.changed and scenario.on_base(stack, r.image, new_base), r.seeded.name
            else:
                assert delta == 0 and not r.changed, r.seeded.name
        # The coordinator saw every wave settle from the results the emulator pushed back to it.
        settled = [r["wave"] for r in stack.log_records("wave.settled") if r["rollout_id"] == rid]
        assert settled == list(range(len(record["waves"])))
