"""The Fleet port over Cloud Run jobs (with executions) and worker pools: google-cloud-run's JobsClient,
ExecutionsClient and WorkerPoolsClient, unmodified, on their default transport (gRPC).

Views are the same plain `ServiceView` as services', with `kind` set: a job's images are its task
template's, it has no revisions and no traffic; a worker pool's `instance_splits` are read and
written as traffic. Writes go through `cloudrun.TemplateFleet`, as services' do: based on a read just
before the write, refused as stale only when what the caller watches changed
(docs/GOOGLE_APIS.md#jobs-and-worker-pools).
"""
from __future__ import annotations

from typing import Any, Iterable

from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.run_v2.services.executions.transports import ExecutionsGrpcTransport
from google.cloud.run_v2.services.jobs.transports import JobsGrpcTransport
from google.cloud.run_v2.services.worker_pools.transports import WorkerPoolsGrpcTransport

from baseroll.fleet.cloudrun import READ_RETRY, WRITE_RETRY, TemplateFleet, _enum_name, _reason, make_client, terminal
from baseroll.fleet.view import (
    ALL_TO_LATEST,
    LATEST,
    REVISION,
    FleetError,
    ServiceView,
    TrafficSplit,
    WorkloadKind,
)
from baseroll.fleet.workloads import ExecutionState, ExecutionView

_SPLIT = {run_v2.InstanceSplitAllocationType.INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST: LATEST,
          run_v2.InstanceSplitAllocationType.INSTANCE_SPLIT_ALLOCATION_TYPE_REVISION: REVISION}
_SPLIT_TYPE = {name: enum for enum, name in _SPLIT.items()}


def _common(pb: Any, containers: Any, kind: WorkloadKind) -> dict[str, Any]:
    return {"name": pb.name, "images": tuple(c.image for c in containers),
            "base_image_uris": tuple(c.base_image_uri for c in containers), "labels": dict(pb.labels),
            "annotations": dict(pb.annotations), "etag": pb.etag, "generation": pb.generation,
            "observed_generation": pb.observed_generation, "reconciling": pb.reconciling, "kind": kind,
            **terminal(pb)}


def job_view(job: run_v2.Job) -> ServiceView:
    pb = run_v2.Job.pb(job)
    return ServiceView(**_common(pb, pb.template.template.containers, "job"))


def pool_view(pool: run_v2.WorkerPool) -> ServiceView:
    pb = run_v2.WorkerPool.pb(pool)
    splits = tuple(TrafficSplit(_SPLIT.get(s.type_, str(s.type_)), s.percent, s.revision) for s in pb.instance_splits)
    statuses = tuple(TrafficSplit(_SPLIT.get(s.type_, str(s.type_)), s.percent, s.revision)
                     for s in pb.instance_split_statuses)
    return ServiceView(**_common(pb, pb.template.containers, "worker-pool"),
                       latest_ready_revision=pb.latest_ready_revision,
                       latest_created_revision=pb.latest_created_revision,
                       # An empty `instance_splits` is 100 % to the latest ready revision (the field's docstring).
                       traffic=splits or ALL_TO_LATEST, traffic_statuses=statuses)


def execution_view(ex: run_v2.Execution) -> ExecutionView:
    """Its state is its `Completed` condition's (docs/GOOGLE_APIS.md#jobs-and-worker-pools); until that
    condition succeeds or fails, the execution runs."""
    pb = run_v2.Execution.pb(ex)
    done = next((c for c in pb.conditions if c.type_ == "Completed"), None)
    condition = _enum_name(done, "state") if done is not None else ""
    reason = _reason(done) if done is not None else ""
    state: ExecutionState = "running"
    if condition == "CONDITION_SUCCEEDED":
        state = "succeeded"
    elif condition == "CONDITION_FAILED":
        state = "cancelled" if reason == "CANCELLED" else "failed"
    message = done.message if done is not None and state != "succeeded" else ""
    return ExecutionView(pb.name, tuple(c.image for c in pb.template.containers), state, reason, message)


