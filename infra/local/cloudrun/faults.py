"""Fault injection, the per-region write quota and statistics of the Cloud Run stand-in: one set for both
fronts, so a fault, a throttled write or a counted call is the same over REST and gRPC."""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from .common import ApiError, CommonReason, RevisionReason
from .images import DeployFailure

log = logging.getLogger("baseroll.standin.cloudrun")
T = TypeVar("T")

def _reason_name(name: str) -> str:
    if name not in CommonReason.__members__ and name not in RevisionReason.__members__:
        raise ValueError(f"unknown condition reason {name!r}")
    return name


@dataclass(frozen=True)
class ApiCall:
    """One API call as either front hands it to the call hooks (`add_call_hook`)."""

    method: str  # the API method, as the statistics count it: "update_service", "get_service", ...
    # The ids in the resource name the call addresses, the same over both fronts: (project, location),
    # then the service and revision, or, for get_operation, the operation.
    ids: tuple[str, ...]
    metadata: Mapping[str, str]  # the caller's request metadata: HTTP headers or gRPC metadata, keys lower-case

    @property
    def resource(self) -> str:
        """The full resource name: `projects/P/locations/L[/services/S[/revisions/R]]` or `.../operations/O`."""
        project, location, *rest = self.ids
        name = f"projects/{project}/locations/{location}"
        kinds = ("operations",) if self.method == "get_operation" else ("services", "revisions")
        for kind, rid in zip(kinds, rest):
            name += f"/{kind}/{rid}"
        return name


CallHook = Callable[[ApiCall], None]


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


class FaultsMixin:
    """Faults, quota and statistics of `CloudRunStandin` (also over `/_standin/`)."""

    _lock: threading.RLock

    def _init_faults(self, write_quota_per_min: int | None) -> None:
        self._quota: int | None = None
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self.set_write_quota(write_quota_per_min)
        self._counted_faults: dict[str, _CountedFault] = {}
        self._random_faults: dict[str, _RandomFault] = {}
        self._http_faults: list[_HttpFault] = []
        self._call_hooks: list[CallHook] = []
        self._reset_stats_locked()

    def _serve(self, verb: str, call: Callable[[], T]) -> T:
        """Count one API request (by its HTTP verb, whichever front it came in on) and its outcome, as an
        HTTP status; a stand-in bug surfaces as a 500 (INTERNAL) the client can see, not a hang."""
        with self._lock:
            self._requests[verb] = self._requests.get(verb, 0) + 1
        status = 200
        try:
            return call()
        except ApiError as e:
            status = e.http
            raise
        except Exception as e:
            log.exception("cloudrun stand-in: unhandled error")
            status = 500
            raise ApiError(500, f"stand-in internal error: {e!r}") from e
        finally:
            with self._lock:
                self._responses[status] = self._responses.get(status, 0) + 1
                if status == 429:
                    self._throttled += 1

    def _admit(self, call: ApiCall, write: bool) -> None:
        """What both fronts do once a request is parsed, before the state is touched: count the call,
        take a write token (429 when the region's quota is spent), then run the call hooks."""
        with self._lock:
            self._calls[call.method] = self._calls.get(call.method, 0) + 1
            hooks = tuple(self._call_hooks)
        if write:
            self._take_write_token(call.ids[0], call.ids[1])
        for hook in hooks:
            hook(call)

    def add_call_hook(self, hook: CallHook) -> None:
        """Run `hook(call)` on every API call, over REST and gRPC alike, on the serving thread just before
        the call reads or changes the state (after its injected HTTP fault and write token): it may block,
        to hold the call while a test races it, or raise ApiError to fail it. For tests, in-process only."""
        with self._lock:
            self._call_hooks.append(hook)

    def remove_call_hook(self, hook: CallHook) -> None:
        with self._lock:
            if hook in self._call_hooks:
                self._call_hooks.remove(hook)

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
