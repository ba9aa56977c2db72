"""The one internal event type: every trigger becomes a `RollRequest` before anything is decided."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from baseroll.images.refs import ImageRef


@dataclass(frozen=True)
class RollRequest:
    """The one internal event type: roll services of a base (or app image) onto a digest."""

    kind: Literal["base", "app"]
    image: ImageRef  # a base track (name:tag) or an app image name
    digest: str | None  # the new digest when the event carries it; else resolved from the tag
    source: str  # artifact-push | cloud-build | request | sweep
    event_id: str
    dry_run: bool = False
