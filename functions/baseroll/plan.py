"""Pure planning: which services to roll, which unique app images to rebase, and why others are skipped."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from . import ledger, refs
from .config import Labels
from .fleet import ServiceView
from .match import BaseVersion, ImageFacts, match_image
from .refs import ImageRef, RefError


@dataclass(frozen=True)
class RebaseJob:
    app: ImageRef  # pinned by digest
    old_base: ImageRef  # pinned by digest


@dataclass(frozen=True)
class ServicePlan:
    service: ServiceView
    action: Literal["rebase", "skip"]
    reason: str
    # container index -> the job whose result it gets
    containers: Mapping[int, RebaseJob]


@dataclass(frozen=True)
class Plan:
    track_image: ImageRef
    new_base: ImageRef  # pinned by digest
    services: tuple[ServicePlan, ...]
    jobs: tuple[RebaseJob, ...]

    @property
    def to_roll(self) -> list[ServicePlan]:
        return [s for s in self.services if s.action == "rebase"]


def opted_out(svc: ServiceView, labels: Labels) -> bool:
    return svc.labels.get(labels.opt_out, "").lower() == "true"


def images_to_inspect(services: Sequence[ServiceView], labels: Labels, allowed: frozenset[str]) -> set[str]:
    """The distinct container images worth reading from the registry (opted-out and foreign ones are not)."""
    wanted: set[str] = set()
    for svc in services:
        if opted_out(svc, labels):
            continue
        for image in svc.images:
            try:
                if refs.is_allowed(refs.parse(image), allowed):
                    wanted.add(image)
            except RefError:
                continue
    return wanted


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
) -> Plan:
    """`facts` maps each container image string to its facts, or to the reason it could not be read."""
    base_repo = track_image.with_tag(None)
    jobs: dict[tuple[ImageRef, str], RebaseJob] = {}
    plans: list[ServicePlan] = []
    for svc in sorted(services, key=lambda s: s.name):
        if opted_out(svc, labels):
            plans.append(ServicePlan(svc, "skip", f"opted out by label {labels.opt_out}=true", {}))
            continue
        if (svc.annotations.get(ledger.STATE) == "rolled-back"
                and svc.annotations.get(ledger.BASE_DIGEST) == new_base.digest):
            reason = svc.annotations.get(ledger.REASON, "")
            plans.append(ServicePlan(svc, "skip", f"already rolled back from this base: {reason}", {}))
            continue
        containers: dict[int, RebaseJob] = {}
        reasons: list[str] = []
        current = False
        for index, image in enumerate(svc.images):
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
                containers[index] = job
            elif m.verdict == "current":
                current = True
            else:
                reasons.append(f"container {index}: {m.reason}")
        if containers:
            plans.append(ServicePlan(svc, "rebase", "built on an older version of the base", containers))
        elif current:
            plans.append(ServicePlan(svc, "skip", "already on the new base", {}))
        else:
            plans.append(ServicePlan(svc, "skip", "; ".join(reasons) or "no container", {}))
    return Plan(track_image, new_base, tuple(plans), tuple(jobs.values()))
