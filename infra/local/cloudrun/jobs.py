"""Jobs and executions of the Cloud Run stand-in, typed like `services` (docs/GOOGLE_APIS.md#jobs-and-worker-pools).

A job is a template, not a running thing: Create/UpdateJob reconcile it (its images must resolve in the
registry, else its terminal condition fails with CONTAINER_MISSING and `observed_generation` keeps the
last good generation) and start no execution. RunJob makes an Execution that copies the job's task
template at that moment, so an update later never changes it; after `execution_latency_s` its tasks
succeed, or fail (NON_ZERO_EXIT_CODE) when its images do not resolve or a fault was injected for the job.
Same state lock, operations, faults, write quota and statistics as services.
"""
from __future__ import annotations

import logging
import random
import string
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2
from google.rpc import status_pb2

from .checks import check_containers, check_etag, check_keys, names_page, newest_first_page
from .common import (
    FAILED_PRECONDITION,
    SERVICE_ID,
    ApiError,
    State,
    copy,
    not_found,
    now,
)
from .deploys import _snapshot
from .images import DeployFailure, ImageChecker

log = logging.getLogger("baseroll.standin.cloudrun")
Operation = operations_pb2.Operation
Completion = run_v2.ExecutionReference.CompletionStatus
ExecutionReason = run_v2.Condition.ExecutionReason

JOB_OUTPUT_ONLY = frozenset({
    "name", "uid", "generation", "create_time", "update_time", "delete_time", "expire_time", "creator",
    "last_modifier", "observed_generation", "terminal_condition", "conditions", "execution_count",
    "latest_created_execution", "reconciling", "satisfies_pzs", "etag",
})
JOB_MUTABLE = tuple(f for f in run_v2.Job.meta.fields if f not in JOB_OUTPUT_ONLY)
MAX_EXECUTIONS_PER_JOB = 1000  # Cloud Run shows the most recent 1,000 (docs/GOOGLE_APIS.md#jobs-and-worker-pools)


def first_image_failure(checker: ImageChecker | None, images: Iterable[str]) -> DeployFailure | None:
    assert checker is not None, "stand-in not started"
    for image in images:  # registry I/O: callers hold no lock here
        failure = checker.check(image)
        if failure:
            return failure
    return None


def merge(cls: type, body: object, into: object, paths: Iterable[str]) -> None:
    field_mask_pb2.FieldMask(paths=list(paths)).MergeMessage(
        cls.pb(body), cls.pb(into), replace_message_field=True, replace_repeated_field=True)  # type: ignore[attr-defined]


def finished_op(new_op_locked: Callable[[str], Operation], cls: Any, msg: Any, *, remember: bool) -> Operation:
    """A finished operation (validate-only, delete) whose metadata and result are `msg`."""
    if remember:
        op = new_op_locked(msg.name)
    else:
        op = Operation(name="/".join(msg.name.split("/")[:4]) + f"/operations/{uuid.uuid4()}")
    op.done = True
    op.metadata.Pack(cls.pb(msg))
    op.response.Pack(cls.pb(msg))
    return _snapshot(op)


def removed(records: dict[str, Any], msg: Any, validate_only: bool) -> Any:
    """A snapshot of `msg` as DeleteX returns it; the record is gone unless only validating."""
    snapshot = copy(msg)
    if not validate_only:
        del records[snapshot.name]
        snapshot.delete_time = now()
    return snapshot


@dataclass
class ExecutionRecord:
    execution: run_v2.Execution
    seq: int
    forced_failure: DeployFailure | None  # drawn at RunJob, so seeded faults are deterministic


@dataclass
class JobRecord:
    job: run_v2.Job
    executions: OrderedDict[str, ExecutionRecord] = field(default_factory=OrderedDict)  # short id -> record
    seq: int = 0
    pending: int = 0  # reconciliations queued or running


