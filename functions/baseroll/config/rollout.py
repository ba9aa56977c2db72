"""`rollout:` settings: waves, budgets, pacing, and a readiness timeout that fits the function's limit."""
from __future__ import annotations

from typing import Any, Mapping

from baseroll.config.fields import _bool, _choice, _known, _number
import re

from baseroll.config.model import (
    VERIFY_WRITE_S,
    WORKLOAD_KINDS,
    ConfigError,
    FailureBudget,
    RolloutSettings,
    VerifySettings,
    check_budget,
)
from baseroll.config.windows import parse_approval, parse_windows
from baseroll.contracts import ids
from baseroll.images.rebase import DRIFT_POLICIES

ROLLOUT_KEYS = ("ready_timeout_s", "pinned_traffic", "concurrency", "drift_policy", "waves", "failure_budget", "write_quota_per_min",
                "region_quota", "invocation_budget_s", "poll_interval_s", "dry_run", "approval", "windows", "verify",
                "workloads", "job_verify_timeout_s")
VERIFY_KEYS = ("enabled", "path", "method", "expect_below", "expect_status", "requests", "timeout_s",
               "internal_ingress")
# Verification requests reach a revision no user uses yet, but it shares the app's data: only
# methods that change nothing (RFC 9110 "safe" methods).
VERIFY_METHODS = ("GET", "HEAD", "OPTIONS")
VERIFY_PATH = re.compile(r"^/[!$&-;=?-~]{0,2047}$")  # printable, no space, no '#', no '<' or '>'


# The worker is an event-driven function: at most 540 s per invocation
# (https://cloud.google.com/functions/docs/configuring/timeout; docs/GOOGLE_APIS.md#cloud-run-admin-api-v2).
FUNCTION_TIMEOUT_S = 540.0


WORKER_MARGIN_S = 30.0  # the worker's reads before the update and its result after the gates


PINNED_TRAFFIC = ("follow", "skip")


def _rollout(doc: Any) -> RolloutSettings:
    if not isinstance(doc, Mapping):
        raise ConfigError("rollout: must be a mapping")
    _known(doc, "rollout.", ROLLOUT_KEYS)
    drift = doc.get("drift_policy", "apply-or-refuse")
    if drift not in DRIFT_POLICIES:
        raise ConfigError(f"rollout.drift_policy: one of {DRIFT_POLICIES}, got {drift!r}")
    verify = _verify(doc.get("verify", {}))
    kinds = _workloads(doc.get("workloads", list(WORKLOAD_KINDS)))
    job_verify = float(_number(doc, "job_verify_timeout_s", 30, 1, FUNCTION_TIMEOUT_S))
    return RolloutSettings(
        ready_timeout_s=_ready_timeout(doc, verify, job_verify if "job" in kinds else 0.0),
        pinned_traffic=_choice(doc, "pinned_traffic", PINNED_TRAFFIC),
        concurrency=int(_number(doc, "concurrency", 8, 1, 256)),
        drift_policy=drift,
        waves=_waves(doc.get("waves", [0.01, 0.1, 0.5, 1.0])),
        failure_budget=_budget(doc.get("failure_budget", 0)),
        write_quota_per_min=int(_number(doc, "write_quota_per_min", 60, 1, 1_000_000)),
        region_quota=_region_quota(doc.get("region_quota") or {}),
        invocation_budget_s=float(_number(doc, "invocation_budget_s", 480, 1, 540)),
        poll_interval_s=float(_number(doc, "poll_interval_s", 2, 0.01, 60)),
        dry_run=_bool(doc, "dry_run"),
        approval=parse_approval(doc.get("approval", "none")),
        windows=parse_windows(doc.get("windows")),
        verify=verify,
        workloads=kinds,
        job_verify_timeout_s=job_verify,
    )


def _workloads(value: Any) -> tuple[str, ...]:
    """`rollout.workloads`: which kinds are discovered and rolled, each once; at least one."""
    if not isinstance(value, list) or not value or any(v not in WORKLOAD_KINDS for v in value) \
            or len(set(value)) != len(value):
        raise ConfigError(f"rollout.workloads: a list of distinct kinds among {list(WORKLOAD_KINDS)}, got {value!r}")
    return tuple(value)


