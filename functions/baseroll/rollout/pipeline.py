"""The planning pipeline shared by the planner, the coordinator and the CLI: resolve the new
digest, discover the fleet, read image facts, match, plan, and turn plan changes into targets."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping

from baseroll import log
from baseroll.config import BaseTrack, Config
from baseroll.contracts.messages import Rollout
from baseroll.contracts.roll import RollRequest
from baseroll.fleet import workloads
from baseroll.fleet.view import Fleet, ServiceView
from baseroll.images import refs
from baseroll.images.catalog import Catalog
from baseroll.images.match import BaseVersion
from baseroll.images.oci import OCIError
from baseroll.images.rebase import RebaseError
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, RegistryError
from baseroll.rollout import lineage as lineage_mod
from baseroll.rollout import plan as planning
from baseroll.rollout import policy
from baseroll.rollout.lineage import TrackLineage
from baseroll.rollout.plan import Plan, RebaseJob, Scope, ServicePlan

# job, new base, dry_run → the rebased image pinned by digest
Rebase = Callable[[RebaseJob, ImageRef, bool], ImageRef]


def discover(fleet: Fleet, cfg: Config, *, quiet: bool = False) -> list[ServiceView]:
    """List every kind `fleet` holds (services, jobs, worker pools: `fleet.workloads`) in every
    configured project × region (ListServices, ListJobs and ListWorkerPools need a concrete region)."""
    listings = [(kind_fleet, p, r) for kind_fleet in workloads.adapters(fleet).values()
                for p in cfg.projects for r in cfg.regions]
    with ThreadPoolExecutor(max_workers=min(8, len(listings))) as pool:
        chunks = list(pool.map(lambda fpr: list(fpr[0].list_services(fpr[1], fpr[2])), listings))
    services = [s for chunk in chunks for s in chunk]
    if not quiet:
        kinds = Counter(s.kind for s in services)
        log.info("fleet.discovered", services=len(services), locations=len(cfg.projects) * len(cfg.regions),
                 **({"kinds": dict(kinds)} if set(kinds) - {"service"} else {}))
    return services


def build_plan(cfg: Config, fleet: Fleet, catalog: Catalog, request: RollRequest, new_ref: ImageRef,
               *, scope: Scope = planning.everything, quiet: bool = False) -> Plan:
    """Discover, inspect and match. `quiet` for re-plans mid-rollout: the first plan logged every
    decision. Each workload's decision is logged by `log_decisions`, when the caller can afford it."""
    if request.kind == "app":
        services = discover(fleet, cfg, quiet=quiet)
        result = planning.make_app_plan(app=request.image, new_image=new_ref, services=services, labels=cfg.labels,
                                        scope=scope, deployed_tag_label=cfg.labels.app_tag)
    else:
        # The base's versions come from the registry and the lineage store, the fleet from Cloud Run:
        # each is read while the other is.
        with ThreadPoolExecutor(max_workers=1) as side:
            versions = side.submit(_versions, cfg, catalog, request.image, new_ref, quiet)
            services = discover(fleet, cfg, quiet=quiet)
            new_version, lineage = versions.result()
        wanted = planning.images_to_inspect(services, cfg.labels, cfg.allowed_registries, scope)
        facts = catalog.facts_many(wanted)
        result = planning.make_plan(
            track_image=request.image, new_base=new_ref, new_version=new_version, known_versions=lineage.own,
            services=services, facts=facts, labels=cfg.labels, allowed=cfg.allowed_registries, scope=scope,
            lineage=lineage,
        )
    if not quiet:
        # Another host cannot mount the base's layers unless it takes `origin` (docs/OCI.md#blobs).
        for host in sorted({job.app.registry for job in result.jobs} - {new_ref.registry}):
            log.warning("plan.cross_host", base_host=new_ref.registry, app_host=host,
                        reason="base layers may be copied through baseroll, not mounted")
    return result


def log_decisions(plan: Plan) -> None:
    """One `service.planned` line per workload: what the plan decided for it and why. The planner
    writes them once the first wave is on its way (10,000 lines take a few hundred ms)."""
    for sp in plan.services:
        log.info("service.planned", service=sp.service.name, kind=sp.service.kind, action=sp.action,
                 reason=sp.reason, strategy=sp.strategy or None, images=list(sp.service.images))


def _versions(cfg: Config, catalog: Catalog, track_image: ImageRef, new_ref: ImageRef,
              quiet: bool) -> tuple[BaseVersion, TrackLineage]:
    new_version = catalog.version(new_ref)
    return new_version, track_lineage(cfg, catalog, track_image, new_version, quiet=quiet)


