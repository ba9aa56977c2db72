"""Worker pools of the Cloud Run stand-in, typed like `services` (docs/GOOGLE_APIS.md#jobs-and-worker-pools).

A worker pool deploys like a service without traffic: each template change (or `force_new_revision`)
makes a revision that becomes ready only if its images resolve in the registry (and no fault was
injected for the pool); its status fields follow the `WorkerPool.reconciling` docstring: on success
`observed_generation`, `latest_ready_revision` and `instance_split_statuses` catch up; on failure they
keep the last serving state and `terminal_condition` says why. Same lock, operations, faults and quota.
"""
from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2
from google.rpc import status_pb2

from .checks import check_containers, check_etag, check_keys, names_page
from .common import (
    FAILED_PRECONDITION,
    REVISION_NAME,
    SERVICE_ID,
    ApiError,
    RevisionRecord,
    State,
    config_key,
    copy,
    not_found,
    not_ready,
    now,
    template_key,
    to_json,
)
from .deploys import _snapshot
from .images import DeployFailure, ImageChecker
from .jobs import finished_op, first_image_failure, merge, removed

log = logging.getLogger("baseroll.standin.cloudrun")
Operation = operations_pb2.Operation
SPLIT_LATEST = run_v2.InstanceSplitAllocationType.INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST
SPLIT_REVISION = run_v2.InstanceSplitAllocationType.INSTANCE_SPLIT_ALLOCATION_TYPE_REVISION

POOL_OUTPUT_ONLY = frozenset({
    "name", "uid", "generation", "create_time", "update_time", "delete_time", "expire_time", "creator",
    "last_modifier", "observed_generation", "terminal_condition", "conditions", "latest_ready_revision",
    "latest_created_revision", "instance_split_statuses", "satisfies_pzs", "reconciling", "etag",
})
POOL_MUTABLE = tuple(f for f in run_v2.WorkerPool.meta.fields if f not in POOL_OUTPUT_ONLY)


def pool_mask(paths: list[str]) -> list[str] | None:
    """An update mask's paths, as for services: an invalid path is refused, output-only ones are ignored."""
    if not paths:
        return None
    if not field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(run_v2.WorkerPool.pb().DESCRIPTOR):
        raise ApiError(400, f"Invalid update_mask: {','.join(paths)}")
    return [p for p in paths if p.split(".")[0] not in POOL_OUTPUT_ONLY]


@dataclass
class PoolRecord:
    pool: run_v2.WorkerPool
    revisions: dict[str, RevisionRecord] = field(default_factory=dict)  # short name -> record
    seq: int = 0
    pending: int = 0


