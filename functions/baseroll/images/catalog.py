"""Reading images for matching: app image facts and the known versions of a base, cached by digest.

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


class Catalog:
    def __init__(self, client: RegistryClient, *, workers: int = 8,
                 version_lister: Callable[[ImageRef], list[str]] | None = None) -> None:
        """``version_lister`` (e.g. ``artifact_registry.ArtifactRegistryVersions()``): for a base on a
        ``*-docker.pkg.dev`` host, the digests of all its versions, tagged or not, read besides its tags."""
        self._client = client
        self._workers = workers
        self._version_lister = version_lister
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

    def base_versions(self, track_image: ImageRef) -> list[BaseVersion]:
        """Every version of the base repository reachable by a tag (old versions usually keep an
        immutable version tag after the track tag moves), plus, with a version lister and an
        Artifact Registry base, every listed version digest (those whose tag has moved too)."""
        repo = track_image.with_tag(None)
        wanted = [repo.with_tag(tag) for tag in newest_tags(self._client.list_tags(repo), MAX_BASE_TAGS)]
        if self._version_lister is not None and repo.registry.endswith("-docker.pkg.dev"):
            try:
                listed = self._version_lister(repo)[:MAX_BASE_LISTED]
            except RegistryError as exc:  # the tags still give the tagged versions
                log.warning("base.versions_unlisted", image=str(repo), reason=str(exc))
                listed = []
            wanted += [repo.with_digest(d) for d in dict.fromkeys(listed) if refs.DIGEST.fullmatch(d)]

        def one(ref: ImageRef) -> BaseVersion | None:
            try:
                return self.version(ref)
            except (RegistryError, KeyError, TypeError) as exc:
                log.warning("base.version_unreadable", image=str(ref), reason=str(exc))
                return None

        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            found = [v for v in pool.map(one, wanted) if v is not None]
        unique = {v.digest: v for v in found}
        return list(unique.values())

