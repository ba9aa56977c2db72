"""An in-memory fleet for fast unit tests of the code above the fleet port.

It keeps `ServiceView`s and applies updates with Cloud Run's documented semantics, as the stand-in
does (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2): a template change makes a new generation and a
revision that becomes ready or fails after a scripted number of reads. On success the generation
is observed, the new revision is the latest ready one and `traffic_statuses` follow `traffic`; on
failure `reconciling` turns false, the terminal condition fails with the scripted reason and the
observed generation, latest ready revision and traffic statuses keep the last serving state. Like
the adapter, an update is based on the service as it is at the write and refused as stale only when
what the caller watches changed. Every call is counted, so a test can assert that a redelivered
task made no update at all. The integration tier runs the same code against the stand-in.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from baseroll.fleet.verification import Reply
from baseroll.fleet.view import (
    LATEST,
    FleetError,
    ServiceView,
    StaleService,
    TrafficSplit,
    watched,
)


@dataclass
class Verdict:
    """How a revision serving `image` settles: ready, or failed with Cloud Run's reason."""

    ready: bool = True
    reason: str = "HEALTH_CHECK_CONTAINER_ERROR"
    message: str = "The user-provided container failed to start and listen on the port"
    reads_to_settle: int = 0  # reads of the service before the revision settles


class FakeFleet:
    def __init__(self, services: list[ServiceView] | None = None) -> None:
        self.services: dict[str, ServiceView] = {}
        self.calls: Counter[str] = Counter()
        self.updates: list[tuple[str, dict[int, str], dict[str, str]]] = []  # (name, images, annotations)
        self.traffic_writes: list[tuple[TrafficSplit, ...] | None] = []  # the `traffic` of each landed update
        self.verdicts: dict[str, Verdict] = {}  # image -> how its revisions settle; default ready
        self.stale_updates: Counter[str] = Counter()  # name -> updates to refuse as stale (someone else wrote)
        self.failing_updates: dict[str, str] = {}  # name -> FleetError message for every update
        self.before_update: list[Callable[[str], None]] = []  # called with the name before an update lands
        self._pending: dict[str, int] = {}  # name -> reads left before its latest revision settles
        self._latest_verdict: dict[str, Verdict] = {}  # name -> how its latest revision settles
        for svc in services or []:
            self.add(svc)

    # ------------------------------------------------------------------ set-up helpers

    def add(self, svc: ServiceView) -> ServiceView:
        """Add a service, ready on its current images unless the view says otherwise."""
        gen = svc.generation or 1
        rev = svc.latest_ready_revision or f"{svc.name.rsplit('/', 1)[-1]}-{gen:05d}"
        svc = dataclasses.replace(
            svc, generation=gen, observed_generation=svc.observed_generation or gen, etag=svc.etag or f"e{gen}",
            latest_ready_revision=rev, latest_created_revision=svc.latest_created_revision or rev,
            terminal_state=svc.terminal_state or "CONDITION_SUCCEEDED")
        svc = dataclasses.replace(svc, traffic_statuses=svc.traffic_statuses or _statuses(svc),
                                  uri=svc.uri or service_uri(svc.name))
        svc = dataclasses.replace(svc, tag_uris=svc.tag_uris or _tag_uris(svc))
        self.services[svc.name] = svc
        return svc

    def write_by_someone_else(self, name: str, images: Mapping[int, str] | None = None,
                              annotations: Mapping[str, str] | None = None,
                              traffic: tuple[TrafficSplit, ...] | None = None) -> ServiceView:
        """A concurrent writer (a human's deploy): new generation and etag, ready at once."""
        svc = self.services[name]
        new_images = list(svc.images)
        for i, image in (images or {}).items():
            new_images[i] = image
        if traffic is not None:
            svc = dataclasses.replace(svc, traffic=traffic)
        return self._store(svc, tuple(new_images), svc.base_image_uris, {**svc.annotations, **(annotations or {})},
                           Verdict())

    # ------------------------------------------------------------------ the Fleet port

    def list_services(self, project: str, region: str) -> Iterator[ServiceView]:
        self.calls["list_services"] += 1
        prefix = f"projects/{project}/locations/{region}/"  # whatever this fake holds: services, jobs or pools
        return iter([s for n, s in sorted(self.services.items()) if n.startswith(prefix)])

    def get_service(self, name: str) -> ServiceView:
        self.calls["get_service"] += 1
        if name not in self.services:
            raise FleetError(f"service {name} not found")
        left = self._pending.get(name)
        if left is not None:
            if left <= 0:
                self._settle(name)
            else:
                self._pending[name] = left - 1
        return self.services[name]

    def update_images(self, current: ServiceView, images: Mapping[int, str], *, annotations: Mapping[str, str],
                      timeout: float, base_uris: Mapping[int, str] = {},
                      traffic: tuple[TrafficSplit, ...] | None = None, revision: str = "") -> ServiceView:
        self.calls["update_images"] += 1
        name = current.name
        for hook in self.before_update:
            hook(name)
        if name not in self.services:
            raise FleetError(f"service {name} not found")
        if name in self.failing_updates:
            raise FleetError(self.failing_updates[name])
        svc = self.services[name]
        if self.stale_updates[name] > 0:
            self.stale_updates[name] -= 1
            self.write_by_someone_else(name)
            raise StaleService(f"{name}: etag mismatch")
        if watched(svc, {*images, *base_uris}) != watched(current, {*images, *base_uris}):
            raise StaleService(f"{name}: changed since it was read")
        for index in {*images, *base_uris}:
            if index >= len(svc.images):
                raise FleetError(f"{name} has no container #{index}")
        new_images = tuple(images.get(i, img) for i, img in enumerate(svc.images))
        uris = list(svc.base_image_uris) + [""] * (len(svc.images) - len(svc.base_image_uris))
        new_uris = tuple(base_uris.get(i, u) for i, u in enumerate(uris))
        self.updates.append((name, dict(images), dict(annotations)))
        self.traffic_writes.append(traffic)
        if traffic is not None:
            svc = dataclasses.replace(svc, traffic=traffic)
        verdict = self.verdict_for(new_images)
        new_revision = bool(images or base_uris)
        return self._store(svc, new_images, new_uris, {**svc.annotations, **annotations}, verdict,
                           revision=revision, new_revision=new_revision)

    # ------------------------------------------------------------------ internals

    def verdict_for(self, images: tuple[str, ...]) -> Verdict:
        for image in images:
            if image in self.verdicts:
                return self.verdicts[image]
        return Verdict()

    def _store(self, svc: ServiceView, images: tuple[str, ...], uris: tuple[str, ...], annotations: dict[str, str],
               verdict: Verdict, *, revision: str = "", new_revision: bool = True) -> ServiceView:
        gen = svc.generation + 1
        rev = svc.latest_created_revision
        if new_revision:
            rev = revision or f"{svc.name.rsplit('/', 1)[-1]}-{gen:05d}"
        else:  # a change outside the template (an annotation): no revision, it settles as the latest did
            verdict = self._latest_verdict.get(svc.name, Verdict())
            verdict = dataclasses.replace(verdict, reads_to_settle=0)
        new = dataclasses.replace(svc, images=images, base_image_uris=uris, annotations=annotations,
                                  generation=gen, etag=f"e{gen}", latest_created_revision=rev,
                                  reconciling=True, terminal_state="CONDITION_RECONCILING",
                                  terminal_reason="", terminal_message="")
        self.services[svc.name] = new
        self._latest_verdict[svc.name] = verdict
        self._pending[svc.name] = verdict.reads_to_settle
        if verdict.reads_to_settle <= 0:
            self._settle(svc.name)
        return self.services[svc.name]

    def _settle(self, name: str) -> None:
        """The latest revision settles as scripted, with Cloud Run's documented semantics."""
        self._pending.pop(name, None)
        svc = self.services[name]
        verdict = self._latest_verdict.get(name, Verdict())
        if verdict.ready:
            ready = dataclasses.replace(svc, observed_generation=svc.generation,
                                        latest_ready_revision=svc.latest_created_revision)
            self.services[name] = dataclasses.replace(
                ready, reconciling=False, terminal_state="CONDITION_SUCCEEDED", terminal_reason="",
                terminal_message="", traffic_statuses=_statuses(ready), tag_uris=_tag_uris(ready))
        else:  # observed_generation, latest_ready_revision and traffic_statuses keep the last serving state
            self.services[name] = dataclasses.replace(
                svc, reconciling=False, terminal_state="CONDITION_FAILED",
                terminal_reason=verdict.reason, terminal_message=verdict.message)


