"""The REST methods of Jobs, Executions and WorkerPools (google.cloud.run.v2), for `run_v2` clients built
with `transport="rest"`: the paths, verbs and bodies of the clients' own `transports/rest_base.py`, served
from the same typed state as `workloads_grpc` (docs/GOOGLE_APIS.md#jobs-and-worker-pools). `RestFront`
routes to them (`routes`); each handler's name without `_` is the method name the statistics count."""
from __future__ import annotations

from typing import Any

from google.cloud import run_v2
from google.protobuf import field_mask_pb2
from werkzeug.wrappers import Request

from .common import to_json
from .rest import LOCATION, SEG, RouteRow, _arg_bool, _arg_page_size, _body
from .workerpools import pool_mask

Reply = tuple[int, str]


def _page(request: Request) -> tuple[int, str]:
    return _arg_page_size(request), request.args.get("pageToken", "")


class WorkloadsRest:
    """The handlers over a `CloudRunStandin`'s JobsMixin and WorkerPoolsMixin state (`s`); an object of
    its own, so that no handler's name can shadow one of the stand-in's methods."""

    def __init__(self, state: Any) -> None:
        self.s = state

    def routes(self) -> tuple[RouteRow, ...]:
        job, pool, loc, seg = rf"{LOCATION}/jobs/{SEG}", rf"{LOCATION}/workerPools/{SEG}", LOCATION, SEG
        return (
            ("POST", rf"{loc}/jobs", self._create_job, True),
            ("GET", rf"{loc}/jobs", self._list_jobs, False),
            ("GET", job, self._get_job, False),
            ("PATCH", job, self._update_job, True),
            ("DELETE", job, self._delete_job, True),
            ("POST", rf"{job}:run", self._run_job, True),
            ("GET", rf"{job}/executions", self._list_executions, False),
            ("GET", rf"{job}/executions/{seg}", self._get_execution, False),
            ("POST", rf"{loc}/workerPools", self._create_worker_pool, True),
            ("GET", rf"{loc}/workerPools", self._list_worker_pools, False),
            ("GET", pool, self._get_worker_pool, False),
            ("PATCH", pool, self._update_worker_pool, True),
            ("DELETE", pool, self._delete_worker_pool, True),
        )

    def _create_job(self, request: Request, project: str, location: str) -> Reply:
        return 200, to_json(self.s.create_job_op(project, location, request.args.get("jobId", ""),
                                               _body(request, run_v2.Job), _arg_bool(request, "validateOnly")))

    def _get_job(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.job_snapshot(*ids))

    def _list_jobs(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.jobs_page(*ids, *_page(request)))

    def _update_job(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.update_job_op(*ids, _body(request, run_v2.Job),
                                               validate_only=_arg_bool(request, "validateOnly"),
                                               allow_missing=_arg_bool(request, "allowMissing")))

    def _delete_job(self, request: Request, *ids: str) -> Reply:
        etag = request.args.get("etag", "")
        return 200, to_json(self.s.delete_job_op(*ids, etag, _arg_bool(request, "validateOnly")))

    def _run_job(self, request: Request, *ids: str) -> Reply:
        body = _body(request, run_v2.RunJobRequest)  # the whole request is the body ("*")
        return 200, to_json(self.s.run_job_op(*ids, body.etag, body.validate_only))

    def _get_execution(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.execution_snapshot(*ids))

    def _list_executions(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.executions_page(*ids, *_page(request)))

    def _create_worker_pool(self, request: Request, project: str, location: str) -> Reply:
        return 200, to_json(self.s.create_worker_pool_op(project, location, request.args.get("workerPoolId", ""),
                                                       _body(request, run_v2.WorkerPool),
                                                       _arg_bool(request, "validateOnly")))

    def _get_worker_pool(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.worker_pool_snapshot(*ids))

    def _list_worker_pools(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.worker_pools_page(*ids, *_page(request)))

    def _update_worker_pool(self, request: Request, *ids: str) -> Reply:
        mask = field_mask_pb2.FieldMask()
        mask.FromJsonString(request.args.get("updateMask", ""))  # camelCase on the wire -> snake_case paths
        return 200, to_json(self.s.update_worker_pool_op(
            *ids, _body(request, run_v2.WorkerPool), pool_mask(list(mask.paths)),
            validate_only=_arg_bool(request, "validateOnly"), allow_missing=_arg_bool(request, "allowMissing"),
            force_new_revision=_arg_bool(request, "forceNewRevision")))

    def _delete_worker_pool(self, request: Request, *ids: str) -> Reply:
        return 200, to_json(self.s.delete_worker_pool_op(*ids, request.args.get("etag", ""),
                                                       _arg_bool(request, "validateOnly")))
