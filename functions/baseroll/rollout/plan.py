"""Pure planning: which services to roll and how, which unique app images to rebase, and why others are skipped.

Three strategies, per container:
- `rebase`: the image is built on an older version of the base: rebase it (once per unique app
  image × old base) and deploy the result by digest;
- `base-uri`: the container uses Cloud Run's `base_image_uri` pinned by digest to an older version
  of the base: move the pin (no rebase); a pin on a moving tag is Cloud Run's to update, and skipped;
- `redeploy`: an app image was rebuilt (the multi-tenant case): deploy its new digest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

from baseroll.config import Labels
from baseroll.contracts import ledger
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.images.match import BaseVersion, ImageFacts, match_image
from baseroll.images.refs import ImageRef, RefError

Strategy = Literal["rebase", "base-uri", "redeploy"]
Scope = Callable[[str, Mapping[str, str]], bool]  # (service name, labels) -> in scope


def everything(name: str, labels: Mapping[str, str]) -> bool:
    return True


@dataclass(frozen=True)
class RebaseJob:
    app: ImageRef  # pinned by digest
    old_base: ImageRef  # pinned by digest


@dataclass(frozen=True)
class Change:
    """What happens to one container."""

    strategy: Strategy
    job: RebaseJob | None = None  # rebase: its result is the new image
    target: ImageRef | None = None  # redeploy: the new image; base-uri: the new base_image_uri


@dataclass(frozen=True)
class ServicePlan:
    service: ServiceView
    action: Literal["roll", "skip"]
    reason: str
    containers: Mapping[int, Change] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return "+".join(sorted({c.strategy for c in self.containers.values()}))


@dataclass(frozen=True)
class Plan:
    track_image: ImageRef  # the base track, or the app image (name[:tag]) being redeployed
    new_base: ImageRef  # pinned by digest: the new base, or the new app build
    services: tuple[ServicePlan, ...]
    jobs: tuple[RebaseJob, ...]

    @property
    def to_roll(self) -> list[ServicePlan]:
        return [s for s in self.services if s.action == "roll"]


def opted_out(svc: ServiceView, labels: Labels) -> bool:
    return svc.labels.get(labels.opt_out, "").lower() == "true"


def images_to_inspect(services: Sequence[ServiceView], labels: Labels, allowed: frozenset[str],
                      scope: Scope = everything, *, include_opted_out: bool = False) -> set[str]:
    """The distinct container images worth reading from the registry (opted-out, out-of-scope and foreign ones are not)."""
    wanted: set[str] = set()
    for svc in services:
        if (opted_out(svc, labels) and not include_opted_out) or not scope(svc.name, svc.labels):
            continue
        for index, image in enumerate(svc.images):
            if index < len(svc.base_image_uris) and svc.base_image_uris[index]:
                continue  # Cloud Run manages this container's base; its image is not rebased
            try:
                if refs.is_allowed(refs.parse(image), allowed):
                    wanted.add(image)
            except RefError:
                continue
    return wanted


def _precheck(svc: ServiceView, labels: Labels, scope: Scope, new_digest: str | None) -> str | None:
    """A reason to skip the service before looking at its containers, or None."""
    if not scope(svc.name, svc.labels):
        return "outside the request's filter"
    if opted_out(svc, labels):
        return f"opted out by label {labels.opt_out}=true"
    if (svc.annotations.get(ledger.STATE) == "rolled-back"
            and svc.annotations.get(ledger.BASE_DIGEST) == new_digest):
        return f"already rolled back from this target: {svc.annotations.get(ledger.REASON, '')}"
    return None


def _base_uri_change(uri: str, base_repo: ImageRef, new_base: ImageRef) -> Change | str | None:
    """For a container with base_image_uri: a Change, 'current', a skip reason, or None (another base)."""
    try:
        ref = refs.parse(uri)
    except RefError as exc:
        return f"base_image_uri: {exc}"
    if ref.name != base_repo.name:
        return None
    if ref.digest is None:
        return f"base_image_uri {uri} follows a tag: Cloud Run's automatic base image updates manage it"
    if ref.digest == new_base.digest:
        return "current"
    return Change("base-uri", target=new_base.pinned())


def make_plan(
    *,
    track_image: ImageRef,
    new_base: ImageRef,
    new_version: BaseVersion,
    known_versions: Sequence[BaseVersion],
    services: Sequence[ServiceView],
    facts: Mapping[str, ImageFacts | str],
    labels: Labels,
    allowed: frozenset[str],
    scope: Scope = everything,
) -> Plan:
    """Plan a base rollout. `facts` maps each container image string to its facts, or to why it could not be read."""
    base_repo = track_image.with_tag(None)
    jobs: dict[tuple[ImageRef, str], RebaseJob] = {}
    plans: list[ServicePlan] = []
    for svc in sorted(services, key=lambda s: s.name):
        skip = _precheck(svc, labels, scope, new_base.digest)
        if skip:
            plans.append(ServicePlan(svc, "skip", skip))
            continue
        containers: dict[int, Change] = {}
        reasons: list[str] = []
        current = False
        for index, image in enumerate(svc.images):
            uri = svc.base_image_uris[index] if index < len(svc.base_image_uris) else ""
            if uri:
                found = _base_uri_change(uri, base_repo, new_base)
                if isinstance(found, Change):
                    containers[index] = found
                elif found == "current":
                    current = True
                elif found:
                    reasons.append(f"container {index}: {found}")
                else:
                    reasons.append(f"container {index}: base_image_uri is another base")
                continue
            try:
                ref = refs.parse(image)
            except RefError as exc:
                reasons.append(f"container {index}: {exc}")
                continue
            if not refs.is_allowed(ref, allowed):
                reasons.append(f"container {index}: registry {ref.registry} is not allow-listed")
                continue
            fact = facts.get(image)
            if fact is None or isinstance(fact, str):
                reasons.append(f"container {index}: image unreadable: {fact or 'not inspected'}")
                continue
            m = match_image(fact, track_image, new_version, known_versions)
            if m.verdict == "outdated" and m.old_base_digest:
                key = (fact.ref, m.old_base_digest)
                job = jobs.setdefault(key, RebaseJob(fact.ref, base_repo.with_digest(m.old_base_digest)))
                containers[index] = Change("rebase", job=job)
            elif m.verdict == "current":
                current = True
            else:
                reasons.append(f"container {index}: {m.reason}")
        if containers:
            plans.append(ServicePlan(svc, "roll", "built on an older version of the base", containers))
        elif current:
            plans.append(ServicePlan(svc, "skip", "already on the new base"))
        else:
            plans.append(ServicePlan(svc, "skip", "; ".join(reasons) or "no container"))
    return Plan(track_image, new_base, tuple(plans), tuple(jobs.values()))


def make_app_plan(
    *,
    app: ImageRef,
    new_image: ImageRef,
    services: Sequence[ServiceView],
    labels: Labels,
    scope: Scope = everything,
    deployed_tag_label: str = "baseroll-app-tag",
) -> Plan:
    """Plan a redeploy of a rebuilt app image (`app` = registry/repo[:tag], `new_image` pinned).

    A container follows the build when it runs the same repository and either the same tag, or a
    digest while the service says (label `deployed_tag_label`) which tag it was deployed from,
    or the build carries no tag at all.
    """
    plans: list[ServicePlan] = []
    for svc in sorted(services, key=lambda s: s.name):
        skip = _precheck(svc, labels, scope, new_image.digest)
        if skip:
            plans.append(ServicePlan(svc, "skip", skip))
            continue
        containers: dict[int, Change] = {}
        current = False
        for index, image in enumerate(svc.images):
            try:
                ref = refs.parse(image)
            except RefError:
                continue
            if ref.name != app.name:
                continue
            follows = app.tag is None or ref.tag == app.tag or (
                ref.tag is None and svc.labels.get(deployed_tag_label) == app.tag)
            if not follows:
                continue
            if ref.digest == new_image.digest:
                current = True
            else:
                containers[index] = Change("redeploy", target=new_image.pinned())
        if containers:
            plans.append(ServicePlan(svc, "roll", f"runs {app}", containers))
        elif current:
            plans.append(ServicePlan(svc, "skip", "already on the new build"))
        else:
            plans.append(ServicePlan(svc, "skip", f"does not run {app}"))
    return Plan(app, new_image, tuple(plans), ())


def members(plan: Plan, fleet: list[ServiceView], rollout_id: str) -> list[ServiceView]:
    """Who belongs to the rollout: services still to roll, and services it already touched."""
    names = {sp.service.name for sp in plan.to_roll}
    return [s for s in fleet if s.name in names or s.annotations.get(ledger.ROLLOUT_ID) == rollout_id]
