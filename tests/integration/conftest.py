"""Shared fixtures: the real registry server (module scope) and a tiny image builder.

Images are built from generated tar.gz layers (deterministic: mtime 0) and pushed with our own
client, so tests need neither Docker nor network.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient

from infra.local.registry_server import RegistryServer


@dataclass(frozen=True)
class Layer:
    blob: bytes  # tar.gz
    diff_id: str

    @property
    def digest(self) -> str:
        return oci.sha256_digest(self.blob)


def make_layer(files: dict[str, bytes]) -> Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return Layer(gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest())


@dataclass
class Built:
    ref: ImageRef  # pinned by digest
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[Layer] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes = b""

    @property
    def digest(self) -> str:
        assert self.ref.digest
        return self.ref.digest


def push_image(
    client: RegistryClient,
    repo: ImageRef,
    layers: list[Layer],
    *,
    tag: str | None = None,
    history: list[dict[str, Any]] | None = None,
    run: dict[str, Any] | None = None,
    arch: str = "amd64",
    variant: str | None = None,
    created: str = "2024-01-01T00:00:00Z",
    docker: bool = False,
) -> Built:
    """Push layers + config + manifest; ``history`` defaults to one entry per layer."""
    if history is None:
        history = [{"created_by": f"layer {i}"} for i in range(len(layers))]
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": run or {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
        "history": history,
    }
    if variant:
        config["variant"] = variant
    for layer in layers:
        client.put_blob(repo, layer.blob)
    cfg_raw = oci.canonical_json(config)
    client.put_blob(repo, cfg_raw)
    mt = oci.DOCKER_MANIFEST if docker else oci.OCI_MANIFEST
    layer_mt = oci.DOCKER_LAYER_GZIP if docker else oci.OCI_LAYER_GZIP
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt,
        "config": oci.descriptor(oci.DOCKER_CONFIG if docker else oci.OCI_CONFIG, cfg_raw),
        "layers": [oci.descriptor(layer_mt, l.blob) for l in layers],
    }
    raw = oci.canonical_json(manifest)
    digest = client.put_manifest(ImageRef(repo.registry, repo.repository, tag or None, None if tag else oci.sha256_digest(raw)), raw, mt)
    return Built(ImageRef(repo.registry, repo.repository, None, digest), manifest, config, list(layers), history, raw)


def push_index(client: RegistryClient, repo: ImageRef, children: list[Built], *, tag: str | None = None,
               attestation_for: Built | None = None, annotations: dict[str, str] | None = None) -> ImageRef:
    """An OCI index of ``children`` (platform from each config), optionally with a BuildKit attestation child."""
    entries = []
    for c in children:
        platform = {"os": c.config["os"], "architecture": c.config["architecture"]}
        if c.config.get("variant"):
            platform["variant"] = c.config["variant"]
        entries.append({**oci.descriptor(oci.OCI_MANIFEST, c.raw), "platform": platform})
    if attestation_for is not None:
        statement = oci.canonical_json({"_type": "https://in-toto.io/Statement/v0.1", "subject": attestation_for.digest})
        client.put_blob(repo, statement)
        att_cfg = b"{}"
        client.put_blob(repo, att_cfg)
        att = {
            "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
            "config": oci.descriptor("application/vnd.oci.image.config.v1+json", att_cfg),
            "layers": [{**oci.descriptor("application/vnd.in-toto+json", statement),
                        "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
        }
        att_raw = oci.canonical_json(att)
        client.put_manifest(repo.with_digest(oci.sha256_digest(att_raw)), att_raw, oci.OCI_MANIFEST)
        entries.append({**oci.descriptor(oci.OCI_MANIFEST, att_raw),
                        "platform": {"os": "unknown", "architecture": "unknown"},
                        "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                        "vnd.docker.reference.digest": attestation_for.digest}})
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}
    if annotations:
        index["annotations"] = annotations
    raw = oci.canonical_json(index)
    digest = client.put_manifest(repo.with_tag(tag) if tag else repo.with_digest(oci.sha256_digest(raw)), raw, oci.OCI_INDEX)
    return repo.with_digest(digest)


def manifest_json(client: RegistryClient, ref: ImageRef) -> dict[str, Any]:
    return json.loads(client.get_manifest(ref).raw)


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as reg:
        yield reg


def new_client(host: str, **kw: Any) -> RegistryClient:
    return RegistryClient(plain_http_hosts=[host], allowed_hosts=[host], retries=1, backoff=0.01, **kw)


@pytest.fixture
def client(registry: RegistryServer) -> Iterator[RegistryClient]:
    with new_client(registry.host) as c:
        yield c