class JobsMixin:
    """The jobs half of `CloudRunStandin`'s state (the stand-in's lock, pool, operations and faults)."""

    _lock: threading.RLock
    _rng: random.Random
    _jobs: dict[str, JobRecord]
    _slots: threading.BoundedSemaphore
    _stopping: threading.Event
    _pool: ThreadPoolExecutor | None
    _checker: ImageChecker | None
    deploy_latency_s: float
    execution_latency_s: float = 0.2  # how long an execution's tasks run before they finish
    _condition: Callable[..., run_v2.Condition]
    _etag: Callable[[], str]
    _new_op_locked: Callable[[str], Operation]
    _reserve_slot: Callable[[], None]
    _draw_fault_locked: Callable[[str], DeployFailure | None]

    def _init_jobs(self) -> None:
        self._jobs = {}

    # -- jobs --

    def _validate_job(self, job: run_v2.Job) -> None:
        check_keys((("labels", job.labels), ("annotations", job.annotations),
                    ("template.labels", job.template.labels), ("template.annotations", job.template.annotations)))
        check_containers(job.template.template.containers, "template.template.containers")
        if job.template.task_count < 0 or job.template.parallelism < 0:
            raise ApiError(400, "template.task_count and template.parallelism must not be negative.")

    def create_job_op(self, project: str, location: str, jid: str, body: run_v2.Job, validate_only: bool) -> Operation:
        if not SERVICE_ID.match(jid):
            raise ApiError(400, f"jobId '{jid}' must match {SERVICE_ID.pattern}.")
        name = f"projects/{project}/locations/{location}/jobs/{jid}"
        with self._lock:
            if name in self._jobs:
                raise ApiError(409, f"Resource '{jid}' already exists.", "ALREADY_EXISTS")
            return self._create_job_locked(name, body, validate_only)

    def _create_job_locked(self, name: str, body: run_v2.Job, validate_only: bool) -> Operation:
        job = run_v2.Job()
        merge(run_v2.Job, body, job, JOB_MUTABLE)
        if not job.template.task_count:
            job.template.task_count = 1  # "Defaults to 1" (ExecutionTemplate.task_count)
        self._validate_job(job)
        job.name = name
        if validate_only:
            return finished_op(self._new_op_locked, run_v2.Job, job, remember=False)
        job.uid = str(uuid.uuid4())
        job.generation = 1
        job.create_time = job.update_time = now()
        job.etag = self._etag()
        rec = JobRecord(job)
        self._reserve_slot()
        self._jobs[name] = rec
        return self._reconcile_job_locked(rec)

    def update_job_op(self, project: str, location: str, jid: str, body: run_v2.Job, *, validate_only: bool,
                      allow_missing: bool) -> Operation:
        name = f"projects/{project}/locations/{location}/jobs/{jid}"
        with self._lock:
            rec = self._jobs.get(name)
            if rec is None:
                if not allow_missing:
                    raise not_found("JOB", jid, project, location)
                return self._create_job_locked(name, body, validate_only)
            check_etag(body.etag, rec.job.etag, jid)
            new = copy(rec.job)
            merge(run_v2.Job, body, new, JOB_MUTABLE)  # UpdateJob has no mask: the whole desired state
            self._validate_job(new)
            if validate_only:
                return finished_op(self._new_op_locked, run_v2.Job, new, remember=False)
            changed = _spec(new) != _spec(rec.job)
            new.generation = rec.job.generation + (1 if changed else 0)
            new.update_time = now()
            new.etag = self._etag()
            self._reserve_slot()
            rec.job = new  # executions keep the task template they were created with
            return self._reconcile_job_locked(rec)

    def _reconcile_job_locked(self, rec: JobRecord) -> Operation:
        job = rec.job
        op = self._new_op_locked(job.name)
        rec.pending += 1
        job.reconciling = True
        job.terminal_condition = self._condition("Ready", State.CONDITION_RECONCILING, message="Reconciling job.")
        op.metadata.Pack(run_v2.Job.pb(job))
        images = [c.image for c in job.template.template.containers]
        assert self._pool is not None, "stand-in not started"
        self._pool.submit(self._settle_job, op.name, job.name, job.uid, job.generation, images)
        return _snapshot(op)

    def _settle_job(self, op_name: str, name: str, uid: str, generation: int, images: list[str]) -> None:
        try:
            if self._stopping.wait(self.deploy_latency_s):
                return
            failure = first_image_failure(self._checker, images)
        except Exception as e:  # never leave an operation pending forever because of a stand-in bug
            log.exception("cloudrun stand-in: job reconciliation failed")
            failure = DeployFailure("INTERNAL", f"stand-in error: {e!r}")
        finally:
            self._slots.release()
        with self._lock:
            op = self._operations.get(op_name)  # type: ignore[attr-defined]
            rec = self._jobs.get(name)
            if rec is None or rec.job.uid != uid:
                if op is not None:
                    op.done = True
                    op.error.CopyFrom(status_pb2.Status(code=10, message=f"Job '{name}' was deleted."))
                return
            rec.pending -= 1
            self._job_status_locked(rec, generation, failure)
            if op is not None:
                op.done = True
                op.metadata.Pack(run_v2.Job.pb(rec.job))
                if failure is not None and rec.job.generation == generation:
                    op.error.CopyFrom(status_pb2.Status(code=FAILED_PRECONDITION, message=failure.message))
                else:
                    op.response.Pack(run_v2.Job.pb(rec.job))

    def _job_status_locked(self, rec: JobRecord, generation: int, failure: DeployFailure | None) -> None:
        """As the `Job.reconciling` docstring says: once over, success observes the generation; a
        failure keeps the last good `observed_generation` and says why in `terminal_condition`."""
        job = rec.job
        if generation != job.generation:
            return  # a newer update's reconciliation decides
        job.reconciling = rec.pending > 0
        if job.reconciling:
            return
        if failure is None:
            job.observed_generation = generation
            job.terminal_condition = self._condition("Ready", State.CONDITION_SUCCEEDED)
        else:
            job.terminal_condition = self._condition("Ready", State.CONDITION_FAILED, reason=failure.reason,
                                                     message=failure.message)
        job.conditions = [run_v2.Condition(copy(job.terminal_condition), type_="ConfigurationsReady")]

    def job_snapshot(self, project: str, location: str, jid: str) -> run_v2.Job:
        with self._lock:
            return copy(self._job_record(project, location, jid).job)

    def jobs_page(self, project: str, location: str, size: int, token: str) -> run_v2.ListJobsResponse:
        with self._lock:
            names, next_token = names_page(self._jobs, project, location, "jobs", size, token)
            return run_v2.ListJobsResponse(jobs=[copy(self._jobs[n].job) for n in names], next_page_token=next_token)

    def delete_job_op(self, project: str, location: str, jid: str, etag: str, validate_only: bool) -> Operation:
        with self._lock:
            rec = self._job_record(project, location, jid)
            check_etag(etag, rec.job.etag, jid)
            return finished_op(self._new_op_locked, run_v2.Job, removed(self._jobs, rec.job, validate_only),
                               remember=not validate_only)

    def _job_record(self, project: str, location: str, jid: str) -> JobRecord:
        rec = self._jobs.get(f"projects/{project}/locations/{location}/jobs/{jid}")
        if rec is None:
            raise not_found("JOB", jid, project, location)
        return rec

    # -- executions --

    def run_job_op(self, project: str, location: str, jid: str, etag: str, validate_only: bool) -> Operation:
        with self._lock:
            rec = self._job_record(project, location, jid)
            check_etag(etag, rec.job.etag, jid)
            execution = self._new_execution_locked(rec)
            if validate_only:
                return self._execution_op_locked(execution, remember=False)
            self._reserve_slot()
            record = ExecutionRecord(execution, rec.seq, self._draw_fault_locked(rec.job.name))
            rec.executions[execution.name.rsplit("/", 1)[1]] = record
            while len(rec.executions) > MAX_EXECUTIONS_PER_JOB:
                rec.executions.popitem(last=False)
            job = rec.job
            job.execution_count += 1
            job.latest_created_execution = run_v2.ExecutionReference(
                name=execution.name, create_time=execution.create_time, completion_status=Completion.EXECUTION_RUNNING)
            op = self._execution_op_locked(execution, remember=True)
        threading.Thread(target=self._run_execution, args=(op.name, rec.job.name, rec.job.uid, execution.name),
                         name="cloudrun-execution", daemon=True).start()
        return op

    def _new_execution_locked(self, rec: JobRecord) -> run_v2.Execution:
        job = rec.job
        jid = job.name.rsplit("/", 1)[1]
        short = f"{jid}-" + "".join(self._rng.choices(string.ascii_lowercase + string.digits, k=5))
        rec.seq += 1
        at = now()
        tasks = job.template.task_count or 1
        return run_v2.Execution(
            name=f"{job.name}/executions/{short}", uid=str(uuid.uuid4()), generation=1,
            labels=dict(job.template.labels), annotations=dict(job.template.annotations),
            create_time=at, start_time=at, update_time=at, job=jid, parallelism=job.template.parallelism or tasks,
            task_count=tasks, template=copy(job.template.template), reconciling=True, running_count=tasks,
            conditions=[self._condition("Completed", State.CONDITION_RECONCILING, message="Tasks are running.")],
            etag=self._etag(), launch_stage=job.launch_stage)

    def _execution_op_locked(self, execution: run_v2.Execution, *, remember: bool) -> Operation:
        name = execution.name.rsplit("/jobs/", 1)[0]
        op = self._new_op_locked(execution.name) if remember else Operation(name=f"{name}/operations/{uuid.uuid4()}")
        op.metadata.Pack(run_v2.Execution.pb(execution))
        if not remember:
            op.done = True
            op.response.Pack(run_v2.Execution.pb(execution))
        return _snapshot(op)

    def _run_execution(self, op_name: str, job_name: str, uid: str, execution_name: str) -> None:
        try:
            if self._stopping.wait(self.execution_latency_s):
                return
            with self._lock:
                rec = self._jobs.get(job_name)
                record = rec.executions.get(execution_name.rsplit("/", 1)[1]) if rec and rec.job.uid == uid else None
                if record is None:
                    return
                images = [c.image for c in record.execution.template.containers]
            failure = first_image_failure(self._checker, images) or record.forced_failure
            with self._lock:
                self._finish_execution_locked(op_name, rec, record, failure)
        except Exception:  # a stand-in bug must surface in its log, not hang a caller forever
            log.exception("cloudrun stand-in: execution failed")
        finally:
            self._slots.release()

    def _finish_execution_locked(self, op_name: str, rec: JobRecord, record: ExecutionRecord,
                                 failure: DeployFailure | None) -> None:
        ex = record.execution
        ex.reconciling = False
        ex.observed_generation = ex.generation
        ex.completion_time = ex.update_time = now()
        ex.running_count = 0
        if failure is None:
            ex.succeeded_count = ex.task_count
            ex.conditions = [self._condition("Completed", State.CONDITION_SUCCEEDED,
                                             message="Execution completed successfully.")]
        else:
            ex.failed_count = ex.task_count
            cond = self._condition("Completed", State.CONDITION_FAILED,
                                   message=f"Task {ex.name.rsplit('/', 1)[1]}-task0 failed: {failure.message}")
            cond.execution_reason = ExecutionReason.NON_ZERO_EXIT_CODE
            ex.conditions = [cond]
        latest = rec.job.latest_created_execution
        if latest.name == ex.name:
            latest.completion_time = ex.completion_time
            latest.completion_status = Completion.EXECUTION_SUCCEEDED if failure is None else Completion.EXECUTION_FAILED
        op = self._operations.get(op_name)  # type: ignore[attr-defined]
        if op is None:
            return
        op.done = True
        op.metadata.Pack(run_v2.Execution.pb(ex))
        if failure is None:
            op.response.Pack(run_v2.Execution.pb(ex))
        else:
            op.error.CopyFrom(status_pb2.Status(code=FAILED_PRECONDITION, message=ex.conditions[0].message))

    def execution_snapshot(self, project: str, location: str, jid: str, eid: str) -> run_v2.Execution:
        with self._lock:
            record = self._job_record(project, location, jid).executions.get(eid)
            if record is None:
                raise not_found("EXECUTION", eid, project, location)
            return copy(record.execution)

    def executions_page(self, project: str, location: str, jid: str, size: int,
                        token: str) -> run_v2.ListExecutionsResponse:
        parent = f"projects/{project}/locations/{location}/jobs/{jid}"
        with self._lock:
            page, next_token = newest_first_page(list(self._job_record(project, location, jid).executions.values()),
                                                 parent, size, token, lambda r: copy(r.execution))
        return run_v2.ListExecutionsResponse(executions=page, next_page_token=next_token)

def _spec(job: run_v2.Job) -> bytes:
    pb = run_v2.Job.pb(job)
    spec = type(pb)()
    field_mask_pb2.FieldMask(paths=list(JOB_MUTABLE)).MergeMessage(pb, spec)
    return spec.SerializeToString(deterministic=True)
