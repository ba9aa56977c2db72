"""The stand-in's state seen from its running revisions and its proxy: which revision process to start
for a deploy, which ones to stop once retired, and where a request for a service or a tag goes
(docs/GOOGLE_APIS.md#revisions-that-really-run).

A revision runs while it may be asked to serve: it is pending, is the latest ready revision, has a share
of the traffic or carries a tag. Everything else is retired and its process stopped.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from google.cloud import run_v2

from .common import DeployJob, RevisionRecord, ServiceRecord, parts, service_uri
from .images import DeployFailure
from .runner import LaunchSpec, RevisionRunner

log = logging.getLogger("baseroll.standin.cloudrun")
SWEEP_PERIOD_S = 0.5


class RouteError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Routes:
    """Where a service URL or tag URL may send a request, and who may call it."""

    audiences: frozenset[str]  # an ID token's `aud` must be one of these
    public: bool  # the invoker check is off for this service
    targets: tuple[tuple[str, str, int], ...]  # (revision short name, revision uid, percent)


def ingress_container(rev: run_v2.Revision) -> run_v2.Container:
    """The container that receives requests: the one with a port, or the only one."""
    with_port = [c for c in rev.containers if c.ports]
    return with_port[0] if with_port else rev.containers[0]


def launch_spec(rev: run_v2.Revision) -> LaunchSpec:
    """The ingress container's image, command, args and plain env, plus what Cloud Run sets in every
    container (K_SERVICE, K_REVISION, K_CONFIGURATION)."""
    c = ingress_container(rev)
    short = rev.name.rsplit("/", 1)[1]
    env = [(e.name, e.value) for e in c.env if not e.value_source]  # secret references are not resolved here
    env += [("K_SERVICE", rev.service), ("K_REVISION", short), ("K_CONFIGURATION", rev.service)]
    return LaunchSpec(c.image, tuple(c.command), tuple(c.args), tuple(env), c.working_dir)


def job_record(services: dict[str, ServiceRecord], job: DeployJob) -> RevisionRecord | None:
    """The revision a deploy job made, unless it or its service (that very one, by uid) is gone."""
    rec = services.get(job.service)
    if rec is None or rec.service.uid != job.service_uid or job.revision is None:
        return None
    return rec.revisions.get(job.revision)


class RunningMixin:
    """The running-mode half of `CloudRunStandin`: `_runner` is None in the simulated mode."""

    _lock: threading.RLock
    _services: dict[str, ServiceRecord]
    _stopping: threading.Event
    _runner: RevisionRunner | None
    allow_unauthenticated: bool
    proxy_base: str

    def _launch_revision(self, job: DeployJob) -> DeployFailure | None:
        """Start the job's revision and wait for its startup probe (simulated mode: nothing to do)."""
        if self._runner is None or job.revision is None:
            return None
        with self._lock:
            record = job_record(self._services, job)
            if record is None:
                return None
            uid, spec = record.revision.uid, launch_spec(record.revision)
        return self._runner.start(uid, spec)

    def _serving_uids_locked(self) -> set[str]:
        keep: set[str] = set()
        for rec in self._services.values():
            svc = rec.service
            wanted = {t.revision for t in svc.traffic_statuses if t.percent > 0 or t.tag}
            wanted.add(svc.latest_ready_revision.rsplit("/", 1)[-1])
            keep |= {r.revision.uid for s, r in rec.revisions.items() if r.state == "pending" or s in wanted}
        return keep

    def _retire_idle_revisions(self) -> None:
        """Stop the processes of revisions that no longer serve; never raises (a deploy job and the
        sweeper call it, and neither may stop because of it)."""
        if self._runner is None:
            return
        try:
            with self._lock:
                keep = self._serving_uids_locked()
            for uid in self._runner.keep_only(keep):
                log.info("cloudrun stand-in: stopped retired revision %s", uid)
        except Exception:  # the next call retries; stop() stops everything anyway
            log.exception("cloudrun stand-in: retiring revisions failed")

    def _sweep_forever(self) -> None:
        """Retire revisions of deleted services and pruned ones too, which no deploy job follows."""
        while not self._stopping.wait(SWEEP_PERIOD_S):
            self._retire_idle_revisions()

    def routes(self, project: str, region: str, sid: str, tag: str | None) -> Routes:
        """The ready revisions a request may go to: by the traffic split, or the tagged one."""
        with self._lock:
            rec = self._services.get(f"projects/{project}/locations/{region}/services/{sid}")
            if rec is None:
                raise RouteError(404, f"Service '{sid}' was not found in {project}/{region}.")
            svc = rec.service
            audiences = frozenset({svc.uri, *svc.urls, service_uri(self.proxy_base, *parts(svc.name))} - {""})
            statuses = [t for t in svc.traffic_statuses if (t.tag == tag if tag else t.percent > 0)]
            ready = [(t, rec.revisions.get(t.revision)) for t in statuses]
            targets = tuple((t.revision, r.revision.uid, t.percent or 100) for t, r in ready
                            if r is not None and r.state == "ready")
            public = self.allow_unauthenticated or svc.invoker_iam_disabled
        if tag and not statuses:
            raise RouteError(404, f"Tag '{tag}' of service '{sid}' was not found.")
        if not targets:
            raise RouteError(503, "Service Unavailable: no ready revision serves this URL.")
        return Routes(audiences, public, targets)

    def revision_port(self, uid: str) -> int | None:
        """The loopback port the revision's process listens on; None in the simulated mode."""
        if self._runner is None:
            return None
        port = self._runner.port(uid)
        if port is None:
            raise RouteError(503, "Service Unavailable: the revision's container is not running.")
        return port

    @property
    def running_revisions(self) -> dict[str, int]:
        """Revision uid → PID of every revision process running (empty in the simulated mode)."""
        return self._runner.running() if self._runner is not None else {}
