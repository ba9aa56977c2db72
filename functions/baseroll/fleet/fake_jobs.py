"""In-memory jobs for unit tests of `workload_deploy`, beside `fake.FakeFleet` (which also serves as
the fake of worker pools: they deploy revisions as services do).

A job is a `FakeFleet` entry without revisions or traffic: an update makes a new generation that
reconciles (or fails, by the scripted `Verdict` of its image) with the semantics of the `Job.reconciling`
docstring, and starts no execution. `run_execution` makes an execution that copies the job's images at
that moment (a later update never changes it) and finishes after a scripted number of reads, as
succeeded or failed (docs/GOOGLE_APIS.md#jobs-and-worker-pools). Every call is counted.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from baseroll.fleet.fake import FakeFleet
from baseroll.fleet.view import FleetError, ServiceView
from baseroll.fleet.workloads import ExecutionView


@dataclass
class Run:
    """How an execution of an image runs: succeeds, or fails with Cloud Run's execution reason."""

    succeeds: bool = True
    reads_to_finish: int = 0  # reads of the execution before it finishes
    reason: str = "NON_ZERO_EXIT_CODE"
    message: str = "Task failed: the container exited with code 1"


class FakeJobs(FakeFleet):
    def __init__(self, jobs: list[ServiceView] | None = None) -> None:
        super().__init__()
        self.runs: dict[str, Run] = {}  # image -> how its executions run; default: succeed at the first read
        self.executions_of: dict[str, list[ExecutionView]] = {}  # job -> executions, newest first
        self._left: dict[str, int] = {}  # execution -> reads before it finishes
        self._run_of: dict[str, Run] = {}
        for job in jobs or []:
            self.add(job)

    def add(self, svc: ServiceView) -> ServiceView:
        super().add(dataclasses.replace(svc, kind="job"))
        return self._as_job(svc.name)

    def start_execution(self, job: str, run: Run | None = None) -> ExecutionView:
        """An execution someone else started (a schedule), of the job as it is now."""
        images = self.services[job].images
        n = len(self.executions_of.get(job, [])) + 1
        ex = ExecutionView(f"{job}/executions/{job.rsplit('/', 1)[-1]}-{n:05d}", images, "running")
        self.executions_of.setdefault(job, []).insert(0, ex)
        self._run_of[ex.name] = run or self._script(images)
        self._left[ex.name] = self._run_of[ex.name].reads_to_finish
        return ex

    # ------------------------------------------------------------------ the JobFleet port

    def run_execution(self, job: str) -> ExecutionView:
        self.calls["run_execution"] += 1
        if job not in self.services:
            raise FleetError(f"job {job} not found")
        return self.start_execution(job)

    def get_execution(self, name: str) -> ExecutionView:
        self.calls["get_execution"] += 1
        job = name.split("/executions/")[0]
        ex = next((e for e in self.executions_of.get(job, []) if e.name == name), None)
        if ex is None:
            raise FleetError(f"execution {name} not found")
        if ex.state != "running":
            return ex
        if self._left[name] > 0:
            self._left[name] -= 1
            return ex
        run = self._run_of[name]
        done = dataclasses.replace(ex, state="succeeded") if run.succeeds else dataclasses.replace(
            ex, state="failed", reason=run.reason, message=run.message)
        self.executions_of[job] = [done if e.name == name else e for e in self.executions_of[job]]
        return done

    def executions(self, job: str, limit: int = 50) -> list[ExecutionView]:
        self.calls["executions"] += 1
        return list(self.executions_of.get(job, []))[:limit]

    # ------------------------------------------------------------------ jobs have no revisions

    def _store(self, svc: ServiceView, *args: Any, **kwargs: Any) -> ServiceView:
        super()._store(svc, *args, **kwargs)
        return self._as_job(svc.name)

    def _settle(self, name: str) -> None:
        super()._settle(name)
        self._as_job(name)

    def _as_job(self, name: str) -> ServiceView:
        job = dataclasses.replace(self.services[name], kind="job", latest_ready_revision="",
                                  latest_created_revision="", traffic_statuses=())
        self.services[name] = job
        return job

    def _script(self, images: tuple[str, ...]) -> Run:
        return next((self.runs[i] for i in images if i in self.runs), Run())
