"""What Cloud Run checks of a revision's images before it can become ready, against the real registry.

A revision becomes Ready only if its images resolve (plain HTTP) to a linux/amd64 image whose config and
layers exist; otherwise it fails with a Cloud Run condition reason.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from .clients import ClientPool

# --- OCI media types -------------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
# distribution 2.8 answers 404 for OCI manifests (and down-converts Docker ones) without the full list.
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
MAX_LAYERS = 256

_IMAGE = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?)/"
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class DeployFailure:
    """Why a revision did not become ready: a Condition reason enum name and Cloud Run-like message."""

    reason: str  # a member of Condition.CommonReason or Condition.RevisionReason
    message: str


@dataclass(frozen=True)
class ImageRef:
    host: str
    repo: str
    reference: str  # digest when pinned, else tag


def parse_image(image: str) -> ImageRef:
    """`host/repo[:tag][@sha256:...]`; a bare `host/repo` means `:latest`, as for `docker pull`."""
    m = _IMAGE.match(image)
    if not m or len(image) > 1024:
        raise ValueError(f"Invalid image name '{image}'")
    return ImageRef(m["host"].lower(), m["repo"], m["digest"] or m["tag"] or "latest")


class _ImageMissing(Exception):
    """Maps to CONTAINER_MISSING: the manifest or a blob cannot be found."""


class _ImageUnsupported(Exception):
    """The image exists but Cloud Run cannot run it (platform, config, layer mismatch)."""


class ImageChecker:
    """Checks what Cloud Run's image resolution checks, against the one registry it is allowed to reach.

    Checks run on many threads at once (deploy workers, executions); each check has an httpx client of its
    own while it runs, made by `new_client` (clients.py says why).
    """

    def __init__(self, registry_host: str, new_client: Callable[[], httpx.Client]) -> None:
        self.registry_host = registry_host.lower()
        self._clients = ClientPool(new_client, "the image checker")

    def close(self) -> None:
        """Close the idle clients now, and each client still in a check when that check ends."""
        self._clients.close()

    def check(self, image: str) -> DeployFailure | None:
        with self._clients.client() as http:
            return self._check_image(http, image)

    def _check_image(self, http: httpx.Client, image: str) -> DeployFailure | None:
        try:
            ref = parse_image(image)
            if ref.host != self.registry_host:
                raise _ImageMissing(f"registry '{ref.host}' is not reachable from this stand-in")
            self._check(http, ref)
            return None
        except _ImageMissing as e:
            return DeployFailure("CONTAINER_MISSING", f"Image '{image}' not found. {e}")
        except (_ImageUnsupported, ValueError) as e:
            # No "image invalid" reason exists in run_v2's enums; REVISION_FAILED is the generic one.
            return DeployFailure("REVISION_FAILED", f"Cloud Run does not support image '{image}': {e}")
        except httpx.HTTPError as e:
            return DeployFailure("CONTAINER_MISSING", f"Image '{image}' not found. registry error: {e}")

    def _check(self, http: httpx.Client, ref: ImageRef) -> None:
        media_type, manifest, _ = self._manifest(http, ref.repo, ref.reference)
        if media_type in (OCI_INDEX, DOCKER_LIST):
            child = self._amd64_child(media_type, manifest)
            media_type, manifest, _ = self._manifest(http, ref.repo, child)
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise _ImageUnsupported(f"Container manifest type '{media_type}' is not supported.")
        layers = self._layers(manifest)
        config = self._config(http, ref.repo, manifest)
        if config.get("os") != "linux" or config.get("architecture") != "amd64":
            raise _ImageUnsupported(
                f"Container image platform '{config.get('os')}/{config.get('architecture')}' must be linux/amd64."
            )
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise _ImageUnsupported("image config rootfs.diff_ids does not match the manifest's layers.")
        for digest in layers:
            self._require_blob(http, ref.repo, digest)

    def _manifest(self, http: httpx.Client, repo: str, reference: str) -> tuple[str, dict, str]:
        status, headers, body = self._get(http, f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT},
                                          MAX_MANIFEST_BYTES)
        if status == 404:
            raise _ImageMissing("manifest unknown")
        if status != 200:
            raise _ImageMissing(f"registry answered {status} for the manifest")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise _ImageUnsupported(f"manifest digest {digest} does not match {reference}.")
        manifest = _json_object(body, "manifest")
        media_type = manifest.get("mediaType") or headers.get("content-type", "").split(";")[0].strip()
        return media_type, manifest, digest

    @staticmethod
    def _amd64_child(media_type: str, index: dict) -> str:
        for desc in (index.get("manifests") or [])[:MAX_LAYERS]:
            platform = desc.get("platform") or {}
            if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
                digest = desc.get("digest", "")
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                    raise _ImageUnsupported(f"index names an invalid digest '{digest}'.")
                return digest
        raise _ImageUnsupported(f"Container manifest type '{media_type}' must support amd64/linux.")

    @staticmethod
    def _layers(manifest: dict) -> list[str]:
        layers = manifest.get("layers")
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise _ImageUnsupported("manifest layers are missing or too many.")
        digests = [d.get("digest", "") for d in layers if isinstance(d, dict)]
        if len(digests) != len(layers) or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", d) for d in digests):
            raise _ImageUnsupported("manifest names an invalid layer digest.")
        return digests

    def _config(self, http: httpx.Client, repo: str, manifest: dict) -> dict:
        desc = manifest.get("config") or {}
        if desc.get("mediaType") not in IMAGE_CONFIGS:
            raise _ImageUnsupported(f"config media type '{desc.get('mediaType')}' is not an image config.")
        digest = desc.get("digest", "")
        status, _, body = self._get(http, f"/v2/{repo}/blobs/{digest}", {}, MAX_CONFIG_BYTES)
        if status != 200:
            raise _ImageMissing(f"config blob {digest} not found ({status})")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise _ImageUnsupported(f"config blob does not match its digest {digest}.")
        return _json_object(body, "image config")

    def _require_blob(self, http: httpx.Client, repo: str, digest: str) -> None:
        r = http.head(f"http://{self.registry_host}/v2/{repo}/blobs/{digest}")
        if r.status_code != 200:
            raise _ImageMissing(f"layer {digest} not found ({r.status_code})")

    def _get(self, http: httpx.Client, path: str, headers: dict[str, str],
             cap: int) -> tuple[int, httpx.Headers, bytes]:
        """GET reading at most `cap` bytes, so a hostile or broken registry cannot exhaust memory."""
        with http.stream("GET", f"http://{self.registry_host}{path}", headers=headers) as r:
            if r.status_code != 200:
                return r.status_code, r.headers, b""
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) > cap:
                    raise _ImageUnsupported(f"{path} is larger than {cap} bytes.")
            return 200, r.headers, bytes(buf)


def _json_object(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise _ImageUnsupported(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _ImageUnsupported(f"{what} is not a JSON object.")
    return doc

