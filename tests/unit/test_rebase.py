"""The pure rebase: every rule of docs/OCI.md#rebase (1–5, 8), each known crane bug there, drift, determinism."""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from baseroll.images import oci
from baseroll.images.rebase import (
    ImageParts,
    RebaseError,
    child_descriptor,
    rebase,
    rebuild_index,
)
from hypothesis import given, settings
from hypothesis import strategies as st

NEW_NAME = "reg.example/bases/x:v2"
NEW_DIGEST = "sha256:" + "e" * 64


def h(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layer(n: int, media_type: str = oci.OCI_LAYER_GZIP, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": h(f"blob{n}"), "size": 100 + n, **extra}


def diff(n: int) -> str:
    return h(f"diff{n}")


def image(ids: list[int], *, history: list[dict[str, Any]] | None | str = "auto", run: dict[str, Any] | None = None,
          media_type: str = oci.OCI_MANIFEST, layer_type: str = oci.OCI_LAYER_GZIP, arch: str = "amd64",
          created: str | None = "2024-01-01T00:00:00Z", extra: dict[str, Any] | None = None,
          annotations: dict[str, str] | None = None) -> ImageParts:
    cfg: dict[str, Any] = {"os": "linux", "architecture": arch,
                           "rootfs": {"type": "layers", "diff_ids": [diff(i) for i in ids]},
                           "config": run if run is not None else {"Env": ["PATH=/usr/bin"]}}
    if created is not None:
        cfg["created"] = created
    if history == "auto":
        cfg["history"] = [{"created_by": f"layer {i}"} for i in ids]
    elif history is not None:
        cfg["history"] = history
    cfg.update(extra or {})
    m: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                         "config": {"mediaType": oci.DOCKER_CONFIG if media_type == oci.DOCKER_MANIFEST else oci.OCI_CONFIG,
                                    "digest": h("cfg" + str(ids)), "size": 10},
                         "layers": [layer(i, layer_type) for i in ids]}
    if annotations:
        m["annotations"] = annotations
    return ImageParts(m, media_type, cfg)


B = [1, 2]
N = [11, 12, 13]
APP = [101, 102]


def do(o: ImageParts, b: ImageParts, n: ImageParts, **kw: Any):
    out = rebase(o, b, n, new_base_name=NEW_NAME, new_base_digest=NEW_DIGEST, **kw)
    return out, json.loads(out.manifest), json.loads(out.config)


def std(**kw: Any) -> tuple[ImageParts, ImageParts, ImageParts]:
    return image(B + APP, **kw), image(B), image(N, created="2024-06-01T00:00:00Z")


# ---------------------------------------------------------------- rule 1: prefix


def test_rule1_old_base_must_be_a_prefix():
    with pytest.raises(RebaseError, match="not a prefix.*layer 1"):
        do(image([1, 3, 101]), image([1, 2]), image(N))
    with pytest.raises(RebaseError, match="not a prefix.*3 layers"):
        do(image([1, 2]), image([1, 2, 3]), image(N))


def test_rule1_diff_id_equality_is_an_accepted_fallback():
    o = image(B + APP)
    o.manifest["layers"][0]["digest"] = h("recompressed")  # same content, other compression
    out, m, _ = do(o, image(B), image(N))
    assert [l["digest"] for l in m["layers"]] == [layer(i)["digest"] for i in N + APP]


# ---------------------------------------------------------------- rule 2: counts


@pytest.mark.parametrize("which", ["original", "old base", "new base"])
def test_rule2_diff_id_count_must_match_layers(which):
    o, b, n = std()
    target = {"original": o, "old base": b, "new base": n}[which]
    target.config["rootfs"]["diff_ids"].append(diff(999))
    with pytest.raises(RebaseError, match=f"{which}: config has .* diff_ids but the manifest has"):
        do(o, b, n)


# ---------------------------------------------------------------- rule 3: layers


def test_rule3_layers_are_new_base_plus_app_descriptors_verbatim():
    o, b, n = std()
    o.manifest["layers"][3]["urls"] = ["https://example/blob"]
    o.manifest["layers"][3]["annotations"] = {"x": "y"}
    n.manifest["layers"][0]["annotations"] = {"base": "yes"}
    out, m, cfg = do(o, b, n)
    assert m["layers"] == n.manifest["layers"] + o.manifest["layers"][2:]
    assert cfg["rootfs"]["diff_ids"] == [diff(i) for i in N + APP]
    assert [d["digest"] for d in out.base_layers] == [layer(i)["digest"] for i in N]
    assert m["config"] == {"mediaType": oci.OCI_CONFIG, "digest": out.config_digest, "size": len(out.config)}
    assert out.config_digest == oci.sha256_digest(out.config)


def test_an_app_that_adds_no_layer_is_rebased_too():
    out, m, _ = do(image(B), image(B), image(N))
    assert [l["digest"] for l in m["layers"]] == [layer(i)["digest"] for i in N]


# ---------------------------------------------------------------- rule 4: config


def test_rule4_unknown_fields_survive_and_history_is_spliced():
    base_hist = [{"created_by": "b1"}, {"created_by": "b2"}, {"created_by": "ENV", "empty_layer": True}]
    app_hist = base_hist + [{"created_by": "a1"}, {"created_by": "WORKDIR", "empty_layer": True}, {"created_by": "a2"}]
    o = image(B + APP, history=app_hist, extra={"x-custom": {"keep": True}, "container_config": {"Hostname": "h"}})
    b = image(B, history=base_hist)
    n = image(N, history=[{"created_by": "n1"}, {"created_by": "n2"}, {"created_by": "n3"}, {"created_by": "CMD", "empty_layer": True}])
    _, _, cfg = do(o, b, n)
    assert cfg["x-custom"] == {"keep": True} and cfg["container_config"] == {"Hostname": "h"}
    assert [e["created_by"] for e in cfg["history"]] == ["n1", "n2", "n3", "CMD", "a1", "WORKDIR", "a2"]
    assert oci.non_empty(cfg["history"]) == len(cfg["rootfs"]["diff_ids"])


def test_rule4_history_dropped_when_original_history_does_not_match_layers():
    o = image(B + APP, history=[{"created_by": "only one"}])
    out, _, cfg = do(o, image(B), image(N))
    assert "history" not in cfg
    assert any("history dropped" in w for w in out.warnings)


def test_rule4_history_dropped_when_new_base_history_does_not_match():
    out, _, cfg = do(image(B + APP), image(B), image(N, history=[]))
    assert "history" not in cfg and any("new base history" in w for w in out.warnings)


def test_rule4_platform_fields_come_from_the_new_base():
    o = image(B + APP, extra={"os.version": "old", "variant": "v1", "os.features": ["old"]})
    b = image(B, extra={"os.version": "old", "variant": "v1"})
    n = image(N, extra={"os.version": "10.0.1"})
    _, _, cfg = do(o, b, n)
    assert cfg["os.version"] == "10.0.1" and "variant" not in cfg and "os.features" not in cfg
    assert cfg["os"] == "linux" and cfg["architecture"] == "amd64"


@pytest.mark.parametrize("o_created,n_created,expected", [
    ("2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z", "2024-06-01T00:00:00Z"),  # new base later
    ("2024-09-01T00:00:00Z", "2024-06-01T00:00:00Z", "2024-09-01T00:00:00Z"),  # app later
    ("2024-06-01T00:00:00.123456789Z", "2024-06-01T00:00:00.1Z", "2024-06-01T00:00:00.123456789Z"),  # nanoseconds
    (None, "2024-06-01T00:00:00Z", "2024-06-01T00:00:00Z"),
    ("2024-01-01T00:00:00Z", None, "2024-01-01T00:00:00Z"),
    ("garbage", "also garbage", "garbage"),
])
def test_rule4_created_is_the_later_of_original_and_new_base(o_created, n_created, expected):
    _, _, cfg = do(image(B + APP, created=o_created), image(B), image(N, created=n_created))
    assert cfg.get("created") == expected


# ---------------------------------------------------------------- rule 5: manifest


def test_rule5_media_type_and_annotations_kept_base_annotations_set():
    o = image(B + APP, annotations={"org.opencontainers.image.source": "git", oci.ANNOTATION_BASE_DIGEST: "old"})
    out, m, _ = do(o, image(B), image(N))
    assert out.media_type == oci.OCI_MANIFEST and m["mediaType"] == oci.OCI_MANIFEST
    assert m["annotations"] == {"org.opencontainers.image.source": "git",
                                oci.ANNOTATION_BASE_NAME: NEW_NAME, oci.ANNOTATION_BASE_DIGEST: NEW_DIGEST}
    d_o = image(B + APP, media_type=oci.DOCKER_MANIFEST, layer_type=oci.DOCKER_LAYER_GZIP)
    out, m, _ = do(d_o, image(B, layer_type=oci.DOCKER_LAYER_GZIP), image(N, layer_type=oci.DOCKER_LAYER_GZIP))
    assert out.media_type == oci.DOCKER_MANIFEST and m["mediaType"] == oci.DOCKER_MANIFEST
    assert m["config"]["mediaType"] == oci.DOCKER_CONFIG


@pytest.mark.parametrize("name,digest,reason", [
    ("bases/x:v2", NEW_DIGEST, "fully qualified"),
    ("reg.example/bases/x:v2@" + NEW_DIGEST, NEW_DIGEST, "tag form"),
    (NEW_NAME, "latest", "digest"),
])
def test_rule5_base_reference_is_validated(name, digest, reason):
    o, b, n = std()
    with pytest.raises(RebaseError, match=reason):
        rebase(o, b, n, new_base_name=name, new_base_digest=digest)


# ---------------------------------------------------- crane's bugs (docs/OCI.md#rebase)


def test_crane_bug_original_without_history_keeps_its_first_app_layer():
    o = image(B + APP, history=None)
    out, m, cfg = do(o, image(B), image(N))
    assert [l["digest"] for l in m["layers"]] == [layer(i)["digest"] for i in N + APP]
    assert cfg["rootfs"]["diff_ids"] == [diff(i) for i in N + APP]
    assert "history" not in cfg


def test_crane_bug_old_base_without_history_does_not_duplicate_base_layers():
    o = image(B + APP)  # full history: 2 base + 2 app entries
    out, m, cfg = do(o, image(B, history=None), image(N))
    assert len(m["layers"]) == len(N) + len(APP)
    assert [e["created_by"] for e in cfg["history"]] == ["layer 11", "layer 12", "layer 13", "layer 101", "layer 102"]


def test_crane_bug_equal_diff_ids_with_different_digests_stay_two_layers():
    n = image(N)
    n.config["rootfs"]["diff_ids"][1] = n.config["rootfs"]["diff_ids"][0]  # same content, two compressions
    o = image(B + APP)
    o.config["rootfs"]["diff_ids"][3] = diff(11)  # an app layer equal in content to a base layer
    out, m, cfg = do(o, image(B), n)
    assert [l["digest"] for l in m["layers"]] == [layer(i)["digest"] for i in N + APP]
    assert cfg["rootfs"]["diff_ids"] == [diff(11), diff(11), diff(13), diff(101), diff(11)]
    assert len(out.base_layers) == 3


def test_crane_bug_no_docker_manifest_around_oci_layers():
    d_o = image(B + APP, media_type=oci.DOCKER_MANIFEST, layer_type=oci.DOCKER_LAYER_GZIP)
    d_b = image(B, media_type=oci.DOCKER_MANIFEST, layer_type=oci.DOCKER_LAYER_GZIP)
    out, m, _ = do(d_o, d_b, image(N))  # OCI new base
    assert m["mediaType"] == oci.DOCKER_MANIFEST
    assert {l["mediaType"] for l in m["layers"]} == {oci.DOCKER_LAYER_GZIP}
    assert [l["digest"] for l in m["layers"]] == [layer(i)["digest"] for i in N + APP]
    assert all(d["mediaType"] == oci.DOCKER_LAYER_GZIP for d in out.base_layers)
    assert any("relabelled" in w for w in out.warnings)
    with pytest.raises(RebaseError, match="cannot carry"):
        do(d_o, d_b, image(N, layer_type=oci.OCI_LAYER_ZSTD))
    # An OCI original stays OCI, whatever the base.
    out, m, _ = do(image(B + APP), image(B), image(N, media_type=oci.DOCKER_MANIFEST, layer_type=oci.DOCKER_LAYER_GZIP))
    assert out.media_type == oci.OCI_MANIFEST


# ---------------------------------------------------------------- rule 8: drift


def test_drift_applied_when_the_app_did_not_override():
    o = image(B + APP, run={"Env": ["PATH=/usr/bin", "APP=1", "GONE=1"], "Cmd": ["/bin/sh"]})
    b = image(B, run={"Env": ["PATH=/usr/bin", "GONE=1"], "Cmd": ["/bin/sh"]})
    n = image(N, run={"Env": ["PATH=/opt/bin:/usr/bin", "NEW=2"], "Cmd": ["/bin/bash"]})
    out, _, cfg = do(o, b, n)
    assert cfg["config"]["Env"] == ["PATH=/opt/bin:/usr/bin", "APP=1", "NEW=2"]
    assert cfg["config"]["Cmd"] == ["/bin/bash"]
    assert any("Env PATH" in w and "applied" in w for w in out.warnings)


def test_drift_refused_when_the_app_overrode_and_named():
    o = image(B + APP, run={"Env": ["PATH=/app/bin:/usr/bin"]})
    b = image(B, run={"Env": ["PATH=/usr/bin"]})
    n = image(N, run={"Env": ["PATH=/opt/bin:/usr/bin"]})
    with pytest.raises(RebaseError, match="Env PATH"):
        do(o, b, n)
    out, _, cfg = do(o, b, n, drift_policy="keep-app")
    assert cfg["config"]["Env"] == ["PATH=/app/bin:/usr/bin"]
    assert any("keep-app" in w and "Env PATH" in w for w in out.warnings)
    out, _, cfg = do(o, b, n, drift_policy="ignore")
    assert cfg["config"]["Env"] == ["PATH=/app/bin:/usr/bin"] and any("ignore" in w for w in out.warnings)


def test_drift_ignore_applies_nothing():
    o = image(B + APP, run={"Env": ["PATH=/usr/bin"]})
    n = image(N, run={"Env": ["PATH=/opt/bin"], "User": "nonroot"})
    _, _, cfg = do(o, image(B), n, drift_policy="ignore")
    assert cfg["config"] == {"Env": ["PATH=/usr/bin"]}


@pytest.mark.parametrize("key,old,new,app", [
    ("Entrypoint", ["/a"], ["/b"], ["/app"]),
    ("Cmd", ["sh"], ["bash"], ["/app/main"]),
    ("User", "root", "nonroot", "app"),
    ("WorkingDir", "/", "/home", "/srv"),
    ("ExposedPorts", {"80/tcp": {}}, {"8080/tcp": {}}, {"9000/tcp": {}}),
])
def test_drift_per_key(key, old, new, app):
    b = image(B, run={key: old})
    n = image(N, run={key: new})
    _, _, cfg = do(image(B + APP, run={key: old}), b, n)
    assert cfg["config"][key] == new
    with pytest.raises(RebaseError, match=key):
        do(image(B + APP, run={key: app}), b, n)
    _, _, cfg = do(image(B + APP, run={key: app}), b, n, drift_policy="keep-app")
    assert cfg["config"][key] == app


def test_drift_removed_key_and_null_vs_missing():
    o = image(B + APP, run={"User": "nonroot", "Cmd": None})
    b = image(B, run={"User": "nonroot"})
    n = image(N, run={"Cmd": []})  # Cmd [] == absent == null: no drift; User removed by the new base
    out, _, cfg = do(o, b, n)
    assert "User" not in cfg["config"] and cfg["config"]["Cmd"] is None


def test_no_drift_no_warning_and_app_config_untouched():
    run = {"Env": ["PATH=/usr/bin", "APP=1"], "Cmd": ["/app"], "Labels": {"a": "b"}}
    out, _, cfg = do(image(B + APP, run=run), image(B), image(N))
    assert cfg["config"] == run and out.warnings == ()


def test_unknown_drift_policy_and_bad_env():
    o, b, n = std()
    with pytest.raises(RebaseError, match="drift policy"):
        do(o, b, n, drift_policy="whatever")
    with pytest.raises(RebaseError, match="Env"):
        do(image(B + APP, run={"Env": "PATH=/x"}), b, image(N, run={"Env": ["PATH=/y"]}))


# ---------------------------------------------------------------- refusals on bad inputs


def test_platform_mismatch():
    with pytest.raises(RebaseError, match="platform mismatch.*new base is linux/arm64"):
        do(image(B + APP), image(B), image(N, arch="arm64"))
    with pytest.raises(RebaseError, match="old base"):
        do(image(B + APP), image(B, arch="arm64"), image(N))
    o, b, n = image(B + APP, arch="arm64", extra={"variant": "v8"}), image(B, arch="arm64"), image(N, arch="arm64")
    do(o, b, n)  # arm64 == arm64/v8
    del o.config["os"]
    with pytest.raises(RebaseError, match="no os/architecture"):
        do(o, b, n)


def test_schema1_index_and_malformed_inputs():
    o, b, n = std()
    with pytest.raises(RebaseError, match="schema1"):
        do(ImageParts(o.manifest, oci.DOCKER_SCHEMA1_SIGNED, o.config), b, n)
    with pytest.raises(RebaseError, match="schema1"):
        do(ImageParts({**o.manifest, "schemaVersion": 1}, o.media_type, o.config), b, n)
    with pytest.raises(RebaseError, match="index"):
        do(ImageParts({"schemaVersion": 2, "manifests": []}, oci.OCI_INDEX, o.config), b, n)
    bad = copy.deepcopy(n)
    bad.manifest["layers"][0]["digest"] = "sha256:nope"
    with pytest.raises(RebaseError, match="new base layer 0"):
        do(o, b, bad)
    with pytest.raises(RebaseError, match="rootfs"):
        do(ImageParts(o.manifest, o.media_type, {"os": "linux", "architecture": "amd64"}), b, n)


# ---------------------------------------------------------------- determinism


def test_same_inputs_same_bytes_and_inputs_untouched():
    o, b, n = std()
    snapshot = copy.deepcopy((o, b, n))
    first = do(o, b, n)[0]
    assert (o, b, n) == snapshot
    shuffled = tuple(ImageParts(json.loads(json.dumps(p.manifest, sort_keys=True)[::1]), p.media_type,
                                dict(reversed(list(p.config.items())))) for p in (o, b, n))
    assert do(*shuffled)[0] == first
    assert first.manifest_digest == oci.sha256_digest(first.manifest)


def test_rebasing_the_result_onto_the_same_base_is_a_fixpoint():
    o, b, n = std()
    out, m, cfg = do(o, b, n)
    again, _, _ = do(ImageParts(m, out.media_type, cfg), n, n)
    assert again.manifest == out.manifest and again.config == out.config


@settings(max_examples=60, deadline=None)
@given(n_base=st.integers(0, 4), n_app=st.integers(0, 4), n_new=st.integers(0, 5), hist=st.booleans())
def test_property_layer_and_diff_id_counts(n_base, n_app, n_new, hist):
    base = list(range(1, n_base + 1))
    app = list(range(100, 100 + n_app))
    new = list(range(50, 50 + n_new))
    o = image(base + app, history="auto" if hist else None)
    out, m, cfg = do(o, image(base), image(new))
    assert len(m["layers"]) == len(cfg["rootfs"]["diff_ids"]) == n_new + n_app
    assert [l["digest"] for l in m["layers"]] == [layer(i)["digest"] for i in new + app]
    if "history" in cfg:
        assert oci.non_empty(cfg["history"]) == n_new + n_app
    assert do(o, image(base), image(new))[0] == out


# ---------------------------------------------------------------- index helpers


def test_rebuild_index_keeps_order_media_type_and_annotations():
    index = {"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST_LIST, "annotations": {"a": "b"},
             "manifests": [{"mediaType": oci.DOCKER_MANIFEST, "digest": h("x"), "size": 1,
                            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}, "annotations": {"k": "v"}}]}
    child = child_descriptor(index["manifests"][0], b"{}", oci.DOCKER_MANIFEST)
    assert child["platform"] == index["manifests"][0]["platform"] and child["annotations"] == {"k": "v"}
    assert child["digest"] == oci.sha256_digest(b"{}") and child["size"] == 2
    raw = rebuild_index(index, [child])
    out = json.loads(raw)
    assert out["mediaType"] == oci.DOCKER_MANIFEST_LIST and out["annotations"] == {"a": "b"}
    assert out["manifests"] == [child]
    with pytest.raises(RebaseError, match="no children"):
        rebuild_index(index, [])
