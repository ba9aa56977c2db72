"""Wiring: build the real adapters from a Config. Nothing is created at import time."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

from baseroll import clock as clock_mod
from baseroll import config as config_mod
from baseroll.config import Config, ConfigError, RegistryCredential
from baseroll.fleet.cloudrun import CloudRunFleet
from baseroll.fleet.jobs import CloudRunJobs, CloudRunWorkerPools
from baseroll.fleet.verify import GoogleIdTokens, HttpProber
from baseroll.fleet.workloads import Workloads
from baseroll.images import rebaser
from baseroll.images.artifact_registry import ArtifactRegistryVersions
from baseroll.images.refs import ImageRef
from baseroll.images.registry import (
    GoogleTokenSource,
    RegistryClient,
    StaticCredentials,
)
from baseroll.rollout.bus import Bus, PubSubBus
from baseroll.rollout.deps import Deps
from baseroll.rollout.firestore_store import FirestoreStore
from baseroll.rollout.plan import RebaseJob


def build(cfg: Config, *, bus: Bus | None = None) -> Deps:
    """The real adapters; `bus` replaces the Pub/Sub one (whose client needs credentials when created)."""
    registry = registry_client(cfg)

    def rebase(job: RebaseJob, new_base: ImageRef, dry_run: bool = False) -> ImageRef:
        return rebaser.rebase_image(registry, job.app, job.old_base, new_base, dry_run=dry_run,
                                    drift_policy=cfg.rollout.drift_policy).ref

    store = FirestoreStore.connect(cfg.record_project, cfg.store_database, clock_mod.SYSTEM)
    return Deps(
        config=cfg,
        fleet=workload_fleet(cfg),
        registry=registry,
        bus=bus if bus is not None else PubSubBus(cfg.topic_project),
        records=store,
        rebase=rebase,
        lineage=store,
        clock=clock_mod.SYSTEM,
        version_lister=ArtifactRegistryVersions(),
        prober=HttpProber(GoogleIdTokens()) if cfg.rollout.verify.enabled else None,
    )


def workload_fleet(cfg: Config) -> Workloads:
    """One adapter per kind in `rollout.workloads`, all on the configured endpoint and transport."""
    connect = {"service": CloudRunFleet.connect, "job": CloudRunJobs.connect,
               "worker-pool": CloudRunWorkerPools.connect}
    return Workloads({kind: connect[kind](cfg.cloud_run_endpoint, cfg.cloud_run_transport)  # type: ignore[misc]
                      for kind in cfg.rollout.workloads})


def registry_client(cfg: Config, env: Mapping[str, str] | None = None, **overrides: Any) -> RegistryClient:
    """The client for `cfg`'s registries: its `registry_credentials` (and their token hosts) where
    configured, Google's tokens for Google's registries, anonymous elsewhere. `overrides` go to
    RegistryClient (the CLI's `rebase` allows the hosts it was given)."""
    options: dict[str, Any] = {"plain_http_hosts": cfg.plain_http_registries, "allowed_hosts": cfg.allowed_registries,
                               "credentials": registry_credentials(cfg, env), "token_hosts": cfg.token_hosts}
    return RegistryClient(**{**options, **overrides})


def registry_credentials(cfg: Config, env: Mapping[str, str] | None = None) -> StaticCredentials:
    """Each configured registry's (username, password), read now: a missing secret fails the
    function's first invocation loudly instead of surfacing as a registry's 401 later."""
    env = os.environ if env is None else env
    return StaticCredentials({c.host: (c.username, _password(c, env)) for c in cfg.registry_credentials},
                             fallback=GoogleTokenSource())


def _password(cred: RegistryCredential, env: Mapping[str, str]) -> str:
    where = f"registry_credentials[{cred.host}]"
    if cred.password_env is not None:
        if not env.get(cred.password_env):
            raise ConfigError(f"{where}: environment variable {cred.password_env} is not set")
        return env[cred.password_env]
    try:  # a mounted secret is its bare value; a hand-written file may end with a newline
        value = Path(cred.password_file or "").read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read password_file {cred.password_file}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{where}: password_file {cred.password_file} is empty")
    return value


_BUILT: list[Deps] = []
_BUILDING = threading.Lock()


def from_environment() -> Deps:
    """One set of clients per function instance, built on first use and reused across invocations.
    Invocations that arrive together at a fresh instance (a wave's tasks) wait for the one build
    instead of each building its own clients."""
    if not _BUILT:
        with _BUILDING:
            if not _BUILT:
                _BUILT.append(build(config_mod.load()))
    return _BUILT[0]
