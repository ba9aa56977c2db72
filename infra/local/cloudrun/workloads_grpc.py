"""The gRPC methods of Jobs, Executions and WorkerPools (google.cloud.run.v2), served as `grpc_front`
serves Services: generic handlers over the stand-in's typed state, each call counted as the HTTP verb
of its REST mapping (RunJob is a POST: a write, under the same quota as every other write)."""
from __future__ import annotations

import re
from typing import Any, Callable

import grpc
from google.cloud import run_v2

from .grpc_front import PARENT, GrpcFront, _ids
from .workerpools import pool_mask

_SEG = r"([^/:]+)"
JOB = re.compile(rf"projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}")
EXECUTION = re.compile(rf"projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}/executions/{_SEG}")
WORKER_POOL = re.compile(rf"projects/{_SEG}/locations/{_SEG}/workerPools/{_SEG}")

Call = Callable[[Any], tuple[tuple[str, ...], Callable[[], Any]]]


def job_handlers(front: GrpcFront) -> tuple[grpc.GenericRpcHandler, ...]:
    s = front.s

    def by(pattern: re.Pattern[str], field: str, typed: Callable[..., Any]) -> Call:
        """The call for a request: ids from its resource name in `field`, then `typed(request, ids)`."""
        def call(r: Any) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(pattern, _field(r, field), field)
            return ids, lambda: typed(r, ids)
        return call

    jobs = {
        "CreateJob": front._unary("POST", "create_job", True, run_v2.CreateJobRequest, by(
            PARENT, "parent", lambda r, ids: s.create_job_op(*ids, r.job_id, r.job, r.validate_only))),
        "GetJob": front._unary("GET", "get_job", False, run_v2.GetJobRequest, by(
            JOB, "name", lambda r, ids: s.job_snapshot(*ids))),
        "ListJobs": front._unary("GET", "list_jobs", False, run_v2.ListJobsRequest, by(
            PARENT, "parent", lambda r, ids: s.jobs_page(*ids, r.page_size, r.page_token))),
        "UpdateJob": front._unary("PATCH", "update_job", True, run_v2.UpdateJobRequest, by(
            JOB, "job.name", lambda r, ids: s.update_job_op(*ids, r.job, validate_only=r.validate_only,
                                                            allow_missing=r.allow_missing))),
        "DeleteJob": front._unary("DELETE", "delete_job", True, run_v2.DeleteJobRequest, by(
            JOB, "name", lambda r, ids: s.delete_job_op(*ids, r.etag, r.validate_only))),
        "RunJob": front._unary("POST", "run_job", True, run_v2.RunJobRequest, by(
            JOB, "name", lambda r, ids: s.run_job_op(*ids, r.etag, r.validate_only))),
    }
    executions = {
        "GetExecution": front._unary("GET", "get_execution", False, run_v2.GetExecutionRequest, by(
            EXECUTION, "name", lambda r, ids: s.execution_snapshot(*ids))),
        "ListExecutions": front._unary("GET", "list_executions", False, run_v2.ListExecutionsRequest, by(
            JOB, "parent", lambda r, ids: s.executions_page(*ids, r.page_size, r.page_token))),
    }
    pools = {
        "CreateWorkerPool": front._unary("POST", "create_worker_pool", True, run_v2.CreateWorkerPoolRequest, by(
            PARENT, "parent", lambda r, ids: s.create_worker_pool_op(*ids, r.worker_pool_id, r.worker_pool,
                                                                     r.validate_only))),
        "GetWorkerPool": front._unary("GET", "get_worker_pool", False, run_v2.GetWorkerPoolRequest, by(
            WORKER_POOL, "name", lambda r, ids: s.worker_pool_snapshot(*ids))),
        "ListWorkerPools": front._unary("GET", "list_worker_pools", False, run_v2.ListWorkerPoolsRequest, by(
            PARENT, "parent", lambda r, ids: s.worker_pools_page(*ids, r.page_size, r.page_token))),
        "UpdateWorkerPool": front._unary("PATCH", "update_worker_pool", True, run_v2.UpdateWorkerPoolRequest, by(
            WORKER_POOL, "worker_pool.name", lambda r, ids: s.update_worker_pool_op(
                *ids, r.worker_pool, pool_mask(list(r.update_mask.paths)), validate_only=r.validate_only,
                allow_missing=r.allow_missing, force_new_revision=r.force_new_revision))),
        "DeleteWorkerPool": front._unary("DELETE", "delete_worker_pool", True, run_v2.DeleteWorkerPoolRequest, by(
            WORKER_POOL, "name", lambda r, ids: s.delete_worker_pool_op(*ids, r.etag, r.validate_only))),
    }
    return (
        grpc.method_handlers_generic_handler("google.cloud.run.v2.Jobs", jobs),
        grpc.method_handlers_generic_handler("google.cloud.run.v2.Executions", executions),
        grpc.method_handlers_generic_handler("google.cloud.run.v2.WorkerPools", pools),
    )


def _field(request: Any, dotted: str) -> str:
    value = request
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