def service_uri(name: str) -> str:
    """A `*.run.app` URL of the form Cloud Run gives (docs/GOOGLE_APIS.md#verify-at-zero-traffic)."""
    project, region, sid = name.split("/")[1], name.split("/")[3], name.rsplit("/", 1)[-1]
    return f"https://{sid}-{project}.{region}.run.app"


def _tag_uris(svc: ServiceView) -> dict[str, str]:
    """Each tag's own URL: the tag, three hyphens, then the service's host."""
    return {t.tag: svc.uri.replace("https://", f"https://{t.tag}---", 1) for t in svc.traffic if t.tag}


def _statuses(svc: ServiceView) -> tuple[TrafficSplit, ...]:
    """`traffic_statuses` once reconciled: each entry of `traffic`, LATEST resolved to the latest ready revision."""
    ready = svc.latest_ready_revision.rsplit("/", 1)[-1]
    return tuple(dataclasses.replace(t, revision=ready) if t.type == LATEST else t for t in svc.traffic)


class FakeProber:
    """The verification port in memory: a scripted reply per URL prefix (longest first), else
    `default`; every request is kept as (method, url, audience)."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply(200, b"ok")
        self.replies: dict[str, Reply] = {}  # URL prefix -> reply
        self.sent: list[tuple[str, str, str]] = []

    def send(self, method: str, url: str, *, audience: str, timeout_s: float) -> Reply:
        self.sent.append((method, url, audience))
        for prefix in sorted(self.replies, key=len, reverse=True):
            if url.startswith(prefix):
                return self.replies[prefix]
        return self.default
