"""Execute a roll request in process: resolve, discover, match, plan, rebase, deploy, report.

Each stage logs one line per decision. Fan-out over Pub/Sub and waves build on the same
pieces (`plan.make_plan`, `deploy.apply`) and replace only the in-process loop.
"""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import deploy, ledger, log, plan as planning
from .catalog import Catalog
from .config import Config
from .events import RollRequest
from .fleet import Fleet, ServiceView
from .plan import Plan, RebaseJob
from .refs import ImageRef
from .registry import RegistryClient, RegistryError
from .rebase import RebaseError

Rebase = Callable[[RebaseJob, ImageRef], ImageRef]  # job, new base → rebased image pinned by digest


@dataclass
class Report:
    rollout_id: str
    track: str
    new_base: str
    dry_run: bool
    planned: int = 0
    outcomes: list[deploy.Outcome] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (service, reason)
    rebased: dict[str, str] = field(default_factory=dict)  # app image → rebased image
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        c = Counter(o.result for o in self.outcomes)
        c["skipped"] += len(self.skipped)
        return dict(c)

    def to_dict(self) -> dict:
        return {
            "rollout_id": self.rollout_id, "track": self.track, "new_base": self.new_base, "dry_run": self.dry_run,
            "planned": self.planned, "counts": self.counts(), "seconds": round(self.seconds, 3),
            "services": [o.__dict__ for o in self.outcomes],
            "skipped": [{"service": s, "reason": r} for s, r in self.skipped],
            "rebased": self.rebased,
        }


def discover(fleet: Fleet, cfg: Config, *, quiet: bool = False) -> list[ServiceView]:
    """List services in every configured project × region (ListServices needs a concrete region)."""
    pairs = [(p, r) for p in cfg.projects for r in cfg.regions]
    with ThreadPoolExecutor(max_workers=min(8, len(pairs))) as pool:
        chunks = list(pool.map(lambda pr: list(fleet.list_services(*pr)), pairs))
    services = [s for chunk in chunks for s in chunk]
    if not quiet:
        log.info("fleet.discovered", services=len(services), locations=len(pairs))
    return services


def build_plan(cfg: Config, fleet: Fleet, catalog: Catalog, request: RollRequest, new_base: ImageRef,
               *, quiet: bool = False) -> Plan:
    """Discover, inspect and match. `quiet` for re-plans mid-rollout: the first plan logged every decision."""
    new_version = catalog.version(new_base)
    known = catalog.base_versions(request.image)
    services = discover(fleet, cfg, quiet=quiet)
    wanted = planning.images_to_inspect(services, cfg.labels, cfg.allowed_registries)
    facts = catalog.facts_many(wanted)
    result = planning.make_plan(
        track_image=request.image, new_base=new_base, new_version=new_version, known_versions=known,
        services=services, facts=facts, labels=cfg.labels, allowed=cfg.allowed_registries,
    )
    for sp in [] if quiet else result.services:
        log.info("service.planned", service=sp.service.name, action=sp.action, reason=sp.reason,
                 images=list(sp.service.images))
    return result


def resolve_new_base(client: RegistryClient, request: RollRequest) -> ImageRef:
    """The digest the track's tag points at now. An event's digest that the tag no longer points at
    was superseded by a newer push: roll to the newest, which that push's own event also does."""
    current = client.head_manifest(request.image)
    if current is None:
        raise RegistryError(f"{request.image} does not exist")
    if request.digest and request.digest != current:
        log.notice("base.superseded", image=str(request.image), event_digest=request.digest, current=current)
    return request.image.with_digest(current)


def rebase_jobs_for(jobs: Iterable[RebaseJob], new_base: ImageRef, rebase: Rebase) -> dict[RebaseJob, ImageRef | str]:
    """One rebase per unique app image × old base: the rebased image, or why it was refused."""
    out: dict[RebaseJob, ImageRef | str] = {}
    for job in jobs:
        try:
            out[job] = rebase(job, new_base)
            log.info("image.rebased", app=str(job.app), old_base=str(job.old_base), new_base=str(new_base),
                     result=str(out[job]))
        except (RebaseError, RegistryError) as exc:
            out[job] = str(exc)
            log.error("image.rebase_failed", app=str(job.app), old_base=str(job.old_base), reason=str(exc))
    return out


def rebase_jobs(plan: Plan, new_base: ImageRef, rebase: Rebase) -> dict[RebaseJob, ImageRef | str]:
    return rebase_jobs_for(plan.jobs, new_base, rebase)


def run(cfg: Config, fleet: Fleet, client: RegistryClient, request: RollRequest, rebase: Rebase) -> Report:
    started = time.monotonic()
    track = cfg.track_for(request.image)
    assert track is not None, "the event layer only lets tracked tags through"
    new_base = resolve_new_base(client, request)
    assert new_base.digest
    rollout = ledger.rollout_id(track.name, new_base.digest)
    report = Report(rollout, track.name, str(new_base), request.dry_run)
    log.info("rollout.started", rollout_id=rollout, track=track.name, new_base=str(new_base), dry_run=request.dry_run)
    the_plan = build_plan(cfg, fleet, Catalog(client), request, new_base)
    report.planned = len(the_plan.to_roll)
    report.skipped = [(sp.service.name, sp.reason) for sp in the_plan.services if sp.action == "skip"]
    if request.dry_run:
        report.seconds = time.monotonic() - started
        log.notice("rollout.dry_run", rollout_id=rollout, **report.counts(), planned=report.planned)
        return report

    rebased = rebase_jobs(the_plan, new_base, rebase)
    report.rebased = {str(job.app): str(r) for job, r in rebased.items() if isinstance(r, ImageRef)}

    def roll(sp: planning.ServicePlan) -> deploy.Outcome:
        failures = [r for r in (rebased[j] for j in sp.containers.values()) if isinstance(r, str)]
        if failures:
            log.warning("service.skipped", service=sp.service.name, reason=f"rebase failed: {failures[0]}")
            return deploy.Outcome(sp.service.name, "skipped", sp.service.images, sp.service.images,
                                  f"rebase failed: {failures[0]}")
        targets = {i: str(rebased[j]) for i, j in sp.containers.items()}
        return deploy.apply(fleet, sp.service, targets, rollout=rollout, base_digest=new_base.digest,
                            timeout_s=cfg.rollout.ready_timeout_s)

    with ThreadPoolExecutor(max_workers=cfg.rollout.concurrency) as pool:
        report.outcomes = list(pool.map(roll, the_plan.to_roll))
    report.seconds = time.monotonic() - started
    log.notice("rollout.finished", rollout_id=rollout, seconds=round(report.seconds, 3), **report.counts())
    return report
