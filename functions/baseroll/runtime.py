"""Wiring: build the real adapters from a Config. Nothing is created at import time."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from . import config as config_mod
from .config import Config
from .fleet import CloudRunFleet, Fleet
from .plan import RebaseJob
from .refs import ImageRef
from .registry import RegistryClient
from . import rebaser


@dataclass
class Runtime:
    config: Config
    fleet: Fleet
    registry: RegistryClient

    def rebase(self, job: RebaseJob, new_base: ImageRef) -> ImageRef:
        result = rebaser.rebase_image(
            self.registry, job.app, job.old_base, new_base, drift_policy=self.config.rollout.drift_policy
        )
        return result.ref


def build(cfg: Config) -> Runtime:
    registry = RegistryClient(plain_http_hosts=cfg.plain_http_registries, allowed_hosts=cfg.allowed_registries)
    return Runtime(cfg, CloudRunFleet.connect(cfg.cloud_run_endpoint), registry)


@functools.lru_cache(maxsize=1)
def from_environment() -> Runtime:
    """One runtime per function instance, built on first use and reused across invocations."""
    return build(config_mod.load())
