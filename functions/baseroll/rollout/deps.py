"""What the rollout core runs on: the ports (fleet, registry, bus, record store, rebase, lineage, clock) and the config.

`runtime.build` wires the real adapters; tests pass fakes (see `rollout.fakes`, `fleet.fake`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from baseroll.clock import SYSTEM, Clock
from baseroll.config import Config
from baseroll.fleet.verification import Prober
from baseroll.fleet.view import Fleet
from baseroll.images.catalog import Catalog
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient
from baseroll.rollout.bus import Bus
from baseroll.rollout.pipeline import Rebase
from baseroll.rollout.store import LineageStore, RecordStore


@dataclass
class Deps:
    config: Config
    fleet: Fleet  # every kind rolled: a fleet.workloads.Workloads over one adapter per kind (a lone Fleet: services)
    registry: RegistryClient
    bus: Bus
    records: RecordStore
    rebase: Rebase
    lineage: LineageStore  # per base track, the digests its tag was seen at (the same store as `records`)
    clock: Clock = SYSTEM  # every wait, deadline and lease age of the core is read from it
    # Lists every version of an Artifact Registry base (tags alone miss untagged old versions).
    version_lister: Callable[[ImageRef], list[str]] | None = None
    # Sends the verification requests at zero traffic (`fleet.verify`); None: readiness only.
    prober: Prober | None = None

    def catalog(self) -> Catalog:
        return Catalog(self.registry, version_lister=self.version_lister, recorded=self.lineage.versions)
