"""Jobs and worker pools beside services: the jobs port and pure decisions over executions.

A worker pool is rolled exactly as a service is: its adapter is a `Fleet` (instance splits read and
written as traffic) and `deploy.apply` gates it on the same revision readiness. A job is a `Fleet` too
(its template is what is updated; it has no revisions and no traffic, and `health.assess` reads a
job's readiness from its terminal condition alone) and adds executions: an update starts none, and a
running execution keeps the template it was created with (docs/GOOGLE_APIS.md#jobs-and-worker-pools).
Pure: no SDK, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Protocol, Sequence

from baseroll.fleet.health import Health
from baseroll.fleet.view import Fleet

ExecutionState = Literal["running", "succeeded", "failed", "cancelled"]

# The label (value "true") that asks for one verification execution after a job's template is
# updated; under the project's label prefix, beside `baseroll-opt-out` and `baseroll-cohort`.
VERIFY_EXECUTION_LABEL = "baseroll-verify-execution"


@dataclass(frozen=True)
class ExecutionView:
    name: str  # projects/P/locations/L/jobs/J/executions/E
    images: tuple[str, ...]  # the task template's, copied from the job when the execution was created
    state: ExecutionState
    reason: str = ""  # the `Completed` condition's execution_reason (e.g. NON_ZERO_EXIT_CODE), when it failed
    message: str = ""


class JobFleet(Fleet, Protocol):
    """The Fleet port over jobs (`list_services` lists jobs, `update_images` updates a job's task
    template and starts no execution), plus executions."""

    def run_execution(self, job: str) -> ExecutionView:
        """Start one execution of the job as it is now (RunJob); return it as soon as it exists."""
        ...

    def get_execution(self, name: str) -> ExecutionView: ...

    def executions(self, job: str, limit: int = 50) -> list[ExecutionView]:
        """The job's most recent executions, newest first."""
        ...


def verification_requested(labels: Mapping[str, str], label: str = VERIFY_EXECUTION_LABEL) -> bool:
    return labels.get(label) == "true"


def execution_health(ex: ExecutionView) -> Health:
    """Succeeded is ready; failed or cancelled is failed with the execution's reason; else pending."""
    if ex.state == "succeeded":
        return Health("ready")
    if ex.state == "running":
        return Health("pending", "execution running")
    return Health("failed", f"execution {ex.name.rsplit('/', 1)[-1]} {ex.state}: "
                            f"{ex.reason or 'UNKNOWN'}: {ex.message}".rstrip(": "))


def running_elsewhere(executions: Sequence[ExecutionView], images: tuple[str, ...]) -> list[ExecutionView]:
    """Executions still running on `images` (the template before an update): they finish on it."""
    return [e for e in executions if e.state == "running" and e.images == images]


def verification_of(executions: Sequence[ExecutionView], images: tuple[str, ...]) -> ExecutionView | None:
    """The newest execution created from `images` (the target): a redelivered task's verification,
    or a scheduled run that already ran the new template; either one proves it."""
    return next((e for e in executions if e.images == images), None)
