"""Pure readiness decisions over a ServiceView (docs/GOOGLE_APIS.md, Cloud Run v2: conditions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from baseroll.fleet.view import ServiceView


@dataclass(frozen=True)
class Health:
    state: Literal["ready", "failed", "pending"]
    reason: str = ""


def assess(svc: ServiceView) -> Health:
    """Ready when the latest generation is observed, its revision is the latest ready one and the
    terminal condition succeeded; failed when the observed generation's terminal condition failed."""
    if svc.observed_generation != svc.generation or svc.reconciling:
        return Health("pending", "reconciling")
    if svc.terminal_state == "CONDITION_FAILED":
        reason = svc.terminal_reason or "UNKNOWN"
        return Health("failed", f"{reason}: {svc.terminal_message}".rstrip(": "))
    if svc.latest_created_revision and svc.latest_ready_revision == svc.latest_created_revision:
        if svc.terminal_state in ("CONDITION_SUCCEEDED", ""):
            return Health("ready")
    return Health("pending", "latest revision not ready yet")