def track_lineage(cfg: Config, catalog: Catalog, track_image: ImageRef, new_version: BaseVersion, *,
                  quiet: bool = False) -> TrackLineage:
    """The track's versions and its repository's other tracks, from the tags, Artifact Registry's
    listing and the lineage store's records of every configured track of that repository."""
    track = cfg.track_for(track_image) or BaseTrack("", track_image)
    others = lineage_mod.siblings(track, cfg.base_tracks)
    repo = track.repository
    tags = catalog.tags_of(repo, keep=[t.image.tag for t in (track, *others) if t.image.tag])
    listed = catalog.listed_versions(repo)
    recorded = {t.name: catalog.recorded(t.name) for t in (track, *others) if t.name}
    digests = [*tags.values(), *listed, *(d for ds in recorded.values() for d in ds)]
    versions = catalog.versions_of(repo, digests)
    result = lineage_mod.lineage_of(track, others, new=new_version, tags=tags, versions=versions, listed=listed,
                                    recorded=recorded)
    if not quiet:
        log.info("base.lineage", track=track.name or str(track_image), versions=len(result.own),
                 other_tracks=sorted({name for name, _ in result.others}), untied=len(result.untied))
    return result


def resolve_new_ref(client: RegistryClient, request: RollRequest) -> ImageRef:
    """The digest to roll to. For a tag, the digest it points at now: an event's digest that the tag
    no longer points at was superseded by a newer push, whose own event rolls the same way."""
    if request.image.tag is None:
        if not request.digest:
            raise RegistryError(f"{request.image} names neither a tag nor a digest")
        if client.head_manifest(request.image.with_digest(request.digest)) is None:
            raise RegistryError(f"{request.image}@{request.digest} does not exist", 404, "MANIFEST_UNKNOWN")
        return request.image.with_digest(request.digest)
    current = client.head_manifest(request.image)
    if current is None:
        raise RegistryError(f"{request.image} does not exist", 404, "MANIFEST_UNKNOWN")
    if request.digest and request.digest != current:
        log.notice("target.superseded", image=str(request.image), event_digest=request.digest, current=current)
    return request.image.at(current)


REBASE_WORKERS = 8  # rebases at once: each is a dozen small registry requests, mostly waiting on the registry


def rebase_jobs_for(jobs: Iterable[RebaseJob], new_base: ImageRef, rebase: Rebase, *,
                    dry_run: bool = False) -> dict[RebaseJob, ImageRef | str]:
    """One rebase per unique app image × old base, several at once: the rebased image, or why it was refused."""
    def one(job: RebaseJob) -> ImageRef | str:
        try:
            result = rebase(job, new_base, dry_run)
            log.info("image.rebased", app=str(job.app), old_base=str(job.old_base), new_base=str(new_base),
                     result=str(result), dry_run=dry_run)
            return result
        except Exception as exc:  # noqa: BLE001 - whatever one image throws fails that image only
            known = isinstance(exc, (RebaseError, RegistryError, OCIError))
            reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
            log.error("image.rebase_failed", app=str(job.app), old_base=str(job.old_base), reason=reason)
            return reason

    todo = list(jobs)
    if len(todo) <= 1:
        return {job: one(job) for job in todo}
    with ThreadPoolExecutor(max_workers=min(REBASE_WORKERS, len(todo))) as pool:
        return dict(zip(todo, pool.map(one, todo)))


def targets_for(sp: ServicePlan, rebased: Mapping[RebaseJob, ImageRef | str]) -> tuple[dict[int, str], dict[int, str]] | str:
    """(images, base_image_uris) by container index for a planned service, or why it cannot roll."""
    images: dict[int, str] = {}
    uris: dict[int, str] = {}
    for index, change in sp.containers.items():
        if change.strategy == "rebase":
            assert change.job is not None
            result = rebased.get(change.job, "not rebased")
            if isinstance(result, str):
                return policy.rebase_refused(result)
            images[index] = str(result)
        elif change.strategy == "redeploy":
            images[index] = str(change.target)
        else:
            uris[index] = str(change.target)
    return images, uris


def current_digest(registry: RegistryClient, ro: Rollout) -> str | None:
    """What the followed tag points at now (a newer digest supersedes the rollout); an untagged
    target cannot be superseded."""
    image = refs.parse(ro.track_image)
    if image.tag is None:
        return ro.base_digest
    return registry.head_manifest(image)
