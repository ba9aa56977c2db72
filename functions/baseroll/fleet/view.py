"""The fleet port (list, get, update) and the plain-data view of a Cloud Run service it deals in.

Nothing here imports a Google SDK: the adapter (`cloudrun`) turns run_v2 types into `ServiceView`s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Protocol


class StaleService(Exception):
    """The service changed since it was read (etag mismatch / ABORTED)."""


class FleetError(Exception):
    """A Cloud Run call failed for a reason retrying does not fix."""


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
        base_uris: Mapping[int, str] = {},
    ) -> ServiceView:
        """Set container images and base_image_uris (by index) and service annotations, based on
        `current` (its etag); clear template.revision; wait for the operation; return the service as
        it then is. Raises StaleService when the service changed since `current` was read."""
        ...
