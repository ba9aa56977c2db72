"""The stand-in's REST front, for `run_v2` clients built with `transport="rest"`.

Wire format: the client sends camelCase proto3 JSON with integer enums and `$alt=json;enum-encoding=int`;
it reads long-running `google.longrunning.Operation`s and google.rpc-style JSON error bodies. Every body is
(de)serialised with the generated proto types themselves, so what goes over the wire is exactly what the
client produces and expects. Fault injection, the write quota and statistics are under `/_standin/...`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from google.cloud import run_v2
from google.protobuf import field_mask_pb2, json_format
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from .common import MAX_BODY_BYTES, SERVICE_OUTPUT_ONLY, ApiError, to_json
from .faults import ApiCall


SEG = r"([^/:]+)"  # one segment of a path
LOCATION = rf"/v2/projects/{SEG}/locations/{SEG}"
RouteRow = tuple[str, str, Callable[..., tuple[int, str]], bool]  # verb, path pattern, handler, is a write


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., tuple[int, str]]
    write: bool = False
    name: str = ""  # the API method, e.g. "get_service" (stats count calls by it)


class QuietHandler(WSGIRequestHandler):
    """Werkzeug logs every request to stderr; the stand-in keeps its own statistics instead."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def _arg_bool(request: Request, key: str) -> bool:
    value = request.args.get(key, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, f"Invalid value for {key}: {value!r}")
    return value in ("true", "1")


def _arg_page_size(request: Request) -> int:
    try:
        return int(request.args.get("pageSize", "0"))
    except ValueError:
        raise ApiError(400, "pageSize must be an integer.") from None


def _body(request: Request, cls: Any = run_v2.Service) -> Any:
    """The body as `cls` (a service, job, worker pool or whole request), from the client's proto3 JSON."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(400, "Request body is too large.")
    try:
        return cls.from_json(request.get_data(as_text=True) or "{}", ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise ApiError(400, f"Invalid JSON payload received. {e}") from None


def _update_mask(request: Request) -> list[str] | None:
    raw = request.args.get("updateMask")
    if not raw:
        return None
    mask = field_mask_pb2.FieldMask()
    mask.FromJsonString(raw)  # camelCase on the wire -> snake_case paths
    return valid_mask(list(mask.paths), raw)


def valid_mask(paths: list[str], shown: str) -> list[str]:
    """The update mask's paths; output-only ones are ignored, as the API ignores output-only fields in the body."""
    if not field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(run_v2.Service.pb().DESCRIPTOR):
        raise ApiError(400, f"Invalid update_mask: {shown}")
    return [p for p in paths if p.split(".")[0] not in SERVICE_OUTPUT_ONLY]


