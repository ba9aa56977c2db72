"""The stand-in's gRPC front, for `run_v2` clients on their default transport (gRPC, as in production).

Served as the Pub/Sub stand-in serves its API: `grpc.method_handlers_generic_handler` with the generated
message types' own (de)serialisers (google-cloud-run ships no `*_pb2_grpc` servicers; google.longrunning's
`Operations` is served the same way). Methods: google.cloud.run.v2.Services Create/Get/List/Update/Delete,
Revisions Get/List, and google.longrunning.Operations GetOperation, with the same state, faults, quota and
statistics as REST: each call counts as the HTTP verb its REST mapping uses, so an `http` fault for
`PATCH` fails UpdateService here too, and an error is the google.rpc status REST would name, with its details.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import grpc
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from .common import RPC_STATUS, ApiError
from .faults import ApiCall
from .rest import valid_mask

_SEG = r"([^/:]+)"
PARENT = re.compile(rf"projects/{_SEG}/locations/{_SEG}")
SERVICE = re.compile(rf"projects/{_SEG}/locations/{_SEG}/services/{_SEG}")
REVISION = re.compile(rf"projects/{_SEG}/locations/{_SEG}/services/{_SEG}/revisions/{_SEG}")
OPERATION = re.compile(rf"projects/{_SEG}/locations/{_SEG}/operations/{_SEG}")
_CODES = {name: code for name, code in RPC_STATUS.values()}


def _ids(pattern: re.Pattern[str], name: str, field: str) -> tuple[str, ...]:
    m = pattern.fullmatch(name)
    if not m:
        raise ApiError(400, f"Invalid resource name in {field}: '{name}'.")
    return m.groups()


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString() if hasattr(msg, "SerializeToString") else type(msg).serialize(msg)


def status_of(e: ApiError) -> grpc.Status:
    """The google.rpc.Status REST puts in its JSON error body, as gRPC trailers (grpc-status-details-bin)."""
    code = _CODES.get(e.status) or getattr(grpc.StatusCode, e.status, grpc.StatusCode.UNKNOWN).value[0]
    details = []
    for d in e.details:
        if d.get("@type", "").endswith("google.rpc.ErrorInfo"):
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.ErrorInfo(reason=d.get("reason", ""), domain=d.get("domain", ""),
                                                    metadata=d.get("metadata", {})))
            details.append(packed)
    return rpc_status.to_status(status_pb2.Status(code=code, message=e.message, details=details))


class GrpcFront:
    """Builds the generic handlers over `CloudRunStandin`'s typed state."""

    def __init__(self, standin: Any) -> None:
        self.s = standin

    def _unary(self, verb: str, name: str, write: bool, request_type: Any,
               call: Callable[[Any], tuple[tuple[str, ...], Callable[[], Any]]]) -> grpc.RpcMethodHandler:
        """`call(request)` -> (ids from the request's resource name, the typed call); REST's bookkeeping order:
        the request counted, an injected fault, then `_admit` (the call counted, a write token, the call
        hooks), then the call."""
        s = self.s

        def invoke(request: Any, context: grpc.ServicerContext) -> Any:
            s._inject_http_fault(verb)
            ids, typed = call(request)
            metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
            s._admit(ApiCall(name, ids, metadata), write)
            return typed()

        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return s._serve(verb, lambda: invoke(request, context))
            except ApiError as e:
                context.abort_with_status(status_of(e))

        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=request_type.deserialize, response_serializer=_serialize
        )

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        s = self.s

        def create(r: run_v2.CreateServiceRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(PARENT, r.parent, "parent")
            return ids, lambda: s.create_service_op(*ids, r.service_id, r.service, r.validate_only)

        def update(r: run_v2.UpdateServiceRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(SERVICE, r.service.name, "service.name")
            paths = list(r.update_mask.paths)
            mask = valid_mask(paths, ",".join(paths)) if paths else None
            return ids, lambda: s.update_service_op(*ids, r.service, mask, validate_only=r.validate_only,
                                                    allow_missing=r.allow_missing)

        def delete(r: run_v2.DeleteServiceRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(SERVICE, r.name, "name")
            return ids, lambda: s.delete_service_op(*ids, r.etag, r.validate_only)

        def get(r: run_v2.GetServiceRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(SERVICE, r.name, "name")
            return ids, lambda: s.service_snapshot(*ids)

        def list_(r: run_v2.ListServicesRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(PARENT, r.parent, "parent")
            return ids, lambda: s.services_page(*ids, r.page_size, r.page_token)

        def list_revisions(r: run_v2.ListRevisionsRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(SERVICE, r.parent, "parent")
            return ids, lambda: s.revisions_page(*ids, r.page_size, r.page_token)

        def get_revision(r: run_v2.GetRevisionRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(REVISION, r.name, "name")
            return ids, lambda: s.revision_snapshot(*ids)

        def get_operation(r: operations_pb2.GetOperationRequest) -> tuple[tuple[str, ...], Callable[[], Any]]:
            ids = _ids(OPERATION, r.name, "name")
            return ids, lambda: s.operation_snapshot(*ids)

        services = {
            "CreateService": self._unary("POST", "create_service", True, run_v2.CreateServiceRequest, create),
            "GetService": self._unary("GET", "get_service", False, run_v2.GetServiceRequest, get),
            "ListServices": self._unary("GET", "list_services", False, run_v2.ListServicesRequest, list_),
            "UpdateService": self._unary("PATCH", "update_service", True, run_v2.UpdateServiceRequest, update),
            "DeleteService": self._unary("DELETE", "delete_service", True, run_v2.DeleteServiceRequest, delete),
        }
        revisions = {
            "ListRevisions": self._unary("GET", "list_revisions", False, run_v2.ListRevisionsRequest, list_revisions),
            "GetRevision": self._unary("GET", "get_revision", False, run_v2.GetRevisionRequest, get_revision),
        }
        get_op = self._unary("GET", "get_operation", False, _PbType(operations_pb2.GetOperationRequest), get_operation)
        return (
            grpc.method_handlers_generic_handler("google.cloud.run.v2.Services", services),
            grpc.method_handlers_generic_handler("google.cloud.run.v2.Revisions", revisions),
            grpc.method_handlers_generic_handler("google.longrunning.Operations", {"GetOperation": get_op}),
        )


class _PbType:
    """A plain protobuf message class with the `deserialize` the proto-plus types have."""

    def __init__(self, cls: Any) -> None:
        self.deserialize = cls.FromString
