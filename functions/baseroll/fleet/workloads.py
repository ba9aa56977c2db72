"""Jobs and worker pools beside services: the jobs port and pure decisions over executions.

A worker pool is rolled exactly as a service is: its adapter is a `Fleet` (instance splits read and
written as traffic) and `deploy.apply` gates it on the same revision readiness. A job is a `Fleet` too
(its template is what is updated; it has no revisions and no traffic, and `health.assess` reads a
job's readiness from its terminal condition alone) and adds executions: an update starts none, and a
running execution keeps the template it was created with (docs/GOOGLE_APIS.md#jobs-and-worker-pools).
`Workloads` is one `Fleet` over an adapter per kind, so the rollout core lists, reads and writes
every kind through one port. Pure: no SDK, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Protocol, Sequence

from baseroll.contracts import ids
from baseroll.fleet.health import Health
from baseroll.fleet.view import Fleet, FleetError, ServiceView, WorkloadKind

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


class Workloads:
    """The Fleet over the kinds rolled (`rollout.workloads`): listing lists each kind's adapter in
    turn; a read or a write goes to the adapter of the workload's kind, which its name says."""

    def __init__(self, by_kind: Mapping[WorkloadKind, Fleet]) -> None:
        self.by_kind = dict(by_kind)

    def of(self, name: str) -> Fleet:
        kind = ids.workload_kind(name)
        if kind is None:
            raise FleetError(f"{name}: not the name of a Cloud Run service, job or worker pool")
        fleet = self.by_kind.get(kind)  # type: ignore[call-overload]
        if fleet is None:
            raise FleetError(f"{name}: {kind}s are not rolled (rollout.workloads)")
        return fleet

    def list_services(self, project: str, region: str) -> Iterator[ServiceView]:
        for fleet in self.by_kind.values():
            yield from fleet.list_services(project, region)

    def get_service(self, name: str) -> ServiceView:
        return self.of(name).get_service(name)

    def update_images(self, current: ServiceView, images: Mapping[int, str], **kwargs: Any) -> ServiceView:
        return self.of(current.name).update_images(current, images, **kwargs)

    def check_reachable(self, timeout_s: float) -> None:
        """The adapters share one endpoint: the first that can check it does."""
        for fleet in self.by_kind.values():
            if hasattr(fleet, "check_reachable"):
                fleet.check_reachable(timeout_s)
                return


def adapters(fleet: Fleet) -> dict[WorkloadKind, Fleet]:
    """The adapter of each kind behind `fleet` (a lone Fleet is the services')."""
    return dict(fleet.by_kind) if isinstance(fleet, Workloads) else {"service": fleet}
