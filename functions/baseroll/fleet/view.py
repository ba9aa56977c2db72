"""The fleet port (list, get, update) and the plain-data view of a Cloud Run service it deals in.

Nothing here imports a Google SDK: the adapter (`cloudrun`) turns run_v2 types into `ServiceView`s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping, Protocol


class StaleService(Exception):
    """The service changed since it was read (etag mismatch / ABORTED)."""


class FleetError(Exception):
    """A Cloud Run call failed for a reason retrying does not fix."""


LATEST = "LATEST"  # TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST: the latest ready revision
REVISION = "REVISION"  # TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION: a revision by name


@dataclass(frozen=True)
class TrafficSplit:
    """One entry of a service's `traffic` (desired) or `traffic_statuses` (observed)."""

    type: str  # LATEST | REVISION
    percent: int
    revision: str = ""  # short revision name; for a status of a LATEST entry, the revision it resolved to
    tag: str = ""


# What a view is of: a Cloud Run service, job or worker pool (docs/GOOGLE_APIS.md#jobs-and-worker-pools).
WorkloadKind = Literal["service", "job", "worker-pool"]

ALL_TO_LATEST = (TrafficSplit(LATEST, 100),)  # what an empty `traffic` means (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2)


@dataclass(frozen=True)
class ServiceView:
    name: str  # projects/P/locations/L/services/S
    images: tuple[str, ...]  # one per container, in order
    base_image_uris: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    etag: str = ""
    generation: int = 0
    observed_generation: int = 0
    latest_ready_revision: str = ""
    latest_created_revision: str = ""
    terminal_state: str = ""  # CONDITION_SUCCEEDED | CONDITION_FAILED | CONDITION_PENDING | ...
    terminal_reason: str = ""
    terminal_message: str = ""
    reconciling: bool = False
    traffic: tuple[TrafficSplit, ...] = ALL_TO_LATEST
    traffic_statuses: tuple[TrafficSplit, ...] = ()
    uri: str = ""  # the service's own URL (`Service.uri`): the audience of an ID token for it
    tag_uris: Mapping[str, str] = field(default_factory=dict)  # tag -> its URL, from `traffic_statuses[].uri`
    ingress: str = ""  # INGRESS_TRAFFIC_ALL | _INTERNAL_ONLY | _INTERNAL_LOAD_BALANCER | _NONE ("": unspecified)
    kind: WorkloadKind = "service"  # a job's or worker pool's view has the same fields, where they apply

    @property
    def project(self) -> str:
        return self.name.split("/")[1]

    @property
    def region(self) -> str:
        return self.name.split("/")[3]


class Fleet(Protocol):
    def list_services(self, project: str, region: str) -> Iterator[ServiceView]: ...

    def get_service(self, name: str) -> ServiceView: ...

    def update_images(
        self, current: ServiceView, images: Mapping[int, str], *, annotations: Mapping[str, str], timeout: float,
        base_uris: Mapping[int, str] = {}, traffic: tuple[TrafficSplit, ...] | None = None, revision: str = "",
    ) -> ServiceView:
        """Set container images and base_image_uris (by index), service annotations and, when given,
        `traffic`; name the new revision `revision` (empty: Cloud Run names it); wait for the
        operation; return the service as it then is.

        The write is based on a read made just before it, never on `current` alone: whether Cloud
        Run enforces the etag on update is not documented. Raises StaleService when what the
        caller watches (`watched` below: the containers written, and the traffic) differs from
        `current`."""
        ...


def watched(svc: ServiceView, indexes: set[int]) -> tuple[object, ...]:
    """What an update decides on: the containers it writes (image, base_image_uri) and the traffic.
    A change elsewhere (a label, an env var) does not make an update stale."""
    uris = svc.base_image_uris
    return (tuple((i, svc.images[i] if i < len(svc.images) else None, uris[i] if i < len(uris) else "")
                  for i in sorted(indexes)), svc.traffic)
