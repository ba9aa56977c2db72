"""Pure OCI helpers: caps before parsing, schema1 refusal, shape checks, digests, platforms."""
from __future__ import annotations

import json

import pytest
from baseroll.images import oci

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def manifest(**extra):
    m = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
         "config": {"mediaType": oci.OCI_CONFIG, "digest": D1, "size": 2},
         "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": D2, "size": 10}]}
    m.update(extra)
    return m


def test_sha256_and_is_digest():
    assert oci.sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert oci.is_digest(D1) and not oci.is_digest("sha256:ABC") and not oci.is_digest(None)


def test_canonical_json_is_deterministic_and_compact():
    a = oci.canonical_json({"b": 1, "a": {"y": [1, 2], "x": "é"}})
    b = oci.canonical_json({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    assert a == b == '{"a":{"x":"é","y":[1,2]},"b":1}'.encode()
    with pytest.raises(ValueError):
        oci.canonical_json({"n": float("nan")})


def test_size_cap_applies_before_parsing():
    with pytest.raises(oci.OCIError, match="limit"):
        oci.load_json(b"not json at all" * 10, max_bytes=20, what="manifest")
    with pytest.raises(oci.OCIError, match="limit"):
        oci.parse_manifest_or_index(oci.canonical_json(manifest()), max_bytes=10)


@pytest.mark.parametrize("raw,reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"[" * 100000, "not valid JSON"),
])
def test_malformed_json(raw, reason):
    with pytest.raises(oci.OCIError, match=reason):
        oci.load_json(raw, max_bytes=1 << 20, what="manifest")


def test_schema1_is_refused_with_a_clear_error():
    s1 = json.dumps({"schemaVersion": 1, "name": "x", "tag": "t", "fsLayers": []}).encode()
    with pytest.raises(oci.OCIError, match="schema1"):
        oci.parse_manifest_or_index(s1)
    with pytest.raises(oci.OCIError, match="schema1"):
        oci.parse_manifest_or_index(oci.canonical_json(manifest()), oci.DOCKER_SCHEMA1_SIGNED)


def test_media_type_from_body_header_or_shape():
    assert oci.parse_manifest_or_index(oci.canonical_json(manifest()))[0] == oci.OCI_MANIFEST
    bare = manifest()
    del bare["mediaType"]
    assert oci.parse_manifest_or_index(oci.canonical_json(bare), oci.DOCKER_MANIFEST)[0] == oci.DOCKER_MANIFEST
    assert oci.parse_manifest_or_index(oci.canonical_json(bare))[0] == oci.OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    assert oci.parse_manifest_or_index(oci.canonical_json(index), "application/json")[0] == oci.OCI_INDEX
    with pytest.raises(oci.OCIError, match="contradicts"):
        oci.parse_manifest_or_index(oci.canonical_json(manifest()), oci.DOCKER_MANIFEST)
    with pytest.raises(oci.OCIError, match="unsupported manifest media type"):
        oci.parse_manifest_or_index(oci.canonical_json(manifest(mediaType="application/x-other")))
    with pytest.raises(oci.OCIError, match="schemaVersion"):
        oci.parse_manifest_or_index(oci.canonical_json(manifest(schemaVersion=3)))


@pytest.mark.parametrize("patch,reason", [
    ({"layers": "x"}, "layers is not a list"),
    ({"layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:bad", "size": 1}]}, "digest"),
    ({"layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": D2, "size": -1}]}, "size"),
    ({"layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": D2, "size": True}]}, "size"),
    ({"layers": [{"digest": D2, "size": 1}]}, "mediaType"),
    ({"config": None}, "config"),
    ({"annotations": {"a": 1}}, "annotations"),
])
def test_bad_manifests(patch, reason):
    with pytest.raises(oci.OCIError, match=reason):
        oci.parse_manifest_or_index(oci.canonical_json(manifest(**patch)))


def test_index_validation():
    ok = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
          "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": D1, "size": 3, "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert oci.parse_manifest_or_index(oci.canonical_json(ok))[0] == oci.OCI_INDEX
    bad = {**ok, "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": D1, "size": 3, "platform": "linux"}]}
    with pytest.raises(oci.OCIError, match="platform"):
        oci.parse_manifest_or_index(oci.canonical_json(bad))


def test_parse_config():
    cfg = {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [D1]}}
    assert oci.parse_config(oci.canonical_json(cfg))["rootfs"]["diff_ids"] == [D1]
    with pytest.raises(oci.OCIError, match="rootfs"):
        oci.parse_config(b'{"os":"linux"}')
    with pytest.raises(oci.OCIError, match="diff_id"):
        oci.parse_config(oci.canonical_json({**cfg, "rootfs": {"diff_ids": ["md5:x"]}}))
    with pytest.raises(oci.OCIError, match="history"):
        oci.parse_config(oci.canonical_json({**cfg, "history": {}}))
    with pytest.raises(oci.OCIError, match="limit"):
        oci.parse_config(oci.canonical_json(cfg), max_bytes=5)


def test_platforms():
    p = oci.Platform.parse("linux/arm64/v8")
    assert str(p) == "linux/arm64/v8" and p.matches(oci.Platform("linux", "arm64"))
    assert oci.Platform("linux", "arm").matches(oci.Platform("linux", "arm", "v7"))
    assert not oci.Platform("linux", "arm", "v6").matches(oci.Platform("linux", "arm", "v7"))
    assert not oci.Platform("linux", "amd64").matches(oci.Platform("linux", "arm64"))
    assert not oci.Platform("linux", "amd64").matches(oci.Platform("windows", "amd64"))
    with pytest.raises(oci.OCIError):
        oci.Platform.parse("linux")
    assert oci.Platform.from_dict({"os": "linux"}) is None
    assert oci.config_platform({"os": "linux", "architecture": "arm64", "variant": "v8"}) == oci.Platform("linux", "arm64", "v8")


def test_attestation_and_select_platform():
    att = {"mediaType": oci.OCI_MANIFEST, "digest": D2, "size": 1,
           "platform": {"os": "unknown", "architecture": "unknown"},
           "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
    amd = {"mediaType": oci.OCI_MANIFEST, "digest": D1, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}
    index = {"manifests": [att, amd]}
    assert oci.is_attestation(att) and not oci.is_attestation(amd)
    assert oci.select_platform(index, oci.Platform("linux", "amd64")) == amd
    assert oci.select_platform(index, oci.Platform("linux", "arm64")) is None
    assert oci.select_platform(index, oci.Platform("unknown", "unknown")) is None


def test_non_empty_history_count():
    assert oci.non_empty([{}, {"empty_layer": True}, {"empty_layer": False}]) == 2
