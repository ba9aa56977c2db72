"""The image model (images.image) over pure dicts and an in-memory registry: which child of an index
is read for linux/amd64 (variants, attestations), what annotations and labels it answers with."""
from __future__ import annotations

from typing import Any

import pytest
from baseroll.images import image, oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import Manifest, RegistryError

H = "reg.example"


def digest(tag: str) -> str:
    return oci.sha256_digest(tag.encode())


def entry(name: str, os_: str = "linux", arch: str = "amd64", variant: str | None = None,
          annotations: dict[str, str] | None = None, media_type: str = oci.OCI_MANIFEST) -> dict[str, Any]:
    platform = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest(name), "size": 1, "platform": platform}
    if annotations:
        d["annotations"] = annotations
    return d


def attestation(name: str, os_: str = "unknown", arch: str = "unknown") -> dict[str, Any]:
    return entry(name, os_, arch, annotations={oci.ANNOTATION_REFERENCE_TYPE: oci.ATTESTATION_MANIFEST})


# ---------------------------------------------------------------- pure: picking a child


@pytest.mark.parametrize("children, want, picked", [
    ([entry("arm", arch="arm64"), entry("amd")], "linux/amd64", "amd"),
    ([entry("arm", arch="arm64", variant="v8"), entry("amd")], "linux/arm64", "arm"),  # arm64 means v8
    ([entry("amd", variant="v1")], "linux/amd64", "amd"),  # amd64/v1 is plain amd64
    ([entry("x86", arch="x86_64"), entry("amd")], "linux/amd64", "x86"),  # an alias of amd64, listed first
    # An attestation is never the image, even one that claims linux/amd64.
    ([attestation("att", "linux", "amd64"), entry("amd")], "linux/amd64", "amd"),
])
def test_platform_child_normalises_variants_and_skips_attestations(children, want, picked):
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": children}
    assert image.platform_child(index, oci.Platform.parse(want), "x")["digest"] == digest(picked)


def test_platform_child_missing_names_the_platform_and_why_amd64_matters():
    index = {"manifests": [entry("arm", arch="arm64"), attestation("att"), entry("v3", variant="v3")]}
    with pytest.raises(image.PlatformMissing, match=r"^app@x has no linux/amd64 image, which Cloud Run needs$"):
        image.platform_child(index, image.RUN_PLATFORM, "app@x")
    with pytest.raises(RegistryError, match=r"^app has no linux/s390x image$"):
        image.platform_child(index, oci.Platform("linux", "s390x"), "app")


def test_annotations_of_index_and_child_merge_and_the_index_wins():
    top = {"annotations": {"a": "index", "b": "index", "bad": 3}}
    child = {"annotations": {"b": "child", "c": "child"}}
    assert image.merged_annotations(top, child) == {"a": "index", "b": "index", "c": "child"}
    assert image.merged_annotations({"annotations": "not a map"}, None) == {}


@pytest.mark.parametrize("config, labels", [
    ({"config": {"Labels": {"k": "v", "n": 1}}}, {"k": "v"}),
    ({"config": {"Labels": None}}, {}),
    ({"config": None}, {}),
    ({"config": {"Labels": ["k=v"]}}, {}),
    ({}, {}),
])
def test_config_labels_tolerate_missing_and_malformed_labels(config, labels):
    assert image.config_labels(config) == labels


# ---------------------------------------------------------------- reading through a registry


class DictRegistry:
    """get_manifest / get_blob over dicts keyed by digest (tags map to digests)."""

    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {}
        self.tags: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}

    def add(self, data: dict[str, Any], tag: str | None = None) -> str:
        raw = oci.canonical_json(data)
        d = oci.sha256_digest(raw)
        self.manifests[d] = Manifest(oci.media_type_of(data), d, raw, data, len(raw))
        if tag:
            self.tags[tag] = d
        return d

    def get_manifest(self, ref: ImageRef) -> Manifest:
        return self.manifests[ref.digest or self.tags[ref.tag or "latest"]]

    def get_blob(self, repo: ImageRef, d: str, max_bytes: int = 0) -> bytes:
        return self.blobs[d]


def single(reg: DictRegistry, layers: list[str], config: dict[str, Any], **annotations: str) -> tuple[str, dict]:
    cfg = oci.canonical_json(config)
    reg.blobs[oci.sha256_digest(cfg)] = cfg
    data: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                            "config": oci.descriptor(oci.OCI_CONFIG, cfg),
                            "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": digest(x), "size": 1} for x in layers]}
    if annotations:
        data["annotations"] = dict(annotations)
    return reg.add(data), data


def test_read_a_single_manifest():
    reg = DictRegistry()
    d, _ = single(reg, ["a", "b"], {"os": "linux", "architecture": "arm64", "config": {"Labels": {"l": "1"}}}, x="y")
    reg.tags["1"] = d
    found = image.read(reg, ImageRef(H, "app", "1"))  # type: ignore[arg-type]
    # One platform only: returned as it is (the rebase checks the platform in its config).
    assert found.ref == ImageRef(H, "app", None, d) and found.top is found.manifest
    assert found.layers == (digest("a"), digest("b")) and found.annotations == {"x": "y"}
    assert image.config_labels(image.read_config(reg, found)) == {"l": "1"}  # type: ignore[arg-type]


def test_read_an_index_through_its_amd64_child_keeping_the_index_digest():
    reg = DictRegistry()
    arm, arm_m = single(reg, ["arm"], {"os": "linux", "architecture": "arm64"})
    amd, amd_m = single(reg, ["amd"], {"os": "linux", "architecture": "amd64"}, base="child", only="child")
    kids = [{**oci.descriptor(oci.OCI_MANIFEST, oci.canonical_json(m)), "platform": p}
            for m, p in ((arm_m, {"os": "linux", "architecture": "arm64"}),
                         (amd_m, {"os": "linux", "architecture": "amd64"}))]
    top = reg.add({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "annotations": {"base": "index"},
                   "manifests": [attestation("att"), *kids]}, tag="1")
    found = image.read(reg, ImageRef(H, "app", "1"))  # type: ignore[arg-type]
    assert found.ref.digest == top and found.manifest.digest == amd
    assert found.layers == (digest("amd"),) and found.config_digest == amd_m["config"]["digest"]
    assert found.annotations == {"base": "index", "only": "child"}
    arm64 = image.read(reg, ImageRef(H, "app", "1"), oci.Platform("linux", "arm64"))  # type: ignore[arg-type]
    assert arm64.manifest.digest == arm


def test_a_nested_index_or_a_bad_config_is_a_registry_error():
    reg = DictRegistry()
    inner = reg.add({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    reg.add({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
             "manifests": [{"mediaType": oci.OCI_INDEX, "digest": inner, "size": 1,
                            "platform": {"os": "linux", "architecture": "amd64"}}]}, tag="nested")
    with pytest.raises(image.PlatformMissing, match="nested index"):
        image.read(reg, ImageRef(H, "app", "nested"))  # type: ignore[arg-type]
    d, data = single(reg, ["a"], {"os": "linux", "architecture": "amd64"})
    reg.blobs[data["config"]["digest"]] = b"[1, 2]"  # valid JSON, not an object
    found = image.read(reg, ImageRef(H, "app", None, d))  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="expected a JSON object") as err:
        image.read_config(reg, found)  # type: ignore[arg-type]
    assert err.value.code == "MANIFEST_INVALID"
