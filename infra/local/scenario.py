"""Steps shared by `make demo` and the e2e tests: seed, push a new base, deliver its event, read the outcome."""
from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from baseroll import config as config_mod, ledger
from baseroll.records import TERMINAL, RegistryRecordStore
from baseroll.refs import ImageRef, parse
from baseroll.runtime import state_repository

from . import eventarc, seed
from .seed import SeededFleet, SeededService
from .stack import LocalStack

GCR_PROJECT = "baseroll-registry"


def seed_fleet(stack: LocalStack, services: int = 40, canaries: int = 4) -> SeededFleet:
    fleet = seed.seed_images(stack.registry_client(), stack.registry.host)
    seed.seed_services(fleet, stack.run_client(), count=services, projects=stack.projects, regions=stack.regions,
                       canaries=canaries)
    return fleet


def push_new_base(stack: LocalStack, fleet: SeededFleet, base: str) -> ImageRef:
    """Push the next patch of `base` and move its track tag, as a base image pipeline would."""
    b = next(b for b in seed.BASES if b.name == base)
    version = len(fleet.base_versions[base]) + 1
    ref = seed.push_base(stack.registry_client(), stack.registry.host, b, version)
    fleet.base_versions[base].append(ref)
    return ref


def push_event_data(new_base: ImageRef, tag: str | None) -> bytes:
    return eventarc.artifact_push_data(str(new_base), str(new_base.with_tag(tag)) if tag else None)


def deliver_push(stack: LocalStack, new_base: ImageRef, tag: str | None, *, message_id: str | None = None,
                 target: str = "on_artifact_push") -> httpx.Response:
    """The Artifact Registry INSERT notification for that push, posted straight to the function as Eventarc would."""
    event = eventarc.message_event(GCR_PROJECT, "gcr", push_event_data(new_base, tag), message_id=message_id)
    return eventarc.deliver(stack.function_url(target), event)


def publish_push(stack: LocalStack, new_base: ImageRef, tag: str | None) -> str:
    """The same notification published on topic `gcr`, as Artifact Registry does; Pub/Sub pushes it on."""
    return stack.publish("gcr", push_event_data(new_base, tag))


def record_store(stack: LocalStack) -> RegistryRecordStore:
    return RegistryRecordStore(stack.registry_client(), state_repository(config_mod.parse(stack.config())))


def wait_rollout(stack: LocalStack, rollout_id: str, *, timeout: float = 120.0) -> dict:
    """Until the rollout record is terminal and Pub/Sub is idle (bounded); returns the record."""
    store = record_store(stack)
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = store.get(rollout_id)
        if record is not None and record.status in TERMINAL and stack.wait_idle(1.0):
            return record.__dict__
        time.sleep(0.2)
    raise TimeoutError(f"rollout {rollout_id} not finished within {timeout:.0f}s: {record}")


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


def rollout_id(track: str, new_base: ImageRef) -> str:
    return ledger.rollout_id(track, new_base.digest or "")


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
