"""Build small, real images in a registry: generated tar.gz layers, a valid config, a manifest.

Deterministic (fixed mtimes, sorted entries), so the same inputs give the same digests. Layers hold
files, executables and symlinks, owned by root, as a builder's layer tars do; configs carry what a
Dockerfile sets (Env, Entrypoint/Cmd, WorkingDir, ExposedPorts, Labels, history with `empty_layer`
entries for the instructions that made no layer); manifests are OCI or, as `docker push` of a classic
`docker build` makes them, Docker schema 2 (docs/OCI.md).
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
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPES = {"oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER), "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)}
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


def layer(files: dict[str, bytes | str], *, executable: tuple[str, ...] = (),
          links: dict[str, str] | None = None) -> Layer:
    """A layer of `files` (path → content; `executable` ones 0755) and symlinks (`links`: path → target),
    with their parent directories, entries sorted."""
    links = links or {}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = [*files, *links]
        dirs = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(paths):
            info = tarfile.TarInfo(path)
            info.mtime = 0
            if path in links:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, links[path], 0o777
                tar.addfile(info)
                continue
            data = files[path].encode() if isinstance(files[path], str) else files[path]
            info.size, info.mode = len(data), 0o755 if path in executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return Layer(gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes))


@dataclass
class ImageSpec:
    layers: list[Layer]
    # created_by per layer; a dict is a whole entry (e.g. {"created_by": "CMD [\"sh\"]", "empty_layer": True})
    history: list[str | dict] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str | None = None
    exposed_ports: tuple[str, ...] = ()  # e.g. ("8080/tcp",)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # OCI manifests only (Docker schema 2 has none)
    os: str = "linux"
    architecture: str = "amd64"
    media: str = "oci"  # or "docker"


def config_of(spec: ImageSpec) -> dict:
    cfg: dict = {"Env": spec.env}
    if spec.entrypoint:
        cfg["Entrypoint"] = spec.entrypoint
    if spec.cmd:
        cfg["Cmd"] = spec.cmd
    if spec.working_dir:
        cfg["WorkingDir"] = spec.working_dir
    if spec.exposed_ports:
        cfg["ExposedPorts"] = {p: {} for p in spec.exposed_ports}
    if spec.labels:
        cfg["Labels"] = spec.labels
    history = spec.history or [f"layer {i}" for i in range(len(spec.layers))]
    return {
        "created": EPOCH,
        "architecture": spec.architecture,
        "os": spec.os,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in spec.layers]},
        "history": [{"created": EPOCH, **(h if isinstance(h, dict) else {"created_by": h})} for h in history],
    }


def push(client: RegistryClient, repo: ImageRef, spec: ImageSpec, *, tags: tuple[str, ...] = ()) -> ImageRef:
    """Push layers, config and manifest; tag it; return the image pinned by digest."""
    manifest_type, config_type, layer_type = MEDIA_TYPES[spec.media]
    if spec.annotations and spec.media != "oci":
        raise ValueError("annotations need an OCI manifest: Docker schema 2 has no annotations field")
    for l in spec.layers:
        if not client.blob_exists(repo, l.digest):
            client.put_blob(repo, l.blob)
    config = json.dumps(config_of(spec), sort_keys=True, separators=(",", ":")).encode()
    client.put_blob(repo, config)
    manifest: dict = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": l.digest, "size": len(l.blob)} for l in spec.layers],
    }
    if spec.annotations:
        manifest["annotations"] = spec.annotations
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = client.put_manifest(repo.with_digest(sha256(raw)), raw, manifest_type)
    for tag in tags:
        client.put_manifest(repo.with_tag(tag), raw, manifest_type)
    return repo.with_digest(digest)
