"""What every part of the Cloud Run stand-in shares: limits, the error type, wire helpers, records."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from google.cloud import run_v2
from google.protobuf import field_mask_pb2, json_format

from .images import DeployFailure

LOOPBACK = "127.0.0.1"

# Cloud Run v2 refuses user-set labels/annotations in these system namespaces.
RESERVED_PREFIXES = ("run.googleapis.com", "cloud.googleapis.com", "serving.knative.dev", "autoscaling.knative.dev")

MAX_SERVICES_PER_REGION = 1000
MAX_REVISIONS_PER_SERVICE = 1000  # beyond it the oldest non-serving revision is deleted, as in Cloud Run
MAX_CONTAINERS = 10
MAX_OPERATIONS = 10_000  # finished operations beyond this are forgotten, oldest first
MAX_BODY_BYTES = 4 << 20
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

State = run_v2.Condition.State
CommonReason = run_v2.Condition.CommonReason
RevisionReason = run_v2.Condition.RevisionReason
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION

# google.rpc.Code for the HTTP statuses the stand-in produces.
RPC_STATUS = {
    400: ("INVALID_ARGUMENT", 3),
    403: ("PERMISSION_DENIED", 7),
    404: ("NOT_FOUND", 5),
    409: ("ABORTED", 10),
    429: ("RESOURCE_EXHAUSTED", 8),
    500: ("INTERNAL", 13),
    501: ("UNIMPLEMENTED", 12),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
}
FAILED_PRECONDITION = 9

SERVICE_ID = re.compile(r"^[a-z](?:[-a-z0-9]{0,47}[a-z0-9])?$")
REVISION_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")

# Fields of Service the caller may set; everything else is output only and owned by the server.
SERVICE_OUTPUT_ONLY = frozenset(
    {
        "name", "uid", "generation", "create_time", "update_time", "delete_time", "expire_time", "creator",
        "last_modifier", "observed_generation", "terminal_condition", "conditions", "latest_ready_revision",
        "latest_created_revision", "traffic_statuses", "uri", "urls", "satisfies_pzs", "reconciling", "etag",
    }
)
SERVICE_MUTABLE = tuple(f for f in run_v2.Service.meta.fields if f not in SERVICE_OUTPUT_ONLY)


class ApiError(Exception):
    """An error the API returns: over REST as `{"error": {"code", "message", "status"}}`, over gRPC as
    the status named `status` with the same message and details."""

    def __init__(self, http: int, message: str, status: str | None = None, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.http = http
        self.message = message
        self.status = status or RPC_STATUS.get(http, ("UNKNOWN", 2))[0]
        self.details = details or []

    def body(self) -> str:
        return json.dumps({"error": {"code": self.http, "message": self.message, "status": self.status, "details": self.details}})


# --- in-memory resources ---------------------------------------------------------------------------------

RevisionState = Literal["pending", "ready", "failed"]


@dataclass
class RevisionRecord:
    revision: run_v2.Revision
    config_key: str  # the template without its `revision` name: "different configuration" means this differs
    seq: int  # creation order within the service
    forced_failure: DeployFailure | None  # decided at creation so seeded faults are deterministic
    state: RevisionState = "pending"


@dataclass
class ServiceRecord:
    service: run_v2.Service
    revisions: dict[str, RevisionRecord] = field(default_factory=dict)  # short name -> record
    seq: int = 0
    pending_jobs: int = 0


@dataclass(frozen=True)
class DeployJob:
    operation: str
    service: str
    service_uid: str  # a service deleted and re-created under the same name is another service
    revision: str | None  # short name; None when only non-template fields changed
    generation: int


# --- helpers ---------------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(timezone.utc)


def to_json(msg: Any) -> str:
    """Proto3 JSON as the REST client expects it (camelCase, integer enums), of a proto-plus or pb message."""
    if hasattr(type(msg), "to_json"):
        return type(msg).to_json(msg, use_integers_for_enums=True, always_print_fields_with_no_presence=False, indent=None)
    return json_format.MessageToJson(msg, use_integers_for_enums=True, indent=None)


def copy(msg: Any) -> Any:
    return type(msg).deserialize(type(msg).serialize(msg))


def template_key(template: run_v2.RevisionTemplate) -> str:
    """Canonical JSON (sorted keys, so map order does not matter) of the whole template."""
    return json.dumps(json.loads(to_json(template)), sort_keys=True)


def config_key(template: run_v2.RevisionTemplate) -> str:
    """The template without its `revision` name: what "different configuration" compares."""
    doc = json.loads(to_json(template))
    doc.pop("revision", None)
    return json.dumps(doc, sort_keys=True)


def spec_key(svc: run_v2.Service) -> str:
    pb = run_v2.Service.pb(svc)
    spec = type(pb)()
    field_mask_pb2.FieldMask(paths=list(SERVICE_MUTABLE)).MergeMessage(pb, spec)
    return spec.SerializeToString(deterministic=True).hex()


def images_of(svc: run_v2.Service) -> list[str]:
    return [c.image for c in svc.template.containers]


def parts(name: str) -> tuple[str, str, str]:
    """`projects/P/locations/L/services/S` -> (P, L, S)."""
    p = name.split("/")
    return p[1], p[3], p[5]


def service_uri(proxy_base: str, project: str, region: str, service: str) -> str:
    """The URL the stand-in's loopback proxy serves a service on, following its traffic split
    (infra/local/cloudrun/proxy.py; docs/GOOGLE_APIS.md#revisions-that-really-run)."""
    return f"{proxy_base}/s/{project}/{region}/{service}"


def tag_uri(proxy_base: str, project: str, region: str, service: str, tag: str) -> str:
    """The URL the proxy serves a service's tagged revision on."""
    return f"{proxy_base}/t/{project}/{region}/{service}/{tag}"


def not_found(kind: str, rid: str, project: str, location: str) -> ApiError:
    return ApiError(404, f"Resource '{rid}' of kind '{kind}' in region '{location}' in project '{project}' does not exist.")


def not_ready(revision: str, why: str) -> str:
    return f"Revision '{revision}' is not ready and cannot serve traffic. {why}"


def encode_token(parent: str, last: str) -> str:
    return base64.urlsafe_b64encode(f"{parent}\n{last}".encode()).decode()


def decode_token(parent: str, token: str) -> str | None:
    if not token:
        return None
    try:
        got_parent, last = base64.urlsafe_b64decode(token.encode()).decode().split("\n", 1)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Invalid page token.") from None
    if got_parent != parent:
        raise ApiError(400, "Page token does not belong to this request.")
    return last


def page_size(size: int) -> int:
    if size < 0:
        raise ApiError(400, "pageSize must not be negative.")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
