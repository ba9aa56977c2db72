"""A Cloud Run Admin API v2 stand-in for the unmodified `google.cloud.run_v2` REST clients.

    with CloudRunStandin(registry_host=reg.host) as cr:
        client = run_v2.ServicesClient(
            credentials=AnonymousCredentials(), transport="rest",
            client_options=ClientOptions(api_endpoint=cr.url))

Wire format: the client sends camelCase proto3 JSON with integer enums and `$alt=json;enum-encoding=int`;
it reads long-running `google.longrunning.Operation`s and google.rpc-style JSON error bodies. Every body is
(de)serialised with the generated proto types themselves, so what goes over the wire is exactly what the
client produces and expects.

Deploys behave like Cloud Run: each template change makes a revision and a long-running operation that a
bounded worker pool finishes after `deploy_latency_s`. The revision becomes Ready only if its images resolve
in the real registry (plain HTTP) to a linux/amd64 image whose config and layers exist; otherwise it fails
with a Cloud Run condition reason, and the previously ready revision keeps serving.

Fault injection, the write quota and statistics are reachable over `/_standin/...` and as methods.
CLI: `python -m infra.local.cloudrun_standin --port N --registry-host 127.0.0.1:P`.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import random
import re
import signal
import string
import sys
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal

import httpx
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2, json_format
from google.rpc import status_pb2
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger("baseroll.standin.cloudrun")

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

# --- OCI media types -------------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
# distribution 2.8 answers 404 for OCI manifests (and down-converts Docker ones) without the full list.
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
MAX_LAYERS = 256

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

_SERVICE_ID = re.compile(r"^[a-z](?:[-a-z0-9]{0,47}[a-z0-9])?$")
_REVISION_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?)/"
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)

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
    """An error the API returns as `{"error": {"code", "message", "status"}}`."""

    def __init__(self, http: int, message: str, status: str | None = None, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.http = http
        self.message = message
        self.status = status or RPC_STATUS.get(http, ("UNKNOWN", 2))[0]
        self.details = details or []

    def body(self) -> str:
        return json.dumps({"error": {"code": self.http, "message": self.message, "status": self.status, "details": self.details}})


# --- image checks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployFailure:
    """Why a revision did not become ready: a Condition reason enum name and Cloud Run-like message."""

    reason: str  # a member of Condition.CommonReason or Condition.RevisionReason
    message: str


@dataclass(frozen=True)
class ImageRef:
    host: str
    repo: str
    reference: str  # digest when pinned, else tag


def parse_image(image: str) -> ImageRef:
    """`host/repo[:tag][@sha256:...]`; a bare `host/repo` means `:latest`, as for `docker pull`."""
    m = _IMAGE.match(image)
    if not m or len(image) > 1024:
        raise ValueError(f"Invalid image name '{image}'")
    return ImageRef(m["host"].lower(), m["repo"], m["digest"] or m["tag"] or "latest")


class _ImageMissing(Exception):
    """Maps to CONTAINER_MISSING: the manifest or a blob cannot be found."""


class _ImageUnsupported(Exception):
    """The image exists but Cloud Run cannot run it (platform, config, layer mismatch)."""


class ImageChecker:
    """Checks what Cloud Run's image resolution checks, against the one registry it is allowed to reach."""

    def __init__(self, registry_host: str, http: httpx.Client) -> None:
        self.registry_host = registry_host.lower()
        self._http = http

    def check(self, image: str) -> DeployFailure | None:
        try:
            ref = parse_image(image)
            if ref.host != self.registry_host:
                raise _ImageMissing(f"registry '{ref.host}' is not reachable from this stand-in")
            self._check(ref)
            return None
        except _ImageMissing as e:
            return DeployFailure("CONTAINER_MISSING", f"Image '{image}' not found. {e}")
        except (_ImageUnsupported, ValueError) as e:
            # No "image invalid" reason exists in run_v2's enums; REVISION_FAILED is the generic one.
            return DeployFailure("REVISION_FAILED", f"Cloud Run does not support image '{image}': {e}")
        except httpx.HTTPError as e:
            return DeployFailure("CONTAINER_MISSING", f"Image '{image}' not found. registry error: {e}")

    def _check(self, ref: ImageRef) -> None:
        media_type, manifest, _ = self._manifest(ref.repo, ref.reference)
        if media_type in (OCI_INDEX, DOCKER_LIST):
            child = self._amd64_child(media_type, manifest)
            media_type, manifest, _ = self._manifest(ref.repo, child)
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise _ImageUnsupported(f"Container manifest type '{media_type}' is not supported.")
        layers = self._layers(manifest)
        config = self._config(ref.repo, manifest)
        if config.get("os") != "linux" or config.get("architecture") != "amd64":
            raise _ImageUnsupported(
                f"Container image platform '{config.get('os')}/{config.get('architecture')}' must be linux/amd64."
            )
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise _ImageUnsupported("image config rootfs.diff_ids does not match the manifest's layers.")
        for digest in layers:
            self._require_blob(ref.repo, digest)

    def _manifest(self, repo: str, reference: str) -> tuple[str, dict, str]:
        status, headers, body = self._get(f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, MAX_MANIFEST_BYTES)
        if status == 404:
            raise _ImageMissing("manifest unknown")
        if status != 200:
            raise _ImageMissing(f"registry answered {status} for the manifest")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise _ImageUnsupported(f"manifest digest {digest} does not match {reference}.")
        manifest = _json_object(body, "manifest")
        media_type = manifest.get("mediaType") or headers.get("content-type", "").split(";")[0].strip()
        return media_type, manifest, digest

    @staticmethod
    def _amd64_child(media_type: str, index: dict) -> str:
        for desc in (index.get("manifests") or [])[:MAX_LAYERS]:
            platform = desc.get("platform") or {}
            if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
                digest = desc.get("digest", "")
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                    raise _ImageUnsupported(f"index names an invalid digest '{digest}'.")
                return digest
        raise _ImageUnsupported(f"Container manifest type '{media_type}' must support amd64/linux.")

    @staticmethod
    def _layers(manifest: dict) -> list[str]:
        layers = manifest.get("layers")
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise _ImageUnsupported("manifest layers are missing or too many.")
        digests = [d.get("digest", "") for d in layers if isinstance(d, dict)]
        if len(digests) != len(layers) or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", d) for d in digests):
            raise _ImageUnsupported("manifest names an invalid layer digest.")
        return digests

    def _config(self, repo: str, manifest: dict) -> dict:
        desc = manifest.get("config") or {}
        if desc.get("mediaType") not in IMAGE_CONFIGS:
            raise _ImageUnsupported(f"config media type '{desc.get('mediaType')}' is not an image config.")
        digest = desc.get("digest", "")
        status, _, body = self._get(f"/v2/{repo}/blobs/{digest}", {}, MAX_CONFIG_BYTES)
        if status != 200:
            raise _ImageMissing(f"config blob {digest} not found ({status})")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise _ImageUnsupported(f"config blob does not match its digest {digest}.")
        return _json_object(body, "image config")

    def _require_blob(self, repo: str, digest: str) -> None:
        r = self._http.head(f"http://{self.registry_host}/v2/{repo}/blobs/{digest}")
        if r.status_code != 200:
            raise _ImageMissing(f"layer {digest} not found ({r.status_code})")

    def _get(self, path: str, headers: dict[str, str], cap: int) -> tuple[int, httpx.Headers, bytes]:
        """GET reading at most `cap` bytes, so a hostile or broken registry cannot exhaust memory."""
        with self._http.stream("GET", f"http://{self.registry_host}{path}", headers=headers) as r:
            if r.status_code != 200:
                return r.status_code, r.headers, b""
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) > cap:
                    raise _ImageUnsupported(f"{path} is larger than {cap} bytes.")
            return 200, r.headers, bytes(buf)