class RestFront:
    """Routes `/v2/...` to the typed state of `CloudRunStandin` (services here; jobs, executions and
    worker pools by `workloads_rest`), and `/_standin/...` to its admin calls."""

    _routes: list[Route]
    _serve: Callable[..., Any]

    def _build_routes(self, more: tuple[RouteRow, ...] = ()) -> list[Route]:
        """The services' routes, then `more` (jobs, executions and worker pools: `workloads_rest`)."""
        seg, loc = SEG, LOCATION
        svc = rf"{loc}/services/{seg}"
        table = [
            ("POST", rf"{loc}/services", self._create_service, True),
            ("GET", rf"{loc}/services", self._list_services, False),
            ("GET", svc, self._get_service, False),
            ("PATCH", svc, self._update_service, True),
            ("DELETE", svc, self._delete_service, True),
            ("GET", rf"{svc}/revisions", self._list_revisions, False),
            ("GET", rf"{svc}/revisions/{seg}", self._get_revision, False),
            ("GET", rf"{loc}/operations/{seg}", self._get_operation, False),
            *more,
        ]
        return [Route(m, re.compile(p + "$"), h, w, h.__name__.lstrip("_")) for m, p, h, w in table]

    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        if request.path.startswith("/_standin/"):
            response = self._admin(request)
        else:
            status, body = self._api(request)
            response = Response(body, status, mimetype="application/json")
        return response(environ, start_response)

    def _api(self, request: Request) -> tuple[int, str]:
        try:
            return self._serve(request.method, lambda: self._dispatch(request))
        except ApiError as e:
            return e.http, e.body()

    def _dispatch(self, request: Request) -> tuple[int, str]:
        self._inject_http_fault(request.method)
        allowed = False
        for route in self._routes:
            m = route.pattern.match(request.path)
            if not m:
                continue
            if route.method != request.method:
                allowed = True
                continue
            metadata = {key.lower(): value for key, value in request.headers.items()}
            self._admit(ApiCall(route.name, m.groups(), metadata), route.write)
            return route.handler(request, *m.groups())
        if allowed:
            raise ApiError(405, f"Method {request.method} is not allowed on {request.path}.", "INVALID_ARGUMENT")
        if request.path.startswith("/v2/"):
            raise ApiError(501, f"{request.method} {request.path} is not implemented by the stand-in.")
        raise ApiError(404, f"The requested URL {request.path} was not found.")

    # -- the API methods: request fields in, JSON out --

    def _create_service(self, request: Request, project: str, location: str) -> tuple[int, str]:
        sid = request.args.get("serviceId", "")
        body = _body(request)
        op = self.create_service_op(project, location, sid, body, _arg_bool(request, "validateOnly"))
        return 200, to_json(op)

    def _update_service(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        body = _body(request)
        name = f"projects/{project}/locations/{location}/services/{sid}"
        if body.name and body.name != name:
            raise ApiError(400, f"service.name '{body.name}' does not match the request path.")
        op = self.update_service_op(
            project, location, sid, body, _update_mask(request),
            validate_only=_arg_bool(request, "validateOnly"), allow_missing=_arg_bool(request, "allowMissing"),
        )
        return 200, to_json(op)

    def _get_service(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        return 200, to_json(self.service_snapshot(project, location, sid))

    def _list_services(self, request: Request, project: str, location: str) -> tuple[int, str]:
        page = self.services_page(project, location, _arg_page_size(request), request.args.get("pageToken", ""))
        return 200, to_json(page)

    def _delete_service(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        etag = request.args.get("etag", "")
        return 200, to_json(self.delete_service_op(project, location, sid, etag, _arg_bool(request, "validateOnly")))

    def _list_revisions(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        page = self.revisions_page(project, location, sid, _arg_page_size(request), request.args.get("pageToken", ""))
        return 200, to_json(page)

    def _get_revision(self, request: Request, project: str, location: str, sid: str, short: str) -> tuple[int, str]:
        return 200, to_json(self.revision_snapshot(project, location, sid, short))

    def _get_operation(self, request: Request, project: str, location: str, op_id: str) -> tuple[int, str]:
        return 200, to_json(self.operation_snapshot(project, location, op_id))

    # -- admin: faults, quota, statistics --

    def _admin(self, request: Request) -> Response:
        try:
            body = self._admin_call(request.method, request.path, request)
            return Response(json.dumps(body), 200, mimetype="application/json")
        except (ValueError, TypeError, KeyError) as e:
            return Response(json.dumps({"error": str(e)}), 400, mimetype="application/json")
        except LookupError as e:
            return Response(json.dumps({"error": str(e)}), 404, mimetype="application/json")

    def _admin_call(self, method: str, path: str, request: Request) -> Any:
        def payload() -> Any:
            if (request.content_length or 0) > MAX_BODY_BYTES:
                raise ValueError("body too large")
            return json.loads(request.get_data() or b"{}")

        if (method, path) == ("GET", "/_standin/stats"):
            return self.stats()
        if (method, path) == ("POST", "/_standin/reset-stats"):
            self.reset_stats()
        elif (method, path) == ("GET", "/_standin/faults"):
            return self.faults()
        elif (method, path) == ("POST", "/_standin/faults"):
            self.inject_fault(payload())
        elif (method, path) == ("DELETE", "/_standin/faults"):
            self.clear_faults()
        elif (method, path) in (("POST", "/_standin/quota"), ("PUT", "/_standin/quota")):
            self.set_write_quota(payload()["write_quota_per_min"])
        elif (method, path) == ("GET", "/_standin/healthz"):
            pass
        else:
            raise LookupError(f"no admin endpoint {method} {path}")
        return {"ok": True}
