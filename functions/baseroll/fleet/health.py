"""Pure readiness decisions over a ServiceView (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2, "Reconciliation").

Cloud Run documents (the `Service.reconciling` docstring) that when reconciliation fails,
`observed_generation`, `latest_ready_revision` and `traffic_statuses` keep the last serving
revision's state and the cause is in `terminal_condition`. So the terminal condition is read
first: a generation mismatch with `reconciling` false is a failure to report with Cloud Run's
reason, not something to wait out until the readiness deadline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from baseroll.fleet.view import ServiceView

FAILED = "CONDITION_FAILED"
SUCCEEDED = "CONDITION_SUCCEEDED"


@dataclass(frozen=True)
class Health:
    state: Literal["ready", "failed", "pending"]
    reason: str = ""


def assess(svc: ServiceView) -> Health:
    """Failed when reconciliation is over and the terminal condition failed; ready when it
    succeeded and the latest generation and revision are the ones serving; else pending."""
    if svc.reconciling:
        return Health("pending", "reconciling")
    if svc.terminal_state == FAILED:
        reason = svc.terminal_reason or "UNKNOWN"
        return Health("failed", f"{reason}: {svc.terminal_message}".rstrip(": "))
    if svc.observed_generation != svc.generation:
        return Health("pending", "reconciling")
    if svc.kind == "job":  # no revisions: the template reconciled is ready (docs/GOOGLE_APIS.md#jobs-and-worker-pools)
        return Health("ready") if svc.terminal_state in (SUCCEEDED, "") else Health("pending", "not reconciled yet")
    if svc.latest_created_revision and svc.latest_ready_revision == svc.latest_created_revision:
        if svc.terminal_state in (SUCCEEDED, ""):
            return Health("ready")
    return Health("pending", "latest revision not ready yet")
