from baseroll.fleet.health import assess
from baseroll.fleet.view import ServiceView


def view(**kw) -> ServiceView:
    base = dict(name="projects/p/locations/l/services/s", images=("x",), generation=2, observed_generation=2,
                latest_created_revision="s-2", latest_ready_revision="s-2", terminal_state="CONDITION_SUCCEEDED")
    return ServiceView(**{**base, **kw})


def test_ready_failed_pending():
    assert assess(view()).state == "ready"
    assert assess(view(observed_generation=1)).state == "pending"
    assert assess(view(reconciling=True)).state == "pending"
    assert assess(view(latest_ready_revision="s-1")).state == "pending"
    failed = assess(view(latest_ready_revision="s-1", terminal_state="CONDITION_FAILED",
                         terminal_reason="CONTAINER_MISSING", terminal_message="image not found"))
    assert failed.state == "failed" and failed.reason.startswith("CONTAINER_MISSING")
