"""Pure matching of app images to a base track: is this image built on an older version of the base?

Evidence, strongest first: the OCI base annotations the build wrote
(`org.opencontainers.image.base.name`/`.digest`), then the longest layer prefix shared with
a known version of the base repository. The rebase itself re-checks the prefix (docs/OCI.md#rebase),
so a wrong annotation can never produce a wrong image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from baseroll.images import oci, refs
from baseroll.images.refs import ImageRef, RefError


@dataclass(frozen=True)
class ImageFacts:
    """What matching needs of one image, read for linux/amd64 (what Cloud Run runs)."""

    ref: ImageRef  # pinned by digest (an index digest when the image is multi-platform)
    layers: tuple[str, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BaseVersion:
    digest: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    verdict: Literal["outdated", "current", "other"]
    how: str = ""  # annotation | layer-prefix
    old_base_digest: str | None = None
    reason: str = ""


def _annotated_base(app: ImageFacts) -> tuple[ImageRef | None, str | None]:
    """The base the annotations name, if they name one well: a value that is not a string (an index
    annotation `base.digest: 5`) counts as absent, so the layers decide."""
    annotations = app.annotations if isinstance(app.annotations, Mapping) else {}
    name = annotations.get(oci.ANNOTATION_BASE_NAME)
    digest = annotations.get(oci.ANNOTATION_BASE_DIGEST)
    if not isinstance(digest, str):
        digest = None
    if not name or not isinstance(name, str):
        return None, None
    try:
        ref = refs.parse(name)
    except RefError:
        return None, None
    if digest is not None and not refs.DIGEST.fullmatch(digest):
        digest = None
    return ref, digest


def match_image(app: ImageFacts, track_image: ImageRef, new: BaseVersion, known: Sequence[BaseVersion]) -> Match:
    """Decide whether `app` should be rebased from an older version of `track_image` onto `new`."""
    base_ref, base_digest = _annotated_base(app)
    if base_ref is not None:
        if base_ref.name != track_image.name:
            return Match("other", "annotation", reason=f"built on {base_ref.name}")
        if base_ref.tag is not None and base_ref.tag != track_image.tag:
            return Match("other", "annotation", reason=f"built on tag {base_ref.tag}, track follows {track_image.tag}")
        if base_digest == new.digest:
            return Match("current", "annotation", base_digest, "already on the new base")
        if base_digest:
            return Match("outdated", "annotation", base_digest, "annotated base is older")
        # A name without a digest: fall through to the layers.
    n = len(new.layers)
    if n and app.layers[:n] == new.layers:
        return Match("current", "layer-prefix", new.digest, "already on the new base")
    best: BaseVersion | None = None
    for version in known:
        k = len(version.layers)
        if version.digest == new.digest or not k or k > len(app.layers):
            continue
        if app.layers[:k] == version.layers and (best is None or k > len(best.layers)):
            best = version
    if best is not None:
        return Match("outdated", "layer-prefix", best.digest, f"layers start with base {best.digest[:19]}")
    return Match("other", "layer-prefix", reason=f"not built on {track_image}")
