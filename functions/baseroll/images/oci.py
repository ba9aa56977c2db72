"""OCI / Docker image formats: media types and pure helpers (no I/O).

Everything that parses bytes from a registry goes through here, so the size cap, the schema1
refusal and the shape checks happen in one place before any code trusts a field.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

# Manifests and indexes.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Configs.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# Layers.
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
# Every type we can read, in the order of preference sent in Accept. Without the full list a
# distribution 2.8 registry 404s OCI manifests and down-converts Docker ones to schema1.
ACCEPT_MANIFEST = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

# OCI layer types that have a byte-identical Docker twin (the image-spec compatibility matrix).
OCI_TO_DOCKER_LAYER = {OCI_LAYER_GZIP: DOCKER_LAYER_GZIP, OCI_LAYER_ND_GZIP: DOCKER_FOREIGN_LAYER_GZIP}

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries accept for a manifest PUT
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_DESCRIPTOR_SIZE = 2**63 - 1  # the image spec's int64

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"
ATTESTATION_MANIFEST = "attestation-manifest"


class OCIError(ValueError):
    """Bytes that are not a usable manifest, index or config; the message says why."""


# ---------------------------------------------------------------- digests and encoding


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and bool(DIGEST_RE.fullmatch(value))


def canonical_json(obj: Any) -> bytes:
    """Deterministic encoding: sorted keys, no spaces, UTF-8. Same dict, same bytes, same digest.
    OCIError for what JSON cannot hold (NaN, infinity, a lone surrogate)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except ValueError as e:  # UnicodeEncodeError included
        raise OCIError(f"not encodable as JSON: {str(e)[:120]}") from None


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


