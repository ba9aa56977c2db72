"""One image model: for a reference, the manifest of one platform, its layers, config and annotations.

Cloud Run runs linux/amd64 (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2), so that is the platform
read unless asked otherwise. A multi-platform image (an index) is read through its child for the
platform, picked by ``oci.select_platform``: variants are normalised the way containerd does and
BuildKit attestation children are never picked (docs/OCI.md#image-index). The image keeps the reference
pinned by the digest it resolves to (the index digest when multi-platform): that is what services run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import Manifest, RegistryClient, RegistryError

RUN_PLATFORM = oci.Platform("linux", "amd64")


class PlatformMissing(RegistryError):
    """The image has no usable manifest for the platform (none listed, or only a nested index)."""


@dataclass(frozen=True)
class Image:
    """One platform of an image as the registry holds it."""

    ref: ImageRef  # pinned by the digest the reference resolved to (an index digest when multi-platform)
    top: Manifest  # what the reference resolved to: the index, or the manifest itself
    manifest: Manifest  # the platform's manifest (``top`` when single-platform)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer["digest"] for layer in self.manifest.data.get("layers", []))

    @property
    def config_digest(self) -> str:
        return self.manifest.data["config"]["digest"]

    @property
    def annotations(self) -> dict[str, str]:
        return merged_annotations(self.top.data, self.manifest.data if self.top.is_index else None)


def read(client: RegistryClient, ref: ImageRef, platform: oci.Platform = RUN_PLATFORM) -> Image:
    """The image ``ref`` names, read for ``platform`` (manifests only, never a layer)."""
    top = client.get_manifest(ref)
    pinned = ref.with_digest(top.digest)
    return Image(pinned, top, platform_manifest(client, pinned, top, platform))


def platform_manifest(client: RegistryClient, ref: ImageRef, top: Manifest,
                      platform: oci.Platform = RUN_PLATFORM) -> Manifest:
    """``top`` itself when it is a manifest, else its child for ``platform``.

    A single-platform manifest is returned whatever its platform: only its config says which it is,
    and the caller that cares (the rebase) checks it there.
    """
    if not top.is_index:
        return top
    child = platform_child(top.data, platform, f"{ref.name}@{top.digest}")
    m = client.get_manifest(ref.with_digest(child["digest"]))
    if m.is_index:
        raise PlatformMissing(f"{ref.name}@{top.digest}: nested index {child['digest']} is not supported")
    return m


def platform_child(index: dict[str, Any], platform: oci.Platform, what: str) -> dict[str, Any]:
    """The index entry for ``platform`` (never an attestation); PlatformMissing naming both when none."""
    child = oci.select_platform(index, platform)
    if child is None:
        raise PlatformMissing(f"{what} has no {platform} image" +
                              (", which Cloud Run needs" if platform == RUN_PLATFORM else ""))
    return child


def merged_annotations(top: dict[str, Any], child: dict[str, Any] | None = None) -> dict[str, str]:
    """Annotations of a manifest, or of an index and its child: both may carry them; the index wins."""
    return {**_string_map(child.get("annotations") if child else None), **_string_map(top.get("annotations"))}


def read_config(client: RegistryClient, image: Image) -> dict[str, Any]:
    """The platform's config blob as a JSON object (size-capped, verified by digest)."""
    raw = client.get_blob(image.ref, image.config_digest, max_bytes=oci.MAX_CONFIG_BYTES)
    try:
        return oci.load_json(raw, max_bytes=oci.MAX_CONFIG_BYTES, what=f"config of {image.ref}")
    except oci.OCIError as e:
        raise RegistryError(str(e), code="MANIFEST_INVALID") from None


def config_labels(config: dict[str, Any]) -> dict[str, str]:
    """The run config's ``Labels`` (where ``docker build --label`` puts what others annotate)."""
    run = config.get("config")
    return _string_map(run.get("Labels") if isinstance(run, dict) else None)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
