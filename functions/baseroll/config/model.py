"""The configuration as the rest of baseroll reads it: plain frozen values, and the error that names a bad field."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from baseroll.images.refs import ImageRef

if TYPE_CHECKING:
    from baseroll.config.windows import WindowRule

# What a rollout can roll: Cloud Run services, jobs and worker pools (fleet.view.WorkloadKind).
WORKLOAD_KINDS = ("service", "job", "worker-pool")
POLICIES = ("report", "require")  # what to do with a rebased image, whose new digest no signature covers


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class BaseTrack:
    name: str
    image: ImageRef  # registry/repository:tag that the track follows
    # fnmatch-style patterns of the repository's other tags that are versions of this track
    # (e.g. "3.12.*", "3.12-*"): an app built on one of them is this track's, though the track tag moved on.
    version_tags: tuple[str, ...] = ()

    @property
    def repository(self) -> ImageRef:
        return self.image.with_tag(None)


@dataclass(frozen=True)
class SigningPolicy:
    policy: str = "report"  # report: deploy and say the old signature does not carry; require: signed only
    request_topic: str | None = None  # where sign requests go (a signing step subscribes to it)


@dataclass(frozen=True)
class Labels:
    opt_out: str = "baseroll-opt-out"  # value "true" opts a service out
    cohort: str = "baseroll-cohort"  # value "canary" puts a service in the first wave
    app_tag: str = "baseroll-app-tag"  # the app tag a digest-pinned service was deployed from
    verify: str = "baseroll-verify"  # value "false" turns verification at zero traffic off for a service
    verify_path: str = "baseroll-verify-path"  # the path to verify, "--" for each "/" (label values have none)
    # value "true" runs a job once after its update; the template stays only if that run succeeds
    verify_execution: str = "baseroll-verify-execution"


@dataclass(frozen=True)
class FailureBudget:
    """Failures a wave may have before the rollout halts: a count, or a fraction of the wave."""

    count: int | None = 0
    fraction: float | None = None

    def exceeded(self, failures: int, wave_size: int) -> bool:
        if self.fraction is not None:
            return failures > self.fraction * wave_size
        return failures > (self.count or 0)


# The traffic write after a passed verification and its settling (`fleet.deploy.TRAFFIC_WRITE_S`).
VERIFY_WRITE_S = 15.0


@dataclass(frozen=True)
class VerifySettings:
    """`rollout.verify`: the requests a new revision answers at zero traffic before it gets any."""

    enabled: bool = True
    path: str = "/"
    method: str = "GET"
    expect_below: int = 500  # a pass is any status below this (401/403 never: Cloud Run refused us)...
    expect_status: tuple[int, ...] = ()  # ...or, when listed, exactly these
    requests: int = 3
    timeout_s: float = 5.0  # per request
    # Services whose ingress is not "all" are reached only from inside (VPC egress): verified only if
    # the worker egresses through the VPC, which only the operator knows.
    internal_ingress: bool = False

    @property
    def budget_s(self) -> float:
        """The requests one after another, each up to its timeout (the traffic write is counted apart)."""
        return self.requests * self.timeout_s if self.enabled else 0.0


def check_budget(verify: VerifySettings, job_verify_timeout_s: float) -> float:
    """What `RolloutSettings.check_budget_s` says, for settings not built yet."""
    return max(verify.budget_s + VERIFY_WRITE_S if verify.enabled else 0.0, job_verify_timeout_s)


@dataclass(frozen=True)
class RolloutSettings:
    ready_timeout_s: float = 240.0  # fits an update, a rollback and both gates in one invocation
    pinned_traffic: str = "follow"  # follow | skip: a service whose traffic is not all on LATEST
    concurrency: int = 8  # tasks released at once per project x region before pacing takes over
    drift_policy: str = "apply-or-refuse"
    waves: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)  # cumulative fractions after the canary cohort
    failure_budget: FailureBudget = field(default_factory=FailureBudget)
    write_quota_per_min: int = 60  # Admin API writes per project x region
    region_quota: Mapping[str, int] = field(default_factory=dict)  # per-region overrides
    invocation_budget_s: float = 480.0  # stay inside the 540 s limit of an event-driven function
    poll_interval_s: float = 2.0
    dry_run: bool = False  # every trigger only plans and reports: a whole deployment in observe mode
    verify: VerifySettings = field(default_factory=VerifySettings)  # verify at zero traffic
    approval: str = "none"  # none | after-canary | every-wave (rollout.gates)
    windows: tuple["WindowRule", ...] = ()  # when services may be written (rollout.windows); none = always
    workloads: tuple[str, ...] = WORKLOAD_KINDS  # the kinds discovered and rolled
    job_verify_timeout_s: float = 30.0  # how long a labelled job's verification execution may run

    @property
    def check_budget_s(self) -> float:
        """The longest check a task may run between its update's gate and its result: a service's
        verification at zero traffic (its requests, then the traffic write) or, when jobs are rolled,
        a job's verification execution."""
        return check_budget(self.verify, self.job_verify_timeout_s if "job" in self.workloads else 0.0)

    def quota_for(self, region: str) -> int:
        """Tasks to release per minute in `region`: its write quota over the writes one task makes
        (with verification, the deploy at zero traffic and the traffic write after it)."""
        writes = int(self.region_quota.get(region, self.write_quota_per_min))
        return max(1, writes // 2) if self.verify.enabled else writes


@dataclass(frozen=True)
class RegistryCredential:
    """One registry's username and where its password is: an environment variable or a file, as a
    Secret Manager secret reaches a function. The password itself never sits in the configuration."""

    host: str
    username: str
    password_env: str | None = None
    password_file: str | None = None
    # Hosts this registry may name as its token realm besides itself; each must be allow-listed too.
    token_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    projects: tuple[str, ...]
    regions: tuple[str, ...]
    base_tracks: tuple[BaseTrack, ...]
    allowed_registries: frozenset[str]
    plain_http_registries: frozenset[str] = frozenset()
    labels: Labels = field(default_factory=Labels)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    cloud_run_endpoint: str | None = None  # None = Google's; set for the local stand-in
    cloud_run_transport: str = "grpc"  # google-cloud-run's default and production's; "rest" selectable
    pubsub_project: str | None = None  # project of the baseroll-* topics; None = first of `projects`
    signatures: SigningPolicy = field(default_factory=SigningPolicy)
    # Where rollout records and track lineage live (Firestore, native mode): project (None = the
    # topics' project) and database.
    store_project: str | None = None
    store_database: str = "(default)"
    registry_credentials: tuple[RegistryCredential, ...] = ()

    @property
    def topic_project(self) -> str:
        return self.pubsub_project or self.projects[0]

    @property
    def record_project(self) -> str:
        return self.store_project or self.topic_project

    @property
    def token_hosts(self) -> dict[str, tuple[str, ...]]:
        return {c.host: c.token_hosts for c in self.registry_credentials if c.token_hosts}

    @property
    def tracked_tags(self) -> set[ImageRef]:
        return {t.image for t in self.base_tracks}

    def track_for(self, image: ImageRef) -> BaseTrack | None:
        for track in self.base_tracks:
            if track.image == image:
                return track
        return None