# ---------------------------------------------------------------- parsing


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 decodes to inf, which no canonical encoding can write back
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(raw: bytes, *, max_bytes: int, what: str) -> dict[str, Any]:
    """Cap the size first, then decode; the result must be a JSON object.

    Every decoding failure is an OCIError: a 5,000-digit integer (Python's int-string limit raises a
    plain ValueError), NaN/Infinity, a float out of range, deep nesting, bad UTF-8.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise OCIError(f"{what}: expected bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise OCIError(f"{what}: {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        data = json.loads(bytes(raw).decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise OCIError(f"{what}: not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise OCIError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _show(value: Any) -> str:
    """A value for an error message, cut short (a 4,000-digit number stays readable)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_descriptor(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise OCIError(f"{what}: descriptor is not an object")
    if not isinstance(d.get("mediaType"), str) or not d["mediaType"]:
        raise OCIError(f"{what}: descriptor has no mediaType")
    if not is_digest(d.get("digest")):
        raise OCIError(f"{what}: descriptor digest {_show(d.get('digest'))} is not sha256:<64 hex>")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > MAX_DESCRIPTOR_SIZE:
        raise OCIError(f"{what}: descriptor size {_show(size)} is not a non-negative integer below 2**63")
    return d


def media_type_of(data: dict[str, Any], content_type: str | None = None) -> str:
    """The document's media type: its own `mediaType`, else the HTTP Content-Type, else by shape.

    schema1 is refused here: it has no config blob and no digests we could rebase against.
    """
    declared = data.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip().lower() or None
    # Type first: a list or object in mediaType is unhashable, so it cannot even be looked up.
    if declared is not None and not isinstance(declared, str):
        raise OCIError(f"mediaType is not a string (a {type(declared).__name__})")
    if data.get("schemaVersion") == 1 or declared in SCHEMA1_TYPES or header in SCHEMA1_TYPES:
        raise OCIError("Docker schema1 manifests are not supported: re-push the image with a v2/OCI client")
    if data.get("schemaVersion") != 2:
        raise OCIError(f"unsupported schemaVersion {_show(data.get('schemaVersion'))} (expected 2)")
    if declared and header and header in MANIFEST_TYPES | INDEX_TYPES and declared != header:
        raise OCIError(f"mediaType {declared!r} contradicts Content-Type {header!r}")
    mt = declared or header
    if mt in MANIFEST_TYPES | INDEX_TYPES:
        return mt
    if mt is None or mt in ("application/json", "application/octet-stream"):
        # OCI allows omitting mediaType; tell manifest from index by shape.
        if "manifests" in data:
            return OCI_INDEX
        if "config" in data and "layers" in data:
            return OCI_MANIFEST
    raise OCIError(f"unsupported manifest media type {mt!r}")


def validate_manifest(data: dict[str, Any], what: str = "manifest") -> dict[str, Any]:
    validate_descriptor(data.get("config"), f"{what} config")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise OCIError(f"{what}: layers is not a list")
    for i, layer in enumerate(layers):
        validate_descriptor(layer, f"{what} layer {i}")
    _check_annotations(data, what)
    return data


def _check_annotations(data: dict[str, Any], what: str) -> None:
    ann = data.get("annotations")
    if ann is not None and not (isinstance(ann, dict) and all(isinstance(v, str) for v in ann.values())):
        raise OCIError(f"{what}: annotations must map strings to strings")


def _check_platform(child: dict[str, Any], what: str) -> None:
    if "platform" not in child:
        return
    platform = child["platform"]
    if not isinstance(platform, dict):
        raise OCIError(f"{what}: platform is not an object")
    for key in ("os", "architecture", "variant", "os.version"):
        if key in platform and not isinstance(platform[key], str):
            raise OCIError(f"{what}: platform.{key} is not a string")


def validate_index(data: dict[str, Any], what: str = "index") -> dict[str, Any]:
    children = data.get("manifests")
    if not isinstance(children, list):
        raise OCIError(f"{what}: manifests is not a list")
    for i, child in enumerate(children):
        validate_descriptor(child, f"{what} child {i}")
        _check_platform(child, f"{what} child {i}")
        _check_annotations(child, f"{what} child {i}")
    _check_annotations(data, what)
    return data


def parse_manifest_or_index(
    raw: bytes, content_type: str | None = None, *, max_bytes: int = MAX_MANIFEST_BYTES
) -> tuple[str, dict[str, Any]]:
    """(media type, validated dict) for a manifest or an index."""
    data = load_json(raw, max_bytes=max_bytes, what="manifest")
    mt = media_type_of(data, content_type)
    if mt in INDEX_TYPES:
        validate_index(data)
    else:
        validate_manifest(data)
    return mt, data


def parse_config(raw: bytes, *, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    return validate_config(load_json(raw, max_bytes=max_bytes, what="config"))


def validate_config(data: Any, what: str = "config") -> dict[str, Any]:
    """The fields of an image config that baseroll reads, each of the type the image spec gives it."""
    if not isinstance(data, dict):
        raise OCIError(f"{what}: not an object")
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise OCIError(f"{what}: rootfs.diff_ids is missing or not a list")
    for d in rootfs["diff_ids"]:
        if not is_digest(d):
            raise OCIError(f"{what}: diff_id {_show(d)} is not sha256:<64 hex>")
    if "history" in data and data["history"] is not None and not isinstance(data["history"], list):
        raise OCIError(f"{what}: history is not a list")
    if "config" in data and data["config"] is not None and not isinstance(data["config"], dict):
        raise OCIError(f"{what}: config is not an object")
    for key in ("os", "architecture", "variant", "os.version"):
        if key in data and not isinstance(data[key], str):
            raise OCIError(f"{what}: {key} is not a string")
    return data


# ---------------------------------------------------------------- platforms


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """"linux/arm64/v8" → Platform; the os/architecture part is required."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise OCIError(f"bad platform {text!r}: expected os/architecture[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Platform | None":
        if not isinstance(d, dict) or not isinstance(d.get("os"), str) or not isinstance(d.get("architecture"), str):
            return None
        variant = d.get("variant")
        return cls(d["os"], d["architecture"], variant if isinstance(variant, str) else "")

    def normalized(self) -> "Platform":
        """containerd's normalisation: arm64 defaults to v8, arm to v7, amd64 to v1."""
        arch, variant = self.architecture.lower(), self.variant.lower()
        arch = {"aarch64": "arm64", "x86_64": "amd64", "x86-64": "amd64", "armhf": "arm"}.get(arch, arch)
        if arch == "arm64" and variant in ("8", "v8", "v8.0"):
            variant = ""
        elif arch == "arm" and variant in ("", "7"):
            variant = "v7"
        elif arch == "amd64" and variant == "v1":
            variant = ""
        return Platform(self.os.lower(), arch, variant)

    def matches(self, other: "Platform") -> bool:
        return self.normalized() == other.normalized()

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def config_platform(config: dict[str, Any]) -> Platform | None:
    return Platform.from_dict(config)


def is_attestation(desc: Any) -> bool:
    """BuildKit attestation children: platform unknown/unknown, annotated as attestation-manifest.

    Reads only what has the right type: a descriptor that is not an object, or whose annotations or
    platform are not objects, is no attestation (an unvalidated index may hold anything).
    """
    if not isinstance(desc, dict):
        return False
    ann = desc.get("annotations")
    if isinstance(ann, dict) and ann.get(ANNOTATION_REFERENCE_TYPE) == ATTESTATION_MANIFEST:
        return True
    p = desc.get("platform")
    return isinstance(p, dict) and p.get("os") == "unknown" and p.get("architecture") == "unknown"


def select_platform(index: dict[str, Any], platform: Platform) -> dict[str, Any] | None:
    """The first non-attestation child of an index whose platform matches, else None (children that
    are not objects are passed over)."""
    children = index.get("manifests")
    for child in children if isinstance(children, list) else ():
        if not isinstance(child, dict) or is_attestation(child):
            continue
        p = Platform.from_dict(child.get("platform"))
        if p is not None and p.matches(platform):
            return child
    return None


def deepcopy_json(obj: Any) -> Any:
    return copy.deepcopy(obj)


def non_empty(entries: Iterable[Any]) -> int:
    """How many history entries created a layer (empty_layer absent or false)."""
    return sum(1 for h in entries if not (isinstance(h, dict) and h.get("empty_layer") is True))
