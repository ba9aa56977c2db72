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
from typing import Literal, Mapping, Sequence

from baseroll.config import Labels
from baseroll.contracts import ledger
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.images.match import BaseVersion, ImageFacts, match_image
from baseroll.images.refs import ImageRef, RefError
from baseroll.rollout import lineage as lineage_mod
from baseroll.rollout import policy
from baseroll.rollout.lineage import TrackLineage
from baseroll.rollout.policy import Scope, everything

Strategy = Literal["rebase", "base-uri", "redeploy"]


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


def images_to_inspect(services: Sequence[ServiceView], labels: Labels, allowed: frozenset[str],
                      scope: Scope = everything, *, include_opted_out: bool = False) -> set[str]:
    """The distinct container images worth reading from the registry (opted-out, out-of-scope and foreign ones are not)."""
    wanted: set[str] = set()
    for svc in services:
        if (policy.opted_out(svc, labels) and not include_opted_out) or not scope(svc.name, svc.labels):
            continue
        for index, image in enumerate(svc.images):
            if index < len(svc.base_image_uris) and svc.base_image_uris[index]:
                continue  # Cloud Run manages this container's base; its image is not rebased
            try:
                if policy.registry_refused(refs.parse(image), allowed) is None:
                    wanted.add(image)
            except RefError:
                continue
    return wanted


@dataclass
class _BaseMatcher:
    """Decides each container of a base rollout; collects one rebase job per app image × old base."""

    track_image: ImageRef
    new_base: ImageRef
    new_version: BaseVersion
    known_versions: Sequence[BaseVersion]
    facts: Mapping[str, ImageFacts | str]
    allowed: frozenset[str]
    lineage: TrackLineage | None = None  # None: every known version is taken as the track's
    jobs: dict[tuple[ImageRef, str], RebaseJob] = field(default_factory=dict)

    def change(self, image: str, uri: str) -> Change | str | None:
        """The container's Change, None when it is already on the new base, or why it is left alone."""
        if uri:
            return self._base_uri_change(uri)
        try:
            ref = refs.parse(image)
        except RefError as exc:
            return str(exc)
        refused = policy.registry_refused(ref, self.allowed)
        if refused:
            return refused
        fact = self.facts.get(image)
        if fact is None or isinstance(fact, str):
            return policy.UNREADABLE.format(why=fact or policy.NOT_INSPECTED)
        if self.lineage is not None:
            checked = lineage_mod.verdict(fact, self.lineage)
            if isinstance(checked, str):
                return checked
            fact = checked
        m = match_image(fact, self.track_image, self.new_version, self.known_versions)
        if m.verdict == "outdated" and m.old_base_digest:
            base_repo = self.track_image.with_tag(None)
            job = self.jobs.setdefault((fact.ref, m.old_base_digest),
                                       RebaseJob(fact.ref, base_repo.with_digest(m.old_base_digest)))
            return Change("rebase", job=job)
        return None if m.verdict == "current" else m.reason

    def _base_uri_change(self, uri: str) -> Change | str | None:
        """For a container with base_image_uri: move its pin, None when current, or why not."""
        try:
            ref = refs.parse(uri)
        except RefError as exc:
            return policy.BASE_URI_UNPARSABLE.format(error=exc)
        if ref.name != self.track_image.with_tag(None).name:
            return policy.BASE_URI_OTHER_BASE
        if ref.digest is None:
            return policy.BASE_URI_FOLLOWS_TAG.format(uri=uri)
        if ref.digest == self.new_base.digest:
            return None
        return Change("base-uri", target=self.new_base.pinned())


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
    lineage: TrackLineage | None = None,
) -> Plan:
    """Plan a base rollout. `facts` maps each container image string to its facts, or to why it could not be read.
    With `lineage` (whose `own` should be `known_versions`), an app on another track of the base's
    repository, or on a version of unknown lineage, is skipped with that reason (`rollout.lineage`)."""
    matcher = _BaseMatcher(track_image, new_base, new_version, known_versions, facts, allowed, lineage)
    plans: list[ServicePlan] = []
    for svc in sorted(services, key=lambda s: s.name):
        skip = policy.service_skip(svc, labels, scope, new_base.digest)
        if skip:
            plans.append(ServicePlan(svc, "skip", skip))
            continue
        containers: dict[int, Change] = {}
        reasons: list[str] = []
        current = False
        for index, image in enumerate(svc.images):
            found = matcher.change(image, svc.base_image_uris[index] if index < len(svc.base_image_uris) else "")
            if isinstance(found, Change):
                containers[index] = found
            elif found is None:
                current = True
            else:
                reasons.append(policy.container(index, found))
        if containers:
            plans.append(ServicePlan(svc, "roll", "built on an older version of the base", containers))
        elif current:
            plans.append(ServicePlan(svc, "skip", policy.ALREADY_ON_NEW_BASE))
        else:
            plans.append(ServicePlan(svc, "skip", "; ".join(reasons) or policy.NO_CONTAINER))
    return Plan(track_image, new_base, tuple(plans), tuple(matcher.jobs.values()))


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
        skip = policy.service_skip(svc, labels, scope, new_image.digest)
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
            plans.append(ServicePlan(svc, "skip", policy.ALREADY_ON_NEW_BUILD))
        else:
            plans.append(ServicePlan(svc, "skip", policy.DOES_NOT_RUN.format(app=app)))
    return Plan(app, new_image, tuple(plans), ())


def members(plan: Plan, fleet: list[ServiceView], rollout_id: str) -> list[ServiceView]:
    """Who belongs to the rollout: services still to roll, and services it already touched."""
    names = {sp.service.name for sp in plan.to_roll}
    return [s for s in fleet if s.name in names or s.annotations.get(ledger.ROLLOUT_ID) == rollout_id]
