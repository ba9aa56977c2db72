"""Verify at zero traffic: the traffic each write carries, and whether a revision's answers pass.

The transitions (docs/GOOGLE_APIS.md#verify-at-zero-traffic), for a service whose traffic was T
and whose serving revision was R when the task began, and the new revision N that baseroll names:

1. deploy: the template change, with `traffic` = T where every LATEST entry is pinned by name to R
   (percent and tag kept), plus a 0 % entry for N under the tag `VERIFY_TAG` (`during_check`);
2. check: the probe's requests go to the tag's own URL, with an ID token for the service URL;
3. pass: `traffic` = T with every entry pinned to R moved to N, LATEST entries LATEST again (they
   resolve to N now), and the tag gone (`after_pass`);
4. fail: the template goes back with `traffic` = the pins of step 1 without the tag (so nothing
   can reach N, nor the restored revision before it is ready), then T once the restored revision
   is ready (`held_for_rollback`, then T).

Pure: the requests go through the `Prober` port (the adapter is `fleet.verify`, the fake `fleet.fake`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from baseroll.fleet.traffic import follow, short
from baseroll.fleet.view import LATEST, REVISION, ServiceView, TrafficSplit

VERIFY_TAG = "baseroll-verify"  # the revision tag of the revision under check (a DNS label, as tags are)
MAX_BODY = 200  # bytes of a failing answer kept for the ledger, the result and the log
# Statuses that come from Cloud Run's front end refusing the caller, not from the app: never a pass
# under `expect_below` (the worker's service account lacks roles/run.invoker, or the token is wrong).
REFUSED_CALLER = frozenset({401, 403})


@dataclass(frozen=True)
class Probe:
    """The requests one service is verified with (config `rollout.verify`, the service's labels)."""

    path: str = "/"
    method: str = "GET"
    expect_below: int = 500  # a pass is any status below this one...
    expect_status: tuple[int, ...] = ()  # ...unless exact statuses are listed
    requests: int = 3
    timeout_s: float = 5.0

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Reply:
    status: int | None  # None: no answer (timed out, refused, reset)
    body: bytes = b""
    error: str = ""


class Prober(Protocol):
    def send(self, method: str, url: str, *, audience: str, timeout_s: float) -> Reply:
        """One request to `url` with an ID token whose audience is `audience`; never raises for
        the far side's failures (they are a Reply with `status` None and the `error`)."""
        ...


@dataclass(frozen=True)
class Check:
    """What `deploy.apply` needs to verify: the service's probe and the port to send it through."""

    probe: Probe
    prober: Prober


@dataclass(frozen=True)
class Finding:
    passed: bool
    detail: str  # "3 x GET / -> 200", or the failing request with its status and first bytes


def refusal(reply: Reply, probe: Probe) -> str | None:
    """Why `reply` fails `probe`, or None when it passes."""
    if reply.status is None:
        return f"no answer ({reply.error})"
    if probe.expect_status:
        ok = reply.status in probe.expect_status
    else:
        ok = reply.status < probe.expect_below and reply.status not in REFUSED_CALLER
    if ok:
        return None
    head = reply.body[:MAX_BODY].decode("utf-8", "replace")
    hint = " (Cloud Run refused the worker's ID token: roles/run.invoker?)" if reply.status in REFUSED_CALLER else ""
    return f"answered {reply.status}{hint}: {' '.join(head.split())!r}"


def check(prober: Prober, url: str, audience: str, probe: Probe) -> Finding:
    """Send the probe's requests one after another (at most `requests` x `timeout_s` in all),
    stopping at the first that fails."""
    statuses = []
    for i in range(probe.requests):
        reply = prober.send(probe.method, join(url, probe.path), audience=audience, timeout_s=probe.timeout_s)
        why = refusal(reply, probe)
        if why is not None:
            return Finding(False, f"request {i + 1}/{probe.requests} {probe.describe()} {why}")
        statuses.append(str(reply.status))
    return Finding(True, f"{probe.requests} x {probe.describe()} -> {','.join(sorted(set(statuses)))}")


def join(url: str, path: str) -> str:
    return url.rstrip("/") + "/" + path.lstrip("/")


def without_tag(split: tuple[TrafficSplit, ...]) -> tuple[TrafficSplit, ...]:
    """`split` without baseroll's verification entry (a 0 % entry, so the percentages still add up)."""
    return tuple(t for t in split if t.tag != VERIFY_TAG)


def during_check(svc: ServiceView, new_revision: str) -> tuple[TrafficSplit, ...] | None:
    """The traffic of the deploy: as it is, LATEST pinned by name to the revision serving it now,
    and the new revision at 0 % under the tag. None when no revision serves (nothing to pin to)."""
    serving = short(svc.latest_ready_revision)
    if not serving:
        return None
    pinned = tuple(TrafficSplit(REVISION, t.percent, serving, t.tag) if t.type == LATEST else t
                   for t in without_tag(svc.traffic))
    return pinned + (TrafficSplit(REVISION, 0, new_revision, VERIFY_TAG),)


def after_pass(before: tuple[TrafficSplit, ...], replaced: str, new_revision: str) -> tuple[TrafficSplit, ...]:
    """The traffic the service had, with the new revision where it named the replaced one (LATEST
    entries stay LATEST: the new revision is now the latest ready one), and no tag of ours."""
    return follow(without_tag(before), replaced, new_revision)


def held_for_rollback(during: tuple[TrafficSplit, ...]) -> tuple[TrafficSplit, ...]:
    """The traffic of the rollback write: the pins of the check, without the tag."""
    return without_tag(during)
