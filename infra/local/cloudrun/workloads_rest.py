"""The REST routes of Jobs, Executions and WorkerPools (google.cloud.run.v2), for `run_v2` clients built
with `transport="rest"`: the paths, verbs and bodies of the clients' own `rest_base.py` http options,
served from the same typed state as `workloads_grpc` (docs/GOOGLE_APIS.md#jobs-and-worker-pools)."""
from __future__ import annotations

from typing import Any, Callable

from google.cloud import run_v2
from google.protobuf import field_mask_pb2
from werkzeug.wrappers import Request

from .common import to_json
from .workerpools import pool_mask

Handler = Callable[..., tuple[int, str]]
BodyOf = Callable[[Request, Any], Any]
ArgBool = Callable[[Request, str], bool]
ArgPageSize = Callable[[Request], int]


def workload_routes(s: Any, loc: str, seg: str, body_of: BodyOf, arg_bool: ArgBool,
                    page_size: ArgPageSize) -> list[tuple[str, str, Handler, bool]]:
    """(verb, path pattern, handler, is a write) for each method; `loc` matches `/v2/projects/P/locations/L`."""
    job, pool = rf"{loc}/jobs/{seg}", rf"{loc}/workerPools/{seg}"

    def page(request: Request) -> tuple[int, str]:
        return page_size(request), request.args.get("pageToken", "")

    def create_job(request: Request, project: str, location: str) -> tuple[int, str]:
        return 200, to_json(s.create_job_op(project, location, request.args.get("jobId", ""),
                                            body_of(request, run_v2.Job), arg_bool(request, "validateOnly")))

    def get_job(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.job_snapshot(*ids))

    def list_jobs(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.jobs_page(*ids, *page(request)))

    def update_job(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.update_job_op(*ids, body_of(request, run_v2.Job),
                                            validate_only=arg_bool(request, "validateOnly"),
                                            allow_missing=arg_bool(request, "allowMissing")))

    def delete_job(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.delete_job_op(*ids, request.args.get("etag", ""), arg_bool(request, "validateOnly")))

    def run_job(request: Request, *ids: str) -> tuple[int, str]:
        body = body_of(request, run_v2.RunJobRequest)  # the whole request is the body ("*")
        return 200, to_json(s.run_job_op(*ids, body.etag, body.validate_only))

    def get_execution(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.execution_snapshot(*ids))

    def list_executions(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.executions_page(*ids, *page(request)))

    def create_worker_pool(request: Request, project: str, location: str) -> tuple[int, str]:
        return 200, to_json(s.create_worker_pool_op(project, location, request.args.get("workerPoolId", ""),
                                                    body_of(request, run_v2.WorkerPool),
                                                    arg_bool(request, "validateOnly")))

    def get_worker_pool(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.worker_pool_snapshot(*ids))

    def list_worker_pools(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.worker_pools_page(*ids, *page(request)))

    def update_worker_pool(request: Request, *ids: str) -> tuple[int, str]:
        mask = field_mask_pb2.FieldMask()
        mask.FromJsonString(request.args.get("updateMask", ""))  # camelCase on the wire -> snake_case paths
        return 200, to_json(s.update_worker_pool_op(
            *ids, body_of(request, run_v2.WorkerPool), pool_mask(list(mask.paths)),
            validate_only=arg_bool(request, "validateOnly"), allow_missing=arg_bool(request, "allowMissing"),
            force_new_revision=arg_bool(request, "forceNewRevision")))

    def delete_worker_pool(request: Request, *ids: str) -> tuple[int, str]:
        return 200, to_json(s.delete_worker_pool_op(*ids, request.args.get("etag", ""),
                                                    arg_bool(request, "validateOnly")))

    return [
        ("POST", rf"{loc}/jobs", create_job, True),
        ("GET", rf"{loc}/jobs", list_jobs, False),
        ("GET", job, get_job, False),
        ("PATCH", job, update_job, True),
        ("DELETE", job, delete_job, True),
        ("POST", rf"{job}:run", run_job, True),
        ("GET", rf"{job}/executions", list_executions, False),
        ("GET", rf"{job}/executions/{seg}", get_execution, False),
        ("POST", rf"{loc}/workerPools", create_worker_pool, True),
        ("GET", rf"{loc}/workerPools", list_worker_pools, False),
        ("GET", pool, get_worker_pool, False),
        ("PATCH", pool, update_worker_pool, True),
        ("DELETE", pool, delete_worker_pool, True),
    ]
