"""Build small, real OCI images in a registry: generated tar.gz layers, a valid config, a manifest.

Deterministic (fixed mtimes, sorted entries), so the same inputs give the same digests.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = "2026-01-01T00:00:00Z"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    blob: bytes  # tar.gz
    diff_id: str  # sha256 of the uncompressed tar

    @property
    def digest(self) -> str:
        return sha256(self.blob)


def layer(files: dict[str, bytes | str], *, executable: tuple[str, ...] = ()) -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(files):
            data = files[path].encode() if isinstance(files[path], str) else files[path]
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if path in executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return Layer(gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes))


@dataclass
class ImageSpec:
    layers: list[Layer]
    history: list[str] = field(default_factory=list)  # created_by per layer
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    os: str = "linux"
    architecture: str = "amd64"


def config_of(spec: ImageSpec) -> dict:
    cfg: dict = {"Env": spec.env}
    if spec.entrypoint:
        cfg["Entrypoint"] = spec.entrypoint
    if spec.cmd:
        cfg["Cmd"] = spec.cmd
    history = spec.history or [f"layer {i}" for i in range(len(spec.layers))]
    return {
        "created": EPOCH,
        "architecture": spec.architecture,
        "os": spec.os,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in spec.layers]},
        "history": [{"created": EPOCH, "created_by": h} for h in history],
    }


def push(client: RegistryClient, repo: ImageRef, spec: ImageSpec, *, tags: tuple[str, ...] = ()) -> ImageRef:
    """Push layers, config and manifest; tag it; return the image pinned by digest."""
    for l in spec.layers:
        if not client.blob_exists(repo, l.digest):
            client.put_blob(repo, l.blob)
    config = json.dumps(config_of(spec), sort_keys=True, separators=(",", ":")).encode()
    client.put_blob(repo, config)
    manifest: dict = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": l.digest, "size": len(l.blob)} for l in spec.layers],
    }
    if spec.annotations:
        manifest["annotations"] = spec.annotations
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = client.put_manifest(repo.with_digest(sha256(raw)), raw, OCI_MANIFEST)
    for tag in tags:
        client.put_manifest(repo.with_tag(tag), raw, OCI_MANIFEST)
    return repo.with_digest(digest)
