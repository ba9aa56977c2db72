"""Revisions, long-running operations and deploys of the Cloud Run stand-in, typed like `services`.

Each template change makes a revision and an operation that a bounded worker pool finishes after
`deploy_latency_s`; the service's status fields are then derived from its revisions as Cloud Run's
reconciler does (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2).
"""
from __future__ import annotations

import base64
import logging
import random
import string
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.rpc import status_pb2

from .checks import newest_first_page
from .common import (
    FAILED_PRECONDITION,
    LATEST,
    MAX_OPERATIONS,
    MAX_REVISIONS_PER_SERVICE,
    ApiError,
    CommonReason,
    DeployJob,
    RevisionReason,
    RevisionRecord,
    ServiceRecord,
    State,
    config_key,
    copy,
    not_found,
    not_ready,
    now,
    parts,
    tag_uri,
    to_json,
)
from .images import DeployFailure, ImageChecker
from .running import RunningMixin, job_record

log = logging.getLogger("baseroll.standin.cloudrun")
Operation = operations_pb2.Operation


def _snapshot(op: Operation) -> Operation:
    out = Operation()
    out.CopyFrom(op)
    return out


class DeploysMixin(RunningMixin):
    """The deploy half of `CloudRunStandin`'s state."""

    _lock: threading.RLock
    _rng: random.Random
    _services: dict[str, ServiceRecord]
    _operations: OrderedDict[str, Operation]
    _slots: threading.BoundedSemaphore
    _stopping: threading.Event
    _pool: ThreadPoolExecutor | None
    _checker: ImageChecker | None
    deploy_latency_s: float
    proxy_base: str

    # -- revisions --

    def _revision_name(self, rec: ServiceRecord, sid: str, generation: int) -> str:
        """`S-00001-abc`: the generation, zero-padded, and three random letters, like Cloud Run's."""
        for _ in range(64):
            name = f"{sid}-{generation:05d}-" + "".join(self._rng.choices(string.ascii_lowercase, k=3))
            if name not in rec.revisions:
                return name
        raise ApiError(500, "could not pick a free revision name")

    def _new_revision_locked(self, rec: ServiceRecord, short: str, at: datetime) -> RevisionRecord:
        svc = rec.service
        # Template and Revision share their camelCase field names; unknown ones (revision, ...) drop out.
        rev = run_v2.Revision.from_json(to_json(svc.template), ignore_unknown_fields=True)
        rev.name = f"{svc.name}/revisions/{short}"
        rev.uid = str(uuid.uuid4())
        rev.generation = 1
        rev.create_time = at
        rev.update_time = at
        rev.service = svc.name.rsplit("/", 1)[1]
        rev.launch_stage = svc.launch_stage
        rev.reconciling = True
        rev.etag = self._etag()
        rev.conditions = [self._condition("Ready", State.CONDITION_RECONCILING, message="Deploying revision.")]
        rec.seq += 1
        record = RevisionRecord(rev, config_key(svc.template), rec.seq, self._draw_fault_locked(svc.name))
        rec.revisions[short] = record
        svc.latest_created_revision = rev.name
        self._prune_revisions_locked(rec)
        return record

    def _prune_revisions_locked(self, rec: ServiceRecord) -> None:
        """Keep at most MAX_REVISIONS_PER_SERVICE, deleting the oldest that serve no traffic."""
        serving = {t.revision for t in rec.service.traffic_statuses} | {
            rec.service.latest_ready_revision.rsplit("/", 1)[-1],
            rec.service.latest_created_revision.rsplit("/", 1)[-1],
        }
        excess = len(rec.revisions) - MAX_REVISIONS_PER_SERVICE
        if excess <= 0:
            return
        # Insertion order is creation order, so the first candidates are the oldest.
        candidates = [s for s, r in rec.revisions.items() if s not in serving and r.state != "pending"]
        for short in candidates[:excess]:
            del rec.revisions[short]

    def revisions_page(self, project: str, location: str, sid: str, size: int, token: str) -> run_v2.ListRevisionsResponse:
        parent = f"projects/{project}/locations/{location}/services/{sid}"
        with self._lock:
            page, next_token = newest_first_page(list(self._record(project, location, sid).revisions.values()),
                                                 parent, size, token, lambda r: copy(r.revision))
        return run_v2.ListRevisionsResponse(revisions=page, next_page_token=next_token)

    def revision_snapshot(self, project: str, location: str, sid: str, short: str) -> run_v2.Revision:
        with self._lock:
            record = self._record(project, location, sid).revisions.get(short)
            if record is None:
                raise not_found("REVISION", short, project, location)
            return copy(record.revision)

    # -- operations and deploys --

    def operation_snapshot(self, project: str, location: str, op_id: str) -> Operation:
        name = f"projects/{project}/locations/{location}/operations/{op_id}"
        with self._lock:
            op = self._operations.get(name)
            if op is None:
                raise ApiError(404, f"Operation '{name}' not found.")
            return _snapshot(op)

    def _reserve_slot(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise ApiError(503, "The stand-in's deploy queue is full; retry later.")

    def _new_op_locked(self, service_name: str) -> operations_pb2.Operation:
        project, location, _ = parts(service_name)
        op = operations_pb2.Operation(name=f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}")
        self._operations[op.name] = op
        self._forget_old_operations_locked()
        return op

    def _forget_old_operations_locked(self) -> None:
        excess = len(self._operations) - MAX_OPERATIONS
        for name in [n for n, o in self._operations.items() if o.done][: max(excess, 0)]:
            del self._operations[name]

    def _done_op(self, service_name: str, svc: run_v2.Service, *, remember: bool = False) -> operations_pb2.Operation:
        """A finished operation (validate-only, delete): nothing left to deploy."""
        if remember:
            op = self._new_op_locked(service_name)
        else:
            project, location, _ = parts(service_name)
            op = operations_pb2.Operation(name=f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}")
        op.done = True
        op.metadata.Pack(run_v2.Service.pb(svc))
        op.response.Pack(run_v2.Service.pb(svc))
        return op

    def _start_deploy_locked(self, rec: ServiceRecord, revision: str | None) -> Operation:
        """Record an unfinished operation and queue the deploy; the caller has reserved a slot."""
        svc = rec.service
        op = self._new_op_locked(svc.name)
        rec.pending_jobs += 1
        self._refresh_status_locked(rec)
        op.metadata.Pack(run_v2.Service.pb(svc))
        job = DeployJob(op.name, svc.name, svc.uid, revision, svc.generation)
        assert self._pool is not None, "stand-in not started"
        self._pool.submit(self._run_job, job)
        return _snapshot(op)

    def _run_job(self, job: DeployJob) -> None:
        try:
            if self._stopping.wait(self.deploy_latency_s):
                return
            failure = self._check_revision(job)
            if failure is None:  # running mode: ready only once its process listens on $PORT
                failure = self._launch_revision(job)
            with self._lock:
                self._finish_job_locked(job, failure)
            self._retire_idle_revisions()
        except Exception as e:  # never leave an operation pending forever because of a stand-in bug
            log.exception("cloudrun stand-in: deploy job failed")
            with self._lock:
                self._finish_job_locked(job, DeployFailure("INTERNAL", f"stand-in error: {e!r}"))
        finally:
            self._slots.release()

    def _check_revision(self, job: DeployJob) -> DeployFailure | None:
        with self._lock:
            record = job_record(self._services, job)
            if record is None:
                return None
            images = [c.image for c in record.revision.containers]
            forced = record.forced_failure
        assert self._checker is not None
        for image in images:  # registry I/O happens outside the lock
            failure = self._checker.check(image)
            if failure:
                return failure
        return forced

    def _finish_job_locked(self, job: DeployJob, failure: DeployFailure | None) -> None:
        op = self._operations.get(job.operation)
        rec = self._services.get(job.service)
        if rec is None or rec.service.uid != job.service_uid:
            if op is not None:
                op.done = True
                op.error.CopyFrom(status_pb2.Status(code=10, message=f"Service '{job.service}' was deleted."))
            return
        rec.pending_jobs -= 1
        record = rec.revisions.get(job.revision) if job.revision else None
        if record is not None:
            self._settle_revision_locked(rec, record, failure)
        if not self._latest_failed_locked(rec):
            # On a failed reconciliation observed_generation keeps the last serving generation
            # (the `Service.reconciling` docstring; docs/GOOGLE_APIS.md#cloud-run-admin-api-v2).
            rec.service.observed_generation = max(rec.service.observed_generation, job.generation)
        self._refresh_status_locked(rec)
        if op is None:
            return
        op.done = True
        op.metadata.Pack(run_v2.Service.pb(rec.service))
        if record is not None and failure is not None:
            op.error.CopyFrom(status_pb2.Status(code=FAILED_PRECONDITION, message=not_ready(job.revision, failure.message)))
        else:
            op.response.Pack(run_v2.Service.pb(rec.service))

    def _settle_revision_locked(self, rec: ServiceRecord, record: RevisionRecord, failure: DeployFailure | None) -> None:
        rev = record.revision
        rev.reconciling = False
        rev.observed_generation = rev.generation
        rev.update_time = now()
        stats = self._service_stats(rec.service.name)
        if failure is None:
            record.state = "ready"
            rev.conditions = [
                self._condition("Ready", State.CONDITION_SUCCEEDED),
                self._condition("ContainerHealthy", State.CONDITION_SUCCEEDED),
            ]
            stats.revisions_ready += 1
            current = rec.service.latest_ready_revision.rsplit("/", 1)[-1]
            # A slow older deploy must not move latest_ready back past a newer ready revision.
            if current not in rec.revisions or rec.revisions[current].seq < record.seq:
                rec.service.latest_ready_revision = rev.name
        else:
            record.state = "failed"
            rev.conditions = [self._condition("Ready", State.CONDITION_FAILED, reason=failure.reason, message=failure.message)]
            stats.revisions_failed += 1

    @staticmethod
    def _latest_failed_locked(rec: ServiceRecord) -> bool:
        latest = rec.revisions.get(rec.service.latest_created_revision.rsplit("/", 1)[-1])
        return latest is not None and latest.state == "failed"

    def _refresh_status_locked(self, rec: ServiceRecord) -> None:
        """Derive the service's status fields from its revisions, as the Cloud Run reconciler does:
        on failure `observed_generation`, `latest_ready_revision` and `traffic_statuses` keep the
        last serving revision's state and the cause is in `terminal_condition` (`reconciling` false)."""
        svc = rec.service
        latest = rec.revisions.get(svc.latest_created_revision.rsplit("/", 1)[-1])
        svc.reconciling = rec.pending_jobs > 0
        if svc.reconciling:
            terminal = self._condition("Ready", State.CONDITION_RECONCILING, message="Deploying revision.")
        elif latest is not None and latest.state == "failed":
            cause = latest.revision.conditions[0]
            reason = cause.revision_reason.name if cause.revision_reason else cause.reason.name
            terminal = self._condition(
                "Ready", State.CONDITION_FAILED, reason=reason,
                message=not_ready(latest.revision.name.rsplit("/", 1)[1], cause.message),
            )
        else:
            terminal = self._condition("Ready", State.CONDITION_SUCCEEDED)
        if svc.terminal_condition.state != terminal.state or svc.terminal_condition.message != terminal.message:
            svc.terminal_condition = terminal
        routes = State.CONDITION_SUCCEEDED if svc.latest_ready_revision else State.CONDITION_RECONCILING
        svc.conditions = [
            self._condition("RoutesReady", routes),
            run_v2.Condition(copy(terminal), type_="ConfigurationsReady"),
        ]
        if terminal.state != State.CONDITION_SUCCEEDED:
            return  # traffic_statuses: transient while reconciling, the last serving state after a failure
        ready = svc.latest_ready_revision.rsplit("/", 1)[-1] if svc.latest_ready_revision else ""
        svc.traffic_statuses = [
            run_v2.TrafficTargetStatus(
                type_=t.type_, revision=ready if t.type_ == LATEST else t.revision, percent=t.percent, tag=t.tag,
                uri=tag_uri(self.proxy_base, *parts(svc.name), t.tag) if t.tag else "",
            )
            for t in svc.traffic
        ]

    @staticmethod
    def _condition(type_: str, state: State, *, reason: str | None = None, message: str = "") -> run_v2.Condition:
        c = run_v2.Condition(type_=type_, state=state, message=message, last_transition_time=now())
        if state == State.CONDITION_FAILED:
            c.severity = run_v2.Condition.Severity.ERROR
        if reason in CommonReason.__members__:
            c.reason = CommonReason[reason]
        elif reason in RevisionReason.__members__:
            c.revision_reason = RevisionReason[reason]
        return c

    def _etag(self) -> str:
        return '"' + base64.urlsafe_b64encode(self._rng.randbytes(12)).decode() + '"'

