"""Which versions of a base repository belong to a track, and whether an app is on one: pure decisions.

A version of a track is a digest the track's own tag has pointed to: where it points now, a digest
recorded in the lineage store (push events, builds, sweeps), or the digest of a tag matching the
track's `version_tags` patterns. Never merely another tag of the same repository: one repository
holds several tracks (python:3.11, 3.12, 3.13), whose images share their first layers. The
repository's other tags, and the versions recorded for its other configured tracks, are evidence
of *another* track; an Artifact Registry version that no tag or record ties to any track is of
unknown lineage. An app whose base is either is skipped with that reason, never rebased.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Mapping, Sequence

from baseroll.config import BaseTrack
from baseroll.images import oci, refs
from baseroll.images.match import BaseVersion, ImageFacts
from baseroll.images.refs import ImageRef, RefError
from baseroll.rollout import policy


@dataclass(frozen=True)
class TrackLineage:
    """A track's versions, and what else its repository holds."""

    track_image: ImageRef  # registry/repository:tag
    own: tuple[BaseVersion, ...]  # versions of this track (the current one included)
    others: tuple[tuple[str, BaseVersion], ...] = ()  # (label, e.g. "python:3.11", version) of other tracks
    untied: tuple[BaseVersion, ...] = ()  # listed versions no tag or record ties to any track
    version_tags: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return label(self.track_image, self.track_image.tag or "")


def label(image: ImageRef, tag: str) -> str:
    """How a reason names a track: the repository's last path component and the tag, e.g. "python:3.11"."""
    return f"{image.repository.rsplit('/', 1)[-1]}:{tag}"


def is_version_tag(tag: str, track: BaseTrack) -> bool:
    """The track's own tag, or one of its `version_tags` patterns (fnmatch-style, case-sensitive)."""
    return tag == track.image.tag or any(fnmatchcase(tag, p) for p in track.version_tags)


def siblings(track: BaseTrack, tracks: Sequence[BaseTrack]) -> list[BaseTrack]:
    """The other configured tracks of the same repository."""
    return [t for t in tracks if t.repository == track.repository and t.name != track.name]


def lineage_of(track: BaseTrack, others: Sequence[BaseTrack], *, new: BaseVersion, tags: Mapping[str, str],
               versions: Mapping[str, BaseVersion], listed: Sequence[str] = (),
               recorded: Mapping[str, Sequence[str]] | None = None) -> TrackLineage:
    """Split what the catalog read of the track's repository (`tags`: tag -> digest now; `versions`:
    digest -> version, for every readable digest; `listed`: Artifact Registry's version digests;
    `recorded`: track name -> digests its tag was seen at) into the track's own versions, other
    tracks' (`others`: the repository's other configured tracks), and untied ones."""
    recorded = recorded or {}
    own = {new.digest} | {d for t, d in tags.items() if is_version_tag(t, track)} | set(recorded.get(track.name, ()))
    named: dict[str, str] = {}  # digest -> label of another track
    for sibling in others:
        for digest in recorded.get(sibling.name, ()):
            if digest not in own:  # this track's own record wins: its tag was seen there
                named.setdefault(digest, label(track.image, sibling.image.tag or ""))
    for tag, digest in sorted(tags.items(), key=lambda kv: (len(kv[0]), kv[0])):  # the shortest tag names it
        if digest not in own and digest not in named:
            sibling = next((s for s in others if is_version_tag(tag, s)), None)
            named[digest] = label(track.image, sibling.image.tag if sibling and sibling.image.tag else tag)
    untied = [d for d in dict.fromkeys(listed) if d not in own and d not in named]
    return TrackLineage(
        track.image,
        tuple(versions[d] for d in sorted(own) if d in versions and d != new.digest) + (new,),
        tuple((name, versions[d]) for d, name in sorted(named.items()) if d in versions),
        tuple(versions[d] for d in untied if d in versions),
        track.version_tags,
    )


def verdict(app: ImageFacts, lineage: TrackLineage) -> ImageFacts | str:
    """The app's facts to match against the track's own versions, or why its lineage rules it out."""
    annotated = _annotated_tag(app, lineage)
    if isinstance(annotated, str):
        return annotated
    if annotated is not None:
        app = annotated
        if refs.DIGEST.fullmatch(app.annotations.get(oci.ANNOTATION_BASE_DIGEST, "")):
            return app  # the build's own record of the digest the track's tag pointed to
    return _by_layers(app, lineage)


def _annotated_tag(app: ImageFacts, lineage: TrackLineage) -> ImageFacts | str | None:
    """For an annotation naming the track's repository: the facts (a version tag's name replaced by the
    track's tag), or why not this track; None when there is no such annotation."""
    name = app.annotations.get(oci.ANNOTATION_BASE_NAME)
    try:
        ref = refs.parse(name) if name else None
    except RefError:
        ref = None
    if ref is None or ref.name != lineage.track_image.name:
        return None  # no annotation, or another repository: matching says so
    if ref.tag is None:
        return policy.ANNOTATED_WITHOUT_TAG.format(name=name, track=lineage.label)
    if ref.tag == lineage.track_image.tag:
        return app
    if any(fnmatchcase(ref.tag, p) for p in lineage.version_tags):
        renamed = {**app.annotations, oci.ANNOTATION_BASE_NAME: str(lineage.track_image)}
        return dataclasses.replace(app, annotations=renamed)
    return policy.OTHER_TRACK.format(base=label(lineage.track_image, ref.tag))


def _by_layers(app: ImageFacts, lineage: TrackLineage) -> ImageFacts | str:
    """The longest known base under the app decides: the track's own (then matching goes on), or another's."""
    own = max((len(v.layers) for v in lineage.own if _under(app, v)), default=0)
    best: tuple[int, str] | None = None
    for name, version in lineage.others:
        if _under(app, version) and len(version.layers) > max(own, best[0] if best else 0):
            best = (len(version.layers), policy.OTHER_TRACK.format(base=name))
    for version in lineage.untied:
        if _under(app, version) and len(version.layers) > max(own, best[0] if best else 0):
            best = (len(version.layers), policy.LINEAGE_UNKNOWN.format(
                base=f"{lineage.track_image.name}@{version.digest[:19]}"))
    return best[1] if best else app


def _under(app: ImageFacts, version: BaseVersion) -> bool:
    k = len(version.layers)
    return 0 < k <= len(app.layers) and app.layers[:k] == version.layers