class WorkerPoolsMixin:
    """The worker-pools part of `CloudRunStandin`'s state."""

    _lock: threading.RLock
    _worker_pools: dict[str, PoolRecord]
    _slots: threading.BoundedSemaphore
    _stopping: threading.Event
    _pool: ThreadPoolExecutor | None
    _checker: ImageChecker | None
    deploy_latency_s: float
    _condition: Callable[..., run_v2.Condition]
    _etag: Callable[[], str]
    _new_op_locked: Callable[[str], Operation]
    _reserve_slot: Callable[[], None]
    _revision_name: Callable[[PoolRecord, str, int], str]  # DeploysMixin's: `S-00001-abc`, as Cloud Run names them
    _draw_fault_locked: Callable[[str], DeployFailure | None]

    def _init_worker_pools(self) -> None:
        self._worker_pools = {}

    def _validate_pool(self, wp: run_v2.WorkerPool, wid: str, rec: PoolRecord | None, new_revision: str | None) -> None:
        check_keys((("labels", wp.labels), ("annotations", wp.annotations),
                    ("template.labels", wp.template.labels), ("template.annotations", wp.template.annotations)))
        check_containers(wp.template.containers, "template.containers")
        revision = wp.template.revision
        if revision and (not REVISION_NAME.match(revision) or not revision.startswith(wid + "-")):
            raise ApiError(400, f"template.revision '{revision}' must start with '{wid}-' and be a valid name.")
        known = (set(rec.revisions) if rec else set()) | ({new_revision} if new_revision else set())
        total = 0
        for i, s in enumerate(wp.instance_splits):
            if s.type_ == SPLIT_REVISION and s.revision not in known:
                raise ApiError(400, f"instance_splits[{i}]: revision '{s.revision}' does not exist.")
            if s.type_ not in (SPLIT_LATEST, SPLIT_REVISION) or not 0 <= s.percent <= 100:
                raise ApiError(400, f"instance_splits[{i}]: a type and a percent within [0, 100] are required.")
            total += s.percent
        if total != 100:
            raise ApiError(400, f"instance split percentages must add up to 100, got {total}.")

    def create_worker_pool_op(self, project: str, location: str, wid: str, body: run_v2.WorkerPool,
                              validate_only: bool) -> Operation:
        if not SERVICE_ID.match(wid):
            raise ApiError(400, f"workerPoolId '{wid}' must match {SERVICE_ID.pattern}.")
        name = f"projects/{project}/locations/{location}/workerPools/{wid}"
        with self._lock:
            if name in self._worker_pools:
                raise ApiError(409, f"Resource '{wid}' already exists.", "ALREADY_EXISTS")
            return self._create_pool_locked(name, body, validate_only)

    def _create_pool_locked(self, name: str, body: run_v2.WorkerPool, validate_only: bool) -> Operation:
        wid = name.rsplit("/", 1)[1]
        wp = run_v2.WorkerPool()
        merge(run_v2.WorkerPool, body, wp, POOL_MUTABLE)
        if not wp.instance_splits:  # empty: 100 % to the latest ready revision (the field's docstring)
            wp.instance_splits = [run_v2.InstanceSplit(type_=SPLIT_LATEST, percent=100)]
        self._validate_pool(wp, wid, None, wp.template.revision or None)
        wp.name = name
        if validate_only:
            return finished_op(self._new_op_locked, run_v2.WorkerPool, wp, remember=False)
        wp.uid = str(uuid.uuid4())
        wp.generation = 1
        wp.create_time = wp.update_time = now()
        wp.etag = self._etag()
        rec = PoolRecord(wp)
        self._reserve_slot()
        self._worker_pools[name] = rec
        return self._deploy_pool_locked(rec, wp.template.revision or self._revision_name(rec, wid, 1))

    def update_worker_pool_op(self, project: str, location: str, wid: str, body: run_v2.WorkerPool,
                              mask: list[str] | None, *, validate_only: bool, allow_missing: bool,
                              force_new_revision: bool) -> Operation:
        name = f"projects/{project}/locations/{location}/workerPools/{wid}"
        with self._lock:
            rec = self._worker_pools.get(name)
            if rec is None:
                if not allow_missing:
                    raise not_found("WORKER_POOL", wid, project, location)
                return self._create_pool_locked(name, body, validate_only)
            check_etag(body.etag, rec.pool.etag, wid)
            old = rec.pool
            new = copy(old)
            merge(run_v2.WorkerPool, body, new, mask if mask is not None else POOL_MUTABLE)
            if not new.instance_splits:
                new.instance_splits = [run_v2.InstanceSplit(type_=SPLIT_LATEST, percent=100)]
            template_changed = force_new_revision or template_key(new.template) != template_key(old.template)
            rev_name = (new.template.revision or None) if template_changed else None
            if rev_name and rev_name in rec.revisions:
                raise ApiError(409, f"Revision named '{rev_name}' already exists.", "ALREADY_EXISTS")
            self._validate_pool(new, wid, rec, rev_name)
            if validate_only:
                return finished_op(self._new_op_locked, run_v2.WorkerPool, new, remember=False)
            changed = template_changed or _mutable(new) != _mutable(old)
            new.generation = old.generation + (1 if changed else 0)
            new.update_time = now()
            new.etag = self._etag()
            self._reserve_slot()
            rec.pool = new
            if not template_changed:
                return self._deploy_pool_locked(rec, None)
            return self._deploy_pool_locked(rec, rev_name or self._revision_name(rec, wid, new.generation))

    def _deploy_pool_locked(self, rec: PoolRecord, short: str | None) -> Operation:
        wp = rec.pool
        if short is not None:
            rev = run_v2.Revision.from_json(to_json(wp.template), ignore_unknown_fields=True)
            rev.name = f"{wp.name}/revisions/{short}"
            rev.uid, rev.generation, rev.create_time = str(uuid.uuid4()), 1, now()
            rev.reconciling = True
            rec.seq += 1
            rec.revisions[short] = RevisionRecord(rev, config_key(wp.template), rec.seq, self._draw_fault_locked(wp.name))
            wp.latest_created_revision = rev.name
        op = self._new_op_locked(wp.name)
        rec.pending += 1
        wp.reconciling = True
        wp.terminal_condition = self._condition("Ready", State.CONDITION_RECONCILING, message="Deploying revision.")
        op.metadata.Pack(run_v2.WorkerPool.pb(wp))
        assert self._pool is not None, "stand-in not started"
        self._pool.submit(self._settle_pool, op.name, wp.name, wp.uid, short, wp.generation)
        return _snapshot(op)

    def _settle_pool(self, op_name: str, name: str, uid: str, short: str | None, generation: int) -> None:
        failure: DeployFailure | None = None
        try:
            if self._stopping.wait(self.deploy_latency_s):
                return
            with self._lock:
                rec = self._worker_pools.get(name)
                record = rec.revisions.get(short) if rec and rec.pool.uid == uid and short else None
                images = [c.image for c in record.revision.containers] if record else []
            failure = first_image_failure(self._checker, images) or (record.forced_failure if record else None)
        except Exception as e:  # never leave an operation pending forever because of a stand-in bug
            log.exception("cloudrun stand-in: worker pool deploy failed")
            failure = DeployFailure("INTERNAL", f"stand-in error: {e!r}")
        finally:
            self._slots.release()
        with self._lock:
            self._finish_pool_locked(op_name, name, uid, short, generation, failure)

    def _finish_pool_locked(self, op_name: str, name: str, uid: str, short: str | None, generation: int,
                            failure: DeployFailure | None) -> None:
        op = self._operations.get(op_name)  # type: ignore[attr-defined]
        rec = self._worker_pools.get(name)
        if rec is None or rec.pool.uid != uid:
            if op is not None:
                op.done = True
                op.error.CopyFrom(status_pb2.Status(code=10, message=f"Worker pool '{name}' was deleted."))
            return
        rec.pending -= 1
        record = rec.revisions.get(short) if short else None
        wp = rec.pool
        if record is not None:
            record.state = "ready" if failure is None else "failed"
            record.revision.reconciling = False
            if failure is None and (not wp.latest_ready_revision or
                                    rec.revisions[wp.latest_ready_revision.rsplit("/", 1)[1]].seq < record.seq):
                wp.latest_ready_revision = record.revision.name
        latest = rec.revisions.get(wp.latest_created_revision.rsplit("/", 1)[-1])
        latest_failed = latest is not None and latest.state == "failed"
        if not latest_failed:
            wp.observed_generation = max(wp.observed_generation, generation)
        self._pool_status_locked(rec, latest, failure if record is latest else None)
        if op is None:
            return
        op.done = True
        op.metadata.Pack(run_v2.WorkerPool.pb(wp))
        if record is not None and failure is not None:
            op.error.CopyFrom(status_pb2.Status(code=FAILED_PRECONDITION, message=not_ready(short or "", failure.message)))
        else:
            op.response.Pack(run_v2.WorkerPool.pb(wp))

    def _pool_status_locked(self, rec: PoolRecord, latest: RevisionRecord | None, failure: DeployFailure | None) -> None:
        wp = rec.pool
        wp.reconciling = rec.pending > 0
        if wp.reconciling:
            return
        if latest is not None and latest.state == "failed":
            why = failure.message if failure else "The latest revision failed."
            reason = failure.reason if failure else "REVISION_FAILED"
            wp.terminal_condition = self._condition("Ready", State.CONDITION_FAILED, reason=reason,
                                                    message=not_ready(latest.revision.name.rsplit("/", 1)[1], why))
            latest.revision.conditions = [copy(wp.terminal_condition)]
            return  # instance_split_statuses keep the last serving state
        wp.terminal_condition = self._condition("Ready", State.CONDITION_SUCCEEDED)
        ready = wp.latest_ready_revision.rsplit("/", 1)[-1]
        wp.instance_split_statuses = [
            run_v2.InstanceSplitStatus(type_=s.type_, percent=s.percent,
                                       revision=ready if s.type_ == SPLIT_LATEST else s.revision)
            for s in wp.instance_splits]

    def worker_pool_snapshot(self, project: str, location: str, wid: str) -> run_v2.WorkerPool:
        with self._lock:
            return copy(self._pool_record(project, location, wid).pool)

    def worker_pools_page(self, project: str, location: str, size: int, token: str) -> run_v2.ListWorkerPoolsResponse:
        with self._lock:
            names, next_token = names_page(self._worker_pools, project, location, "workerPools", size, token)
            return run_v2.ListWorkerPoolsResponse(worker_pools=[copy(self._worker_pools[n].pool) for n in names],
                                                  next_page_token=next_token)

    def delete_worker_pool_op(self, project: str, location: str, wid: str, etag: str, validate_only: bool) -> Operation:
        with self._lock:
            rec = self._pool_record(project, location, wid)
            check_etag(etag, rec.pool.etag, wid)
            return finished_op(self._new_op_locked, run_v2.WorkerPool, removed(self._worker_pools, rec.pool, validate_only),
                               remember=not validate_only)

    def _pool_record(self, project: str, location: str, wid: str) -> PoolRecord:
        rec = self._worker_pools.get(f"projects/{project}/locations/{location}/workerPools/{wid}")
        if rec is None:
            raise not_found("WORKER_POOL", wid, project, location)
        return rec


def _mutable(wp: run_v2.WorkerPool) -> str:
    doc = run_v2.WorkerPool.to_dict(wp)
    return repr(sorted((k, repr(doc.get(k))) for k in POOL_MUTABLE))