class CloudRunJobs(TemplateFleet):
    """JobFleet over JobsClient and ExecutionsClient: `list_services` lists jobs; an update changes the
    task template and starts no execution."""

    _view = staticmethod(job_view)
    _noun = "job"

    def __init__(self, jobs: run_v2.JobsClient, executions: run_v2.ExecutionsClient) -> None:
        self._jobs = jobs
        self._executions = executions

    @classmethod
    def connect(cls, endpoint: str | None = None, transport: str = "grpc") -> CloudRunJobs:
        return cls(make_client(run_v2.JobsClient, JobsGrpcTransport, endpoint, transport),
                   make_client(run_v2.ExecutionsClient, ExecutionsGrpcTransport, endpoint, transport))

    def _list(self, parent: str) -> Iterable[run_v2.Job]:
        return self._jobs.list_jobs(request=run_v2.ListJobsRequest(parent=parent, page_size=500), retry=READ_RETRY)

    def _fetch(self, name: str) -> run_v2.Job:
        return self._jobs.get_job(name=name, retry=READ_RETRY)

    def _containers(self, raw: run_v2.Job) -> Any:
        return raw.template.template.containers

    def _write(self, raw: run_v2.Job, traffic: tuple[TrafficSplit, ...] | None, revision: str | None,
               retry: Any) -> Any:
        if traffic is not None:
            raise FleetError(f"{raw.name}: a job has no traffic to set")
        return self._jobs.update_job(request=run_v2.UpdateJobRequest(job=raw), retry=retry)

    def run_execution(self, job: str) -> ExecutionView:
        try:
            # Retried on quota pushback as any write, within a minute: at worst a second execution runs.
            operation = self._jobs.run_job(name=job, retry=WRITE_RETRY.with_timeout(60.0))
        except gexc.GoogleAPICallError as exc:
            raise FleetError(f"could not run {job}: {exc}") from exc
        # The operation's metadata is the execution as created (JobsClient.run_job's metadata_type).
        created = operation.metadata
        if created is None or not created.name:
            raise FleetError(f"RunJob of {job} named no execution")
        return execution_view(created)

    def get_execution(self, name: str) -> ExecutionView:
        try:
            return execution_view(self._executions.get_execution(name=name, retry=READ_RETRY))
        except gexc.GoogleAPICallError as exc:  # retries exhausted, or not found
            raise FleetError(f"execution {name}: {exc}") from exc

    def executions(self, job: str, limit: int = 50) -> list[ExecutionView]:
        request = run_v2.ListExecutionsRequest(parent=job, page_size=limit)
        try:
            pager = self._executions.list_executions(request=request, retry=READ_RETRY)
            return [execution_view(ex) for ex, _ in zip(pager, range(limit))]
        except gexc.GoogleAPICallError as exc:
            raise FleetError(f"executions of {job}: {exc}") from exc


class CloudRunWorkerPools(TemplateFleet):
    """Fleet over WorkerPoolsClient: `list_services` lists worker pools; traffic is `instance_splits`."""

    _view = staticmethod(pool_view)
    _noun = "worker pool"

    def __init__(self, client: run_v2.WorkerPoolsClient) -> None:
        self._client = client

    @classmethod
    def connect(cls, endpoint: str | None = None, transport: str = "grpc") -> CloudRunWorkerPools:
        return cls(make_client(run_v2.WorkerPoolsClient, WorkerPoolsGrpcTransport, endpoint, transport))

    def _list(self, parent: str) -> Iterable[run_v2.WorkerPool]:
        request = run_v2.ListWorkerPoolsRequest(parent=parent, page_size=500)
        return self._client.list_worker_pools(request=request, retry=READ_RETRY)

    def _fetch(self, name: str) -> run_v2.WorkerPool:
        return self._client.get_worker_pool(name=name, retry=READ_RETRY)

    def _containers(self, raw: run_v2.WorkerPool) -> Any:
        return raw.template.containers

    def _write(self, raw: run_v2.WorkerPool, traffic: tuple[TrafficSplit, ...] | None, revision: str | None,
               retry: Any) -> Any:
        if revision is not None:
            # A named revision with a different config is refused: a new name, or Cloud Run's.
            raw.template.revision = revision
        if traffic is not None:
            raw.instance_splits = [run_v2.InstanceSplit(type_=_SPLIT_TYPE[t.type], percent=t.percent,
                                                        revision=t.revision) for t in traffic]
        return self._client.update_worker_pool(request=run_v2.UpdateWorkerPoolRequest(worker_pool=raw), retry=retry)
