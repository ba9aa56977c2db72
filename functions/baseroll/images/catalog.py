"""Reading images for matching: app image facts and what a base repository holds, cached by digest.

A base repository holds several tracks (python:3.11, 3.12…): its tags, listed versions and the
lineage store's records are read here as evidence; `rollout.lineage` decides which are whose.

Only manifests (and, for build labels, configs) are read here, never layers, through the image
model (``images.image``): a multi-platform image is matched through its linux/amd64 child while the
service keeps the index digest.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from baseroll import log
from baseroll.images import image as image_model
from baseroll.images import oci, refs
from baseroll.images.match import BaseVersion, ImageFacts
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, RegistryError, newest_tags

_BASE_KEYS = (oci.ANNOTATION_BASE_NAME, oci.ANNOTATION_BASE_DIGEST)
MAX_BASE_TAGS = 200  # how many tags of a base repository are read to find old versions
MAX_BASE_LISTED = 500  # how many digests from a version lister (Artifact Registry) are read
MAX_RECORDED = 200  # how many of a track's recorded digests (the newest) are read


class Catalog:
    def __init__(self, client: RegistryClient, *, workers: int = 8,
                 version_lister: Callable[[ImageRef], list[str]] | None = None,
                 recorded: Callable[[str], list[str]] | None = None) -> None:
        """``version_lister`` (e.g. ``artifact_registry.ArtifactRegistryVersions()``): for a base on a
        ``*-docker.pkg.dev`` host, the digests of all its versions, tagged or not, read besides its tags.
        ``recorded`` (the lineage store's ``versions``): per track name, the digests its tag was seen at."""
        self._client = client
        self._workers = workers
        self._version_lister = version_lister
        self._recorded = recorded
        self._by_digest: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}
        self._lock = threading.Lock()

    def _layers(self, ref: ImageRef) -> tuple[str, tuple[str, ...], dict[str, str]]:
        """(digest, amd64 layer digests, annotations) of an image; cached by digest."""
        digest = ref.digest or self._client.head_manifest(ref)
        if digest is None:
            raise RegistryError(f"{ref} not found")
        with self._lock:
            cached = self._by_digest.get(digest)
        if cached is not None:
            return digest, cached[0], cached[1]
        found = image_model.read(self._client, ref.with_digest(digest))
        annotations = found.annotations
        if oci.ANNOTATION_BASE_NAME not in annotations:
            # `docker build --label` (e.g. infra/cloudbuild/app.Dockerfile) puts them in the config instead.
            labels = image_model.config_labels(image_model.read_config(self._client, found))
            annotations = {**{k: v for k, v in labels.items() if k in _BASE_KEYS}, **annotations}
        with self._lock:
            self._by_digest[digest] = (found.layers, annotations)
        return digest, found.layers, annotations

    def facts(self, image: str) -> ImageFacts:
        ref = refs.parse(image)
        digest, layers, annotations = self._layers(ref)
        return ImageFacts(ref.with_digest(digest), layers, annotations)

    def facts_many(self, images: Iterable[str]) -> dict[str, ImageFacts | str]:
        """Facts per image string, or the reason it could not be read (never raises for one image)."""
        images = sorted(set(images))

        def one(image: str) -> ImageFacts | str:
            try:
                return self.facts(image)
            except (RegistryError, refs.RefError, KeyError, TypeError, ValueError) as exc:
                log.warning("image.unreadable", image=image, reason=str(exc))
                return str(exc)

        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            return dict(zip(images, pool.map(one, images)))

    def version(self, ref: ImageRef) -> BaseVersion:
        digest, layers, _ = self._layers(ref)
        return BaseVersion(digest, layers)

    def recorded(self, track: str) -> list[str]:
        """The newest digests (at most MAX_RECORDED) the lineage store saw `track`'s tag point to."""
        if self._recorded is None:
            return []
        return [d for d in self._recorded(track) if refs.DIGEST.fullmatch(d)][-MAX_RECORDED:]

    def tags_of(self, repo: ImageRef, *, keep: Iterable[str] = ()) -> dict[str, str]:
        """Each tag of the repository (the MAX_BASE_TAGS newest-looking, and those of `keep` that exist)
        and the digest it points to now. Every tag is evidence of *some* track; `rollout.lineage` decides whose."""
        listed = self._client.list_tags(repo.with_tag(None))
        present = set(listed)
        tags = list(dict.fromkeys([*(t for t in keep if t in present), *newest_tags(listed, MAX_BASE_TAGS)]))

        def one(tag: str) -> str | None:
            try:
                return self._client.head_manifest(repo.with_tag(tag))
            except (RegistryError, refs.RefError) as exc:
                log.warning("base.tag_unreadable", image=f"{repo.name}:{tag}", reason=str(exc))
                return None

        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            heads = list(pool.map(one, tags))
        return {tag: digest for tag, digest in zip(tags, heads) if digest}

    def listed_versions(self, repo: ImageRef) -> list[str]:
        """With a version lister and an Artifact Registry base: every version digest, tagged or not (its
        tags may have moved on); else none. Listed is not tied: lineage decides which track each is."""
        if self._version_lister is None or not repo.registry.endswith("-docker.pkg.dev"):
            return []
        try:
            listed = self._version_lister(repo.with_tag(None))[:MAX_BASE_LISTED]
        except RegistryError as exc:  # the tags and the records still give the tied versions
            log.warning("base.versions_unlisted", image=repo.name, reason=str(exc))
            return []
        return [d for d in dict.fromkeys(listed) if refs.DIGEST.fullmatch(d)]

    def versions_of(self, repo: ImageRef, digests: Iterable[str]) -> dict[str, BaseVersion]:
        """The layers of each digest of the repository; a digest that cannot be read (deleted) is left out."""
        wanted = [repo.with_digest(d) for d in dict.fromkeys(digests)]

        def one(ref: ImageRef) -> BaseVersion | None:
            try:
                return self.version(ref)
            except (RegistryError, KeyError, TypeError) as exc:
                log.warning("base.version_unreadable", image=str(ref), reason=str(exc))
                return None

        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            found = [v for v in pool.map(one, wanted) if v is not None]
        return {v.digest: v for v in found}