def _json_object(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise _ImageUnsupported(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _ImageUnsupported(f"{what} is not a JSON object.")
    return doc


# --- faults, quota, statistics ---------------------------------------------------------------------------


def _reason_name(name: str) -> str:
    if name not in CommonReason.__members__ and name not in RevisionReason.__members__:
        raise ValueError(f"unknown condition reason {name!r}")
    return name


@dataclass
class _CountedFault:
    reason: str
    remaining: int


@dataclass
class _RandomFault:
    reason: str
    probability: float
    rng: random.Random


@dataclass
class _HttpFault:
    status: int
    probability: float
    methods: frozenset[str]
    rng: random.Random
    remaining: int | None  # None: until cleared

    def fires(self, method: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.rng.random() >= self.probability:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


class _TokenBucket:
    """`per_min` writes per minute with bursts up to `per_min`; refills continuously."""

    def __init__(self, per_min: int) -> None:
        self.capacity = float(per_min)
        self.tokens = float(per_min)
        self.rate = per_min / 60.0
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _ServiceStats:
    creates: int = 0
    updates: int = 0  # accepted PATCHes that changed something
    images: list[str] = field(default_factory=list)  # every container image an update changed to, in order
    revisions_ready: int = 0
    revisions_failed: int = 0


# --- in-memory resources ---------------------------------------------------------------------------------

RevisionState = Literal["pending", "ready", "failed"]


@dataclass
class _RevisionRecord:
    revision: run_v2.Revision
    config_key: str  # the template without its `revision` name: "different configuration" means this differs
    seq: int  # creation order within the service
    forced_failure: DeployFailure | None  # decided at creation so seeded faults are deterministic
    state: RevisionState = "pending"


@dataclass
class _ServiceRecord:
    service: run_v2.Service
    revisions: dict[str, _RevisionRecord] = field(default_factory=dict)  # short name -> record
    seq: int = 0
    pending_jobs: int = 0


@dataclass(frozen=True)
class _DeployJob:
    operation: str
    service: str
    service_uid: str  # a service deleted and re-created under the same name is another service
    revision: str | None  # short name; None when only non-template fields changed
    generation: int


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., tuple[int, str]]
    write: bool = False
    name: str = ""  # the API method, e.g. "get_service" (stats count calls by it)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _to_json(msg: Any) -> str:
    return type(msg).to_json(msg, use_integers_for_enums=True, always_print_fields_with_no_presence=False, indent=None)


def _copy(msg: Any) -> Any:
    return type(msg).deserialize(type(msg).serialize(msg))


def _template_key(template: run_v2.RevisionTemplate) -> str:
    """Canonical JSON (sorted keys, so map order does not matter) of the whole template."""
    return json.dumps(json.loads(_to_json(template)), sort_keys=True)


def _config_key(template: run_v2.RevisionTemplate) -> str:
    """The template without its `revision` name: what "different configuration" compares."""
    doc = json.loads(_to_json(template))
    doc.pop("revision", None)
    return json.dumps(doc, sort_keys=True)


def _spec_key(svc: run_v2.Service) -> str:
    pb = run_v2.Service.pb(svc)
    spec = type(pb)()
    field_mask_pb2.FieldMask(paths=list(SERVICE_MUTABLE)).MergeMessage(pb, spec)
    return spec.SerializeToString(deterministic=True).hex()


def _images(svc: run_v2.Service) -> list[str]:
    return [c.image for c in svc.template.containers]


def _parts(name: str) -> tuple[str, str, str]:
    """`projects/P/locations/L/services/S` -> (P, L, S)."""
    p = name.split("/")
    return p[1], p[3], p[5]


def _not_found(kind: str, rid: str, project: str, location: str) -> ApiError:
    return ApiError(404, f"Resource '{rid}' of kind '{kind}' in region '{location}' in project '{project}' does not exist.")


def _not_ready(revision: str, why: str) -> str:
    return f"Revision '{revision}' is not ready and cannot serve traffic. {why}"


def _arg_bool(request: Request, key: str) -> bool:
    value = request.args.get(key, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, f"Invalid value for {key}: {value!r}")
    return value in ("true", "1")


def _encode_token(parent: str, last: str) -> str:
    return base64.urlsafe_b64encode(f"{parent}\n{last}".encode()).decode()


def _decode_token(parent: str, token: str) -> str | None:
    if not token:
        return None
    try:
        got_parent, last = base64.urlsafe_b64decode(token.encode()).decode().split("\n", 1)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Invalid page token.") from None
    if got_parent != parent:
        raise ApiError(400, "Page token does not belong to this request.")
    return last


def _page_size(request: Request) -> int:
    try:
        size = int(request.args.get("pageSize", "0"))
    except ValueError:
        raise ApiError(400, "pageSize must be an integer.") from None
    if size < 0:
        raise ApiError(400, "pageSize must not be negative.")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug logs every request to stderr; the stand-in keeps its own statistics instead."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


# --- the stand-in ----------------------------------------------------------------------------------------


class CloudRunStandin:
    """Cloud Run Admin API v2 over HTTP on loopback; `start()`/`stop()` or use as a context manager."""

    def __init__(
        self,
        *,
        registry_host: str,
        host: str = LOOPBACK,
        port: int = 0,
        deploy_latency_s: float = 0.05,
        write_quota_per_min: int | None = None,
        workers: int = 4,
        max_pending_deploys: int = 2048,
        seed: int | None = None,
        registry_auth: httpx.Auth | None = None,
    ) -> None:
        self.registry_host = registry_host
        self.registry_auth = registry_auth  # how the image checks authenticate to the registry, if it asks
        self.host = host
        self.port = port
        self.deploy_latency_s = deploy_latency_s
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._services: dict[str, _ServiceRecord] = {}
        self._operations: OrderedDict[str, operations_pb2.Operation] = OrderedDict()
        self._quota: int | None = None
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self.set_write_quota(write_quota_per_min)
        self._counted_faults: dict[str, _CountedFault] = {}
        self._random_faults: dict[str, _RandomFault] = {}
        self._http_faults: list[_HttpFault] = []
        self._reset_stats_locked()
        self._workers = workers
        self._max_pending = max_pending_deploys
        self._slots = threading.BoundedSemaphore(max_pending_deploys)  # bounds queued + running deploys
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None
        self._checker: ImageChecker | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._build_routes()

    # -- lifecycle --

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "CloudRunStandin":
        self._stopping.clear()
        self._slots = threading.BoundedSemaphore(self._max_pending)
        # trust_env=False: a proxy from the environment must not sit between the stand-in and the registry.
        self._http = httpx.Client(timeout=5.0, trust_env=False, follow_redirects=False, auth=self.registry_auth)
        self._checker = ImageChecker(self.registry_host, self._http)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="cloudrun-deploy")
        self._server = make_server(self.host, self.port, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="cloudrun-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes deploys sleeping out their latency
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "CloudRunStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin: faults, quota, statistics (also over /_standin/) --

    def inject_fault(self, spec: dict[str, Any]) -> None:
        """Same JSON as `POST /_standin/faults`:

        {"service": NAME|"*", "reason": R, "times": N}          next N revisions fail with reason R
        {"service": NAME|"*", "probability": p, "seed": s, "reason": R}  each new revision fails with probability p
        {"http": {"status": 429|503|..., "probability": p, "methods": ["PATCH"], "seed": s, "times": N}}
        """
        if not isinstance(spec, dict):
            raise ValueError("fault spec must be a JSON object")
        with self._lock:
            if "http" in spec:
                self._http_faults.append(self._parse_http_fault(spec["http"]))
                return
            service = spec.get("service")
            if not isinstance(service, str) or not service:
                raise ValueError("fault spec needs 'service' (a full service name or '*') or 'http'")
            reason = _reason_name(spec.get("reason", "HEALTH_CHECK_CONTAINER_ERROR"))
            if "probability" in spec:
                p = float(spec["probability"])
                if not 0.0 <= p <= 1.0:
                    raise ValueError("probability must be within [0, 1]")
                self._random_faults[service] = _RandomFault(reason, p, random.Random(spec.get("seed")))
            else:
                times = int(spec.get("times", 1))
                if times < 0:
                    raise ValueError("times must not be negative")
                self._counted_faults[service] = _CountedFault(reason, times)

    @staticmethod
    def _parse_http_fault(spec: Any) -> _HttpFault:
        if not isinstance(spec, dict):
            raise ValueError("'http' must be a JSON object")
        status = int(spec.get("status", 503))
        if not 400 <= status <= 599:
            raise ValueError("http fault status must be 4xx or 5xx")
        p = float(spec.get("probability", 1.0))
        if not 0.0 <= p <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        methods = frozenset(str(m).upper() for m in spec.get("methods") or ())
        times = spec.get("times")
        return _HttpFault(status, p, methods, random.Random(spec.get("seed")), None if times is None else int(times))

    def clear_faults(self) -> None:
        with self._lock:
            self._counted_faults.clear()
            self._random_faults.clear()
            self._http_faults.clear()

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counted": {k: {"reason": f.reason, "remaining": f.remaining} for k, f in self._counted_faults.items()},
                "random": {k: {"reason": f.reason, "probability": f.probability} for k, f in self._random_faults.items()},
                "http": [
                    {"status": f.status, "probability": f.probability, "methods": sorted(f.methods), "remaining": f.remaining}
                    for f in self._http_faults
                ],
            }

    def set_write_quota(self, per_min: int | None) -> None:
        """Writes (create/update/delete) per minute per project x region; None = unlimited."""
        if per_min is not None and int(per_min) < 1:
            raise ValueError("write quota must be a positive integer or null")
        with self._lock:
            self._quota = None if per_min is None else int(per_min)
            self._buckets.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "services": {
                    name: {
                        "creates": s.creates,
                        "updates": s.updates,
                        "images": list(s.images),
                        "revisions_ready": s.revisions_ready,
                        "revisions_failed": s.revisions_failed,
                    }
                    for name, s in sorted(self._stats.items())
                },
                "throttled": self._throttled,
                "requests": dict(sorted(self._requests.items())),
                "calls": dict(sorted(self._calls.items())),  # per API method, e.g. "get_service"
                "responses": {str(k): v for k, v in sorted(self._responses.items())},
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._reset_stats_locked()

    def _reset_stats_locked(self) -> None:
        self._stats: dict[str, _ServiceStats] = {}
        self._throttled = 0
        self._requests: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._responses: dict[int, int] = {}

    def _service_stats(self, name: str) -> _ServiceStats:
        return self._stats.setdefault(name, _ServiceStats())

    # -- HTTP plumbing --

    def _build_routes(self) -> list[_Route]:
        seg = r"([^/:]+)"
        loc = rf"/v2/projects/{seg}/locations/{seg}"
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
        ]
        return [_Route(m, re.compile(p + "$"), h, w, h.__name__.lstrip("_")) for m, p, h, w in table]

    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        if request.path.startswith("/_standin/"):
            response = self._admin(request)
        else:
            status, body = self._api(request)
            response = Response(body, status, mimetype="application/json")
        return response(environ, start_response)

    def _api(self, request: Request) -> tuple[int, str]:
        with self._lock:
            self._requests[request.method] = self._requests.get(request.method, 0) + 1
        try:
            status, body = self._dispatch(request)
        except ApiError as e:
            status, body = e.http, e.body()
        except Exception as e:  # a stand-in bug must surface as a 500 the client can see, not a hang
            log.exception("cloudrun stand-in: unhandled error")
            status, body = 500, ApiError(500, f"stand-in internal error: {e!r}").body()
        with self._lock:
            self._responses[status] = self._responses.get(status, 0) + 1
            if status == 429:
                self._throttled += 1
        return status, body

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
            with self._lock:
                self._calls[route.name] = self._calls.get(route.name, 0) + 1
            if route.write:
                self._take_write_token(m.group(1), m.group(2))
            return route.handler(request, *m.groups())
        if allowed:
            raise ApiError(405, f"Method {request.method} is not allowed on {request.path}.", "INVALID_ARGUMENT")
        if request.path.startswith("/v2/"):
            raise ApiError(501, f"{request.method} {request.path} is not implemented by the stand-in.")
        raise ApiError(404, f"The requested URL {request.path} was not found.")

    def _inject_http_fault(self, method: str) -> None:
        with self._lock:
            for fault in self._http_faults:
                if fault.fires(method):
                    raise ApiError(fault.status, f"injected fault: HTTP {fault.status} for {method}")

    def _take_write_token(self, project: str, location: str) -> None:
        with self._lock:
            quota = self._quota
            if quota is None:
                return
            bucket = self._buckets.setdefault((project, location), _TokenBucket(quota))
            if bucket.take():
                return
        raise ApiError(
            429,
            f"Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute per region' "
            f"of service 'run.googleapis.com' for consumer 'project_number:{project}' in region '{location}'.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {"service": "run.googleapis.com", "quota_limit_value": str(quota)},
                }
            ],
        )

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

    # -- request parsing and validation --

    @staticmethod
    def _body_service(request: Request) -> run_v2.Service:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise ApiError(400, "Request body is too large.")
        try:
            return run_v2.Service.from_json(request.get_data(as_text=True) or "{}", ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError) as e:
            raise ApiError(400, f"Invalid JSON payload received. {e}") from None

    @staticmethod
    def _update_mask(request: Request) -> list[str] | None:
        raw = request.args.get("updateMask")
        if not raw:
            return None
        mask = field_mask_pb2.FieldMask()
        mask.FromJsonString(raw)  # camelCase on the wire -> snake_case paths
        if not mask.IsValidForDescriptor(run_v2.Service.pb().DESCRIPTOR):
            raise ApiError(400, f"Invalid update_mask: {raw}")
        # Output-only paths are ignored, as the API ignores output-only fields in the body.
        return [p for p in mask.paths if p.split(".")[0] not in SERVICE_OUTPUT_ONLY]

    def _validate_spec(self, svc: run_v2.Service, sid: str, rec: _ServiceRecord | None, new_revision: str | None) -> None:
        for where, mapping in (
            ("labels", svc.labels),
            ("annotations", svc.annotations),
            ("template.labels", svc.template.labels),
            ("template.annotations", svc.template.annotations),
        ):
            for key in mapping:
                domain = key.split("/", 1)[0] if "/" in key else ""
                if any(domain == p or domain.endswith("." + p) for p in RESERVED_PREFIXES):
                    raise ApiError(
                        400, f"Invalid {where} key '{key}': system {where.split('.')[-1]} in the '{domain}' "
                        "namespace are not supported in the v2 API."
                    )
        containers = svc.template.containers
        if not 1 <= len(containers) <= MAX_CONTAINERS:
            raise ApiError(400, f"template.containers must have between 1 and {MAX_CONTAINERS} entries.")
        for i, c in enumerate(containers):
            if not c.image:
                raise ApiError(400, f"template.containers[{i}].image: must be set.")
            try:
                parse_image(c.image)
            except ValueError as e:
                raise ApiError(400, f"template.containers[{i}].image: {e}") from None
        revision = svc.template.revision
        if revision and (not _REVISION_NAME.match(revision) or not revision.startswith(sid + "-")):
            raise ApiError(400, f"template.revision '{revision}' must start with '{sid}-' and be a valid name.")
        self._validate_traffic(svc, rec, new_revision)

    @staticmethod
    def _validate_traffic(svc: run_v2.Service, rec: _ServiceRecord | None, new_revision: str | None) -> None:
        known = set(rec.revisions) if rec else set()
        if new_revision:
            known.add(new_revision)
        total = 0
        for i, t in enumerate(svc.traffic):
            if t.type_ == BY_REVISION:
                if t.revision not in known:
                    raise ApiError(400, f"traffic[{i}]: revision '{t.revision}' does not exist.")
            elif t.type_ != LATEST:
                raise ApiError(400, f"traffic[{i}].type must be set.")
            if not 0 <= t.percent <= 100:
                raise ApiError(400, f"traffic[{i}].percent must be within [0, 100].")
            total += t.percent
        if total != 100:
            raise ApiError(400, f"traffic percentages must add up to 100, got {total}.")

    # -- services --

    def _create_service(self, request: Request, project: str, location: str) -> tuple[int, str]:
        sid = request.args.get("serviceId", "")
        if not _SERVICE_ID.match(sid):
            raise ApiError(400, f"serviceId '{sid}' must match {_SERVICE_ID.pattern}.")
        body = self._body_service(request)
        name = f"projects/{project}/locations/{location}/services/{sid}"
        validate_only = _arg_bool(request, "validateOnly")
        with self._lock:
            if name in self._services:
                raise ApiError(409, f"Resource '{sid}' already exists.", "ALREADY_EXISTS")
            in_region = sum(1 for n in self._services if n.startswith(f"projects/{project}/locations/{location}/"))
            if in_region >= MAX_SERVICES_PER_REGION:
                raise ApiError(400, f"At most {MAX_SERVICES_PER_REGION} services per region.", "FAILED_PRECONDITION")
            return self._create_locked(name, body, validate_only)

    def _create_locked(self, name: str, body: run_v2.Service, validate_only: bool) -> tuple[int, str]:
        project, location, sid = _parts(name)
        svc = run_v2.Service()
        field_mask_pb2.FieldMask(paths=list(SERVICE_MUTABLE)).MergeMessage(
            run_v2.Service.pb(body), run_v2.Service.pb(svc), replace_message_field=True, replace_repeated_field=True
        )
        if not svc.traffic:
            svc.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        rev_name = svc.template.revision or None
        self._validate_spec(svc, sid, None, rev_name)
        svc.name = name
        if validate_only:
            return 200, self._op_json(self._done_op(name, svc))
        now = _now()
        svc.uid = str(uuid.uuid4())
        svc.generation = 1
        svc.create_time = now
        svc.update_time = now
        svc.etag = self._etag()
        svc.uri = f"https://{sid}-{zlib.crc32(project.encode()) % 10**12}.{location}.run.app"
        svc.urls = [svc.uri]
        rec = _ServiceRecord(service=svc)
        self._reserve_slot()
        self._services[name] = rec
        self._service_stats(name).creates += 1
        rev = self._new_revision_locked(rec, rev_name or self._revision_name(rec, sid, 1), now)
        return 200, self._start_deploy_locked(rec, rev.revision.name.rsplit("/", 1)[1])

    def _update_service(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        body = self._body_service(request)
        name = f"projects/{project}/locations/{location}/services/{sid}"
        if body.name and body.name != name:
            raise ApiError(400, f"service.name '{body.name}' does not match the request path.")
        mask = self._update_mask(request)
        validate_only = _arg_bool(request, "validateOnly")
        allow_missing = _arg_bool(request, "allowMissing")
        with self._lock:
            rec = self._services.get(name)
            if rec is None:
                if not allow_missing:
                    raise _not_found("SERVICE", sid, project, location)
                return self._create_locked(name, body, validate_only)
            if body.etag and body.etag != rec.service.etag:
                raise ApiError(409, f"Precondition failed: etag '{body.etag}' does not match the current etag of '{sid}'.")
            return self._update_locked(rec, body, mask, validate_only)

    def _update_locked(
        self, rec: _ServiceRecord, body: run_v2.Service, mask: list[str] | None, validate_only: bool
    ) -> tuple[int, str]:
        old = rec.service
        _, _, sid = _parts(old.name)
        new = _copy(old)
        paths = mask if mask is not None else list(SERVICE_MUTABLE)
        field_mask_pb2.FieldMask(paths=paths).MergeMessage(
            run_v2.Service.pb(body), run_v2.Service.pb(new), replace_message_field=True, replace_repeated_field=True
        )
        if not new.traffic:
            new.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        template_changed = _template_key(new.template) != _template_key(old.template)
        spec_changed = _spec_key(new) != _spec_key(old)
        rev_name = None
        if template_changed:
            rev_name = new.template.revision or None
            if rev_name and rev_name in rec.revisions:
                same = rec.revisions[rev_name].config_key == _config_key(new.template)
                what = "this name" if same else "different configuration"
                raise ApiError(409, f"Revision named '{rev_name}' with {what} already exists.", "ALREADY_EXISTS")
        self._validate_spec(new, sid, rec, rev_name)
        if validate_only:
            return 200, self._op_json(self._done_op(old.name, new))
        self._reserve_slot()
        now = _now()
        new.generation = old.generation + (1 if spec_changed else 0)
        new.update_time = now
        new.etag = self._etag()  # every accepted write changes the etag
        rec.service = new
        if spec_changed:
            stats = self._service_stats(new.name)
            stats.updates += 1
            old_images = _images(old)
            stats.images.extend(img for i, img in enumerate(_images(new)) if i >= len(old_images) or old_images[i] != img)
        if template_changed:
            rev = self._new_revision_locked(rec, rev_name or self._revision_name(rec, sid, new.generation), now)
            return 200, self._start_deploy_locked(rec, rev.revision.name.rsplit("/", 1)[1])
        return 200, self._start_deploy_locked(rec, None)

    def _get_service(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        with self._lock:
            return 200, _to_json(self._record(project, location, sid).service)

    def _list_services(self, request: Request, project: str, location: str) -> tuple[int, str]:
        if location == "-":
            raise ApiError(400, "Cloud Run does not support listing services across all regions (location '-').")
        parent = f"projects/{project}/locations/{location}"
        size = _page_size(request)
        after = _decode_token(parent, request.args.get("pageToken", ""))
        with self._lock:
            names = sorted(n for n in self._services if n.startswith(parent + "/services/") and (after is None or n > after))
            page = [self._services[n].service for n in names[:size]]
            token = _encode_token(parent, names[size - 1]) if len(names) > size else ""
            return 200, _to_json(run_v2.ListServicesResponse(services=page, next_page_token=token))

    def _delete_service(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        etag = request.args.get("etag", "")
        validate_only = _arg_bool(request, "validateOnly")
        with self._lock:
            rec = self._record(project, location, sid)
            if etag and etag != rec.service.etag:
                raise ApiError(409, f"Precondition failed: etag '{etag}' does not match the current etag of '{sid}'.")
            snapshot = _copy(rec.service)
            if not validate_only:
                del self._services[snapshot.name]
                snapshot.delete_time = _now()
            return 200, self._op_json(self._done_op(snapshot.name, snapshot, remember=not validate_only))

    def _record(self, project: str, location: str, sid: str) -> _ServiceRecord:
        rec = self._services.get(f"projects/{project}/locations/{location}/services/{sid}")
        if rec is None:
            raise _not_found("SERVICE", sid, project, location)
        return rec

    # -- revisions --

    def _revision_name(self, rec: _ServiceRecord, sid: str, generation: int) -> str:
        """`S-00001-abc`: the generation, zero-padded, and three random letters, like Cloud Run's."""
        for _ in range(64):
            name = f"{sid}-{generation:05d}-" + "".join(self._rng.choices(string.ascii_lowercase, k=3))
            if name not in rec.revisions:
                return name
        raise ApiError(500, "could not pick a free revision name")

    def _new_revision_locked(self, rec: _ServiceRecord, short: str, now: datetime) -> _RevisionRecord:
        svc = rec.service
        # Template and Revision share their camelCase field names; unknown ones (revision, ...) drop out.
        rev = run_v2.Revision.from_json(_to_json(svc.template), ignore_unknown_fields=True)
        rev.name = f"{svc.name}/revisions/{short}"
        rev.uid = str(uuid.uuid4())
        rev.generation = 1
        rev.create_time = now
        rev.update_time = now
        rev.service = svc.name.rsplit("/", 1)[1]
        rev.launch_stage = svc.launch_stage
        rev.reconciling = True
        rev.etag = self._etag()
        rev.conditions = [self._condition("Ready", State.CONDITION_RECONCILING, message="Deploying revision.")]
        rec.seq += 1
        record = _RevisionRecord(rev, _config_key(svc.template), rec.seq, self._draw_fault_locked(svc.name))
        rec.revisions[short] = record
        svc.latest_created_revision = rev.name
        self._prune_revisions_locked(rec)
        return record

    def _draw_fault_locked(self, service: str) -> DeployFailure | None:
        for key in (service, "*"):
            counted = self._counted_faults.get(key)
            if counted and counted.remaining > 0:
                counted.remaining -= 1
                return DeployFailure(counted.reason, "injected fault: The user-provided container failed to become ready.")
        for key in (service, "*"):
            rnd = self._random_faults.get(key)
            if rnd and rnd.rng.random() < rnd.probability:
                return DeployFailure(rnd.reason, "injected random fault: The user-provided container failed to become ready.")
        return None

    def _prune_revisions_locked(self, rec: _ServiceRecord) -> None:
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

    def _list_revisions(self, request: Request, project: str, location: str, sid: str) -> tuple[int, str]:
        parent = f"projects/{project}/locations/{location}/services/{sid}"
        size = _page_size(request)
        after = _decode_token(parent, request.args.get("pageToken", ""))
        with self._lock:
            rec = self._record(project, location, sid)
            # Newest first, like `gcloud run revisions list`; the token is the last sequence number returned.
            recs = sorted(rec.revisions.values(), key=lambda r: -r.seq)
            if after is not None:
                recs = [r for r in recs if r.seq < int(after)]
            page = [r.revision for r in recs[:size]]
            token = _encode_token(parent, str(recs[size - 1].seq)) if len(recs) > size else ""
            return 200, _to_json(run_v2.ListRevisionsResponse(revisions=page, next_page_token=token))

    def _get_revision(self, request: Request, project: str, location: str, sid: str, short: str) -> tuple[int, str]:
        with self._lock:
            record = self._record(project, location, sid).revisions.get(short)
            if record is None:
                raise _not_found("REVISION", short, project, location)
            return 200, _to_json(record.revision)

    # -- operations and deploys --

    def _get_operation(self, request: Request, project: str, location: str, op_id: str) -> tuple[int, str]:
        name = f"projects/{project}/locations/{location}/operations/{op_id}"
        with self._lock:
            op = self._operations.get(name)
            if op is None:
                raise ApiError(404, f"Operation '{name}' not found.")
            return 200, json_format.MessageToJson(op, use_integers_for_enums=True, indent=None)

    def _reserve_slot(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise ApiError(503, "The stand-in's deploy queue is full; retry later.")

    def _new_op_locked(self, service_name: str) -> operations_pb2.Operation:
        project, location, _ = _parts(service_name)
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
            project, location, _ = _parts(service_name)
            op = operations_pb2.Operation(name=f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}")
        op.done = True
        op.metadata.Pack(run_v2.Service.pb(svc))
        op.response.Pack(run_v2.Service.pb(svc))
        return op

    @staticmethod
    def _op_json(op: operations_pb2.Operation) -> str:
        return json_format.MessageToJson(op, use_integers_for_enums=True, indent=None)

    def _start_deploy_locked(self, rec: _ServiceRecord, revision: str | None) -> str:
        """Record an unfinished operation and queue the deploy; the caller has reserved a slot."""
        svc = rec.service
        op = self._new_op_locked(svc.name)
        rec.pending_jobs += 1
        self._refresh_status_locked(rec)
        op.metadata.Pack(run_v2.Service.pb(svc))
        job = _DeployJob(op.name, svc.name, svc.uid, revision, svc.generation)
        assert self._pool is not None, "stand-in not started"
        self._pool.submit(self._run_job, job)
        return self._op_json(op)

    def _run_job(self, job: _DeployJob) -> None:
        try:
            if self._stopping.wait(self.deploy_latency_s):
                return
            failure = self._check_revision(job)
            with self._lock:
                self._finish_job_locked(job, failure)
        except Exception as e:  # never leave an operation pending forever because of a stand-in bug
            log.exception("cloudrun stand-in: deploy job failed")
            with self._lock:
                self._finish_job_locked(job, DeployFailure("INTERNAL", f"stand-in error: {e!r}"))
        finally:
            self._slots.release()

    def _check_revision(self, job: _DeployJob) -> DeployFailure | None:
        if job.revision is None:
            return None
        with self._lock:
            rec = self._services.get(job.service)
            record = rec.revisions.get(job.revision) if rec and rec.service.uid == job.service_uid else None
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

    def _finish_job_locked(self, job: _DeployJob, failure: DeployFailure | None) -> None:
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
            op.error.CopyFrom(status_pb2.Status(code=FAILED_PRECONDITION, message=_not_ready(job.revision, failure.message)))
        else:
            op.response.Pack(run_v2.Service.pb(rec.service))

    def _settle_revision_locked(self, rec: _ServiceRecord, record: _RevisionRecord, failure: DeployFailure | None) -> None:
        rev = record.revision
        rev.reconciling = False
        rev.observed_generation = rev.generation
        rev.update_time = _now()
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
    def _latest_failed_locked(rec: _ServiceRecord) -> bool:
        latest = rec.revisions.get(rec.service.latest_created_revision.rsplit("/", 1)[-1])
        return latest is not None and latest.state == "failed"

    def _refresh_status_locked(self, rec: _ServiceRecord) -> None:
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
                message=_not_ready(latest.revision.name.rsplit("/", 1)[1], cause.message),
            )
        else:
            terminal = self._condition("Ready", State.CONDITION_SUCCEEDED)
        if svc.terminal_condition.state != terminal.state or svc.terminal_condition.message != terminal.message:
            svc.terminal_condition = terminal
        routes = State.CONDITION_SUCCEEDED if svc.latest_ready_revision else State.CONDITION_RECONCILING
        svc.conditions = [
            self._condition("RoutesReady", routes),
            run_v2.Condition(_copy(terminal), type_="ConfigurationsReady"),
        ]
        if terminal.state != State.CONDITION_SUCCEEDED:
            return  # traffic_statuses: transient while reconciling, the last serving state after a failure
        ready = svc.latest_ready_revision.rsplit("/", 1)[-1] if svc.latest_ready_revision else ""
        svc.traffic_statuses = [
            run_v2.TrafficTargetStatus(
                type_=t.type_, revision=ready if t.type_ == LATEST else t.revision, percent=t.percent, tag=t.tag,
                uri=svc.uri.replace("https://", f"https://{t.tag}---") if t.tag else "",
            )
            for t in svc.traffic
        ]

    @staticmethod
    def _condition(type_: str, state: State, *, reason: str | None = None, message: str = "") -> run_v2.Condition:
        c = run_v2.Condition(type_=type_, state=state, message=message, last_transition_time=_now())
        if state == State.CONDITION_FAILED:
            c.severity = run_v2.Condition.Severity.ERROR
        if reason in CommonReason.__members__:
            c.reason = CommonReason[reason]
        elif reason in RevisionReason.__members__:
            c.revision_reason = RevisionReason[reason]
        return c

    def _etag(self) -> str:
        return '"' + base64.urlsafe_b64encode(self._rng.randbytes(12)).decode() + '"'


# --- CLI -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.cloudrun_standin", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--registry-host", required=True, help="host:port of the OCI registry images must come from")
    parser.add_argument("--deploy-latency-s", type=float, default=0.05)
    parser.add_argument("--write-quota-per-min", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    standin = CloudRunStandin(
        registry_host=args.registry_host, host=args.host, port=args.port, deploy_latency_s=args.deploy_latency_s,
        write_quota_per_min=args.write_quota_per_min, seed=args.seed,
    )
    with standin:
        print(f"cloudrun-standin listening on {standin.url}", flush=True)
        done.wait()  # until SIGTERM/SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
