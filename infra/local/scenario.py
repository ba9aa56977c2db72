"""Steps shared by `make demo` and the e2e tests: seed, push a new base, deliver its event, read the outcome."""
from __future__ import annotations

from dataclasses import dataclass

import httpx

from baseroll import ledger
from baseroll.refs import ImageRef, parse

from . import eventarc, seed
from .seed import SeededFleet, SeededService
from .stack import LocalStack

GCR_PROJECT = "baseroll-registry"


def seed_fleet(stack: LocalStack, services: int = 40) -> SeededFleet:
    fleet = seed.seed_images(stack.registry_client(), stack.registry.host)
    seed.seed_services(fleet, stack.run_client(), count=services)
    return fleet


def push_new_base(stack: LocalStack, fleet: SeededFleet, base: str) -> ImageRef:
    """Push the next patch of `base` and move its track tag, as a base image pipeline would."""
    b = next(b for b in seed.BASES if b.name == base)
    version = len(fleet.base_versions[base]) + 1
    ref = seed.push_base(stack.registry_client(), stack.registry.host, b, version)
    fleet.base_versions[base].append(ref)
    return ref


def deliver_push(stack: LocalStack, new_base: ImageRef, tag: str | None, *, message_id: str | None = None,
                 target: str = "on_artifact_push") -> httpx.Response:
    """The Artifact Registry INSERT notification for that push, delivered as Eventarc would."""
    data = eventarc.artifact_push_data(str(new_base), str(new_base.with_tag(tag)) if tag else None)
    event = eventarc.message_event(GCR_PROJECT, "gcr", data, message_id=message_id)
    return eventarc.deliver(stack.function_url(target), event)


@dataclass
class ServiceResult:
    seeded: SeededService
    image: str
    state: str  # baseroll ledger state, "" when untouched
    reason: str
    updates: int

    @property
    def changed(self) -> bool:
        return self.image != self.seeded.image


def results(stack: LocalStack, fleet: SeededFleet) -> list[ServiceResult]:
    client = stack.run_client()
    stats = stack.cloudrun.stats() if stack.cloudrun else {}
    updates = stats.get("services", {})
    out = []
    for s in fleet.services:
        svc = client.get_service(name=s.name)
        out.append(ServiceResult(
            seeded=s,
            image=svc.template.containers[0].image,
            state=svc.annotations.get(ledger.STATE, ""),
            reason=svc.annotations.get(ledger.REASON, ""),
            updates=int(updates.get(s.name, {}).get("updates", 0)),
        ))
    return out


def on_base(stack: LocalStack, image: str, base: ImageRef) -> bool:
    """Does `image` really start with `base`'s layers? Read from the registry, not from our own ledger."""
    client = stack.registry_client()
    app = client.get_manifest(parse(image)).data.get("layers", [])
    new = client.get_manifest(base).data.get("layers", [])
    return [l["digest"] for l in app[: len(new)]] == [l["digest"] for l in new]