def _ready_timeout(doc: Mapping[str, Any], verify: VerifySettings, job_verify_s: float) -> float:
    """A failed update is gated, rolled back and gated again inside one invocation: each gate may
    take the whole `ready_timeout_s`, so two of them, the verification between them (a service's
    requests and the traffic write after, or a job's verification execution: the longer one) and
    the margin must fit the function's limit."""
    value = float(_number(doc, "ready_timeout_s", 240, 1, 3600))
    checking = check_budget(verify, 0.0)  # the service check alone, to name the longer one below
    most = (FUNCTION_TIMEOUT_S - WORKER_MARGIN_S - check_budget(verify, job_verify_s)) / 2
    if value > most:
        check = ""
        if job_verify_s > checking:
            check = f", a job's verification execution (job_verify_timeout_s: {job_verify_s:g} s)"
        elif verify.enabled:
            check = (f", the verification ({verify.requests} x {verify.timeout_s:g} s requests and a "
                     f"{VERIFY_WRITE_S:g} s traffic write)")
        raise ConfigError(
            f"rollout.ready_timeout_s: at most {most:g} s, got {value:g}: an update and its readiness gate, then a "
            f"rollback and its gate, each up to ready_timeout_s{check}, plus {WORKER_MARGIN_S:g} s of the worker's "
            f"own work must fit the {FUNCTION_TIMEOUT_S:g} s limit of an event-driven function")
    return value


def _verify(doc: Any) -> VerifySettings:
    """`rollout.verify`: `false` turns it off; a mapping sets the requests (defaults: GET /, 3, 5 s, < 500)."""
    if isinstance(doc, bool):
        return VerifySettings(enabled=doc)
    if not isinstance(doc, Mapping):
        raise ConfigError("rollout.verify: a mapping (enabled, path, method, expect_below, expect_status, "
                          "requests, timeout_s) or false")
    _known(doc, "rollout.verify.", VERIFY_KEYS)
    enabled, internal = doc.get("enabled", True), doc.get("internal_ingress", False)
    for key, flag in (("enabled", enabled), ("internal_ingress", internal)):
        if not isinstance(flag, bool):
            raise ConfigError(f"rollout.verify.{key}: true or false, got {flag!r}")
    path = doc.get("path", "/")
    if not isinstance(path, str) or not VERIFY_PATH.fullmatch(path):
        raise ConfigError(f"rollout.verify.path: an absolute path such as /healthz (no spaces or '#'), got {path!r}")
    method = doc.get("method", "GET")
    if method not in VERIFY_METHODS:
        raise ConfigError(f"rollout.verify.method: one of {VERIFY_METHODS} (requests that change nothing), "
                          f"got {method!r}")
    return VerifySettings(
        enabled=enabled, path=path, method=method,
        expect_below=int(_verify_number(doc, "expect_below", 500, 200, 600, whole=True)),
        expect_status=_statuses(doc.get("expect_status", [])),
        requests=int(_verify_number(doc, "requests", 3, 1, 20, whole=True)),
        timeout_s=float(_verify_number(doc, "timeout_s", 5, 0.1, 60)),
        internal_ingress=internal,
    )


def _verify_number(doc: Mapping[str, Any], key: str, default: float, lo: float, hi: float, *,
                   whole: bool = False) -> float:
    value = doc.get(key, default)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        what = "a whole number" if whole else "a number"
        raise ConfigError(f"rollout.verify.{key}: {what} in [{lo:g}, {hi:g}], got {value!r}")
    return value


def _statuses(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599
                                          for v in value):
        raise ConfigError(f"rollout.verify.expect_status: a list of HTTP statuses (e.g. [200, 204]), got {value!r}")
    return tuple(value)


def _waves(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("rollout.waves: a non-empty list of cumulative fractions, e.g. [0.01, 0.1, 0.5, 1.0]")
    waves = []
    for w in value:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
            raise ConfigError(f"rollout.waves: {w!r} is not a fraction in (0, 1]")
        waves.append(float(w))
    if waves != sorted(set(waves)) or waves[-1] != 1.0:
        raise ConfigError("rollout.waves: must be strictly increasing and end at 1.0")
    return tuple(waves)


def _budget(value: Any) -> FailureBudget:
    if isinstance(value, bool):
        raise ConfigError("rollout.failure_budget: a count (e.g. 1) or a percentage (e.g. '5%')")
    if isinstance(value, int) and value >= 0:
        return FailureBudget(count=value)
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            pct = -1
        if 0 <= pct <= 100:
            return FailureBudget(count=None, fraction=pct / 100)
    raise ConfigError(f"rollout.failure_budget: a count (e.g. 1) or a percentage (e.g. '5%'), got {value!r}")


def _region_quota(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ConfigError("rollout.region_quota: a mapping region -> writes per minute")
    out = {}
    for region, quota in value.items():
        if not isinstance(region, str) or not ids.REGION.fullmatch(region):
            raise ConfigError(f"rollout.region_quota: {region!r} is not a region")
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            raise ConfigError(f"rollout.region_quota.{region}: a positive integer")
        out[region] = quota
    return out
