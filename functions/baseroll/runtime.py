"""Wiring: build the real adapters from a Config. Nothing is created at import time."""
from __future__ import annotations

import functools

from baseroll import clock as clock_mod
from baseroll import config as config_mod
from baseroll.config import Config
from baseroll.fleet.cloudrun import CloudRunFleet
from baseroll.images import rebaser
from baseroll.images.artifact_registry import ArtifactRegistryVersions
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient
from baseroll.rollout.bus import Bus, PubSubBus
from baseroll.rollout.deps import Deps
from baseroll.rollout.firestore_store import FirestoreStore
from baseroll.rollout.plan import RebaseJob


def build(cfg: Config, *, bus: Bus | None = None) -> Deps:
    """The real adapters; `bus` replaces the Pub/Sub one (whose client needs credentials when created)."""
    registry = RegistryClient(plain_http_hosts=cfg.plain_http_registries, allowed_hosts=cfg.allowed_registries)

    def rebase(job: RebaseJob, new_base: ImageRef, dry_run: bool = False) -> ImageRef:
        return rebaser.rebase_image(registry, job.app, job.old_base, new_base, dry_run=dry_run,
                                    drift_policy=cfg.rollout.drift_policy).ref

    store = FirestoreStore.connect(cfg.record_project, cfg.store_database, clock_mod.SYSTEM)
    return Deps(
        config=cfg,
        fleet=CloudRunFleet.connect(cfg.cloud_run_endpoint),
        registry=registry,
        bus=bus if bus is not None else PubSubBus(cfg.topic_project),
        records=store,
        rebase=rebase,
        lineage=store,
        clock=clock_mod.SYSTEM,
        version_lister=ArtifactRegistryVersions(),
    )


@functools.lru_cache(maxsize=1)
def from_environment() -> Deps:
    """One set of clients per function instance, built on first use and reused across invocations."""
    return build(config_mod.load())
