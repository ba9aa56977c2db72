"""`health.assess` follows Cloud Run's documented reconciliation (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2):
the terminal condition is read first, so a failed revision is failed at once, with Cloud Run's reason,
even though observed_generation and latest_ready_revision keep the last serving revision's state."""
from __future__ import annotations

import pytest
from baseroll.fleet import health
from baseroll.fleet.view import ServiceView

NAME = "projects/p/locations/us-central1/services/shop"
OLD_REV, NEW_REV = "shop-00001-abc", "shop-00002-def"


def _svc(**kw: object) -> ServiceView:
    base = dict(generation=2, observed_generation=2, latest_ready_revision=NEW_REV, latest_created_revision=NEW_REV,
                terminal_state="CONDITION_SUCCEEDED", reconciling=False)
    return ServiceView(NAME, ("img",), **{**base, **kw})  # type: ignore[arg-type]


CASES = {
    "succeeded": (_svc(), "ready", ""),
    "reconciling": (_svc(reconciling=True, observed_generation=1, latest_ready_revision=OLD_REV,
                         terminal_state="CONDITION_RECONCILING"), "pending", "reconciling"),
    # The documented failure: reconciling false, the terminal condition failed, the rest unchanged.
    "failed-keeps-last-serving-state": (_svc(observed_generation=1, latest_ready_revision=OLD_REV,
                                             terminal_state="CONDITION_FAILED",
                                             terminal_reason="HEALTH_CHECK_CONTAINER_ERROR",
                                             terminal_message="Revision 'shop-00002-def' is not ready"),
                                        "failed", "HEALTH_CHECK_CONTAINER_ERROR: Revision 'shop-00002-def' is not ready"),
    "failed-without-reason": (_svc(observed_generation=1, terminal_state="CONDITION_FAILED"), "failed", "UNKNOWN"),
    "generation-not-yet-observed": (_svc(observed_generation=1), "pending", "reconciling"),
    "latest-not-ready-yet": (_svc(latest_ready_revision=OLD_REV), "pending", "latest revision not ready yet"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_assess(case: tuple[ServiceView, str, str]) -> None:
    svc, state, reason = case
    assert health.assess(svc) == health.Health(state, reason)  # type: ignore[arg-type]
