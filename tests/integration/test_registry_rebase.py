"""The registry client and the registry-side rebase against the real registry server (distribution 2.8),
plus pure client logic (auth, mount fallback, verification, retries) over httpx.MockTransport."""
from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from baseroll.images import oci
from baseroll.images.rebase import RebaseError
from baseroll.images.rebaser import rebase_image
from baseroll.images.refs import ImageRef
from baseroll.images.registry import (
    SINGLE_POST_MAX,
    GoogleTokenSource,
    RegistryClient,
    RegistryError,
    RegistryStats,
    StaticCredentials,
    parse_challenge,
)

from tests.integration.conftest import (
    Built,
    make_layer,
    manifest_json,
    new_client,
    push_image,
    push_index,
)

pytestmark = pytest.mark.integration

BASE_HISTORY = [{"created_by": "ADD base 0"}, {"created_by": "ADD base 1"},
                {"created_by": "ENV PATH", "empty_layer": True}]


@pytest.fixture(scope="module")
def world(registry) -> dict[str, Any]:
    """bases/x:v1 (2 layers), bases/x:v2 (3 new layers), apps/a:1 = v1 + 2 app layers."""
    host = registry.host
    bases, apps = ImageRef(host, "bases/x"), ImageRef(host, "apps/a")
    with new_client(host) as c:
        v1_layers = [make_layer({"etc/os": b"v1"}), make_layer({"bin/tool": b"v1 tool"})]
        v2_layers = [make_layer({"etc/os": b"v2"}), make_layer({"bin/tool": b"v2 tool"}), make_layer({"lib/x": b"v2"})]
        v1 = push_image(c, bases, v1_layers, tag="v1", history=BASE_HISTORY, created="2024-01-01T00:00:00Z")
        v2 = push_image(c, bases, v2_layers, tag="v2", created="2024-06-01T00:00:00Z",
                        history=[{"created_by": f"ADD v2 {i}"} for i in range(3)])
        app_layers = [make_layer({"app/main": b"app"}), make_layer({"app/data": b"data"})]
        app = push_image(c, apps, v1_layers + app_layers, tag="1", created="2024-02-01T00:00:00Z",
                         history=BASE_HISTORY + [{"created_by": "COPY main"}, {"created_by": "COPY data"},
                                                 {"created_by": "CMD", "empty_layer": True}],
                         run={"Env": ["PATH=/usr/bin:/bin", "APP=1"], "Cmd": ["/app/main"]})
    return {"host": host, "v1": v1, "v2": v2, "app": app, "app_layers": app_layers,
            "bases": bases, "apps": apps}


def _refs(w: dict[str, Any]) -> tuple[ImageRef, ImageRef, ImageRef]:
    host = w["host"]
    return (ImageRef(host, "apps/a", "1"), ImageRef(host, "bases/x", "v1"), ImageRef(host, "bases/x", "v2"))


# ---------------------------------------------------------------- stage 1: single platform


def test_rebase_mounts_layers_and_uploads_only_the_config(world, registry):
    app, old, new = _refs(world)
    v2: Built = world["v2"]
    with new_client(registry.host) as c:
        result = rebase_image(c, app, old, new)
        stats = copy.deepcopy(c.stats)
        m = manifest_json(c, result.ref)
        cfg = json.loads(c.get_blob(result.ref, m["config"]["digest"]))
        exists = [c.blob_exists(world["apps"], l.digest) for l in v2.layers]

    assert result.ref == ImageRef(registry.host, "apps/a", None, result.digest)
    assert result.media_type == oci.OCI_MANIFEST and result.pushed
    assert [l["digest"] for l in m["layers"]] == [l.digest for l in v2.layers] + [l.digest for l in world["app_layers"]]
    assert cfg["rootfs"]["diff_ids"] == [l.diff_id for l in v2.layers] + [l.diff_id for l in world["app_layers"]]
    assert m["annotations"] == {oci.ANNOTATION_BASE_NAME: f"{registry.host}/bases/x:v2",
                                oci.ANNOTATION_BASE_DIGEST: v2.digest}
    assert [h["created_by"] for h in cfg["history"]] == ["ADD v2 0", "ADD v2 1", "ADD v2 2", "COPY main", "COPY data", "CMD"]
    assert cfg["created"] == "2024-06-01T00:00:00Z"  # the new base is later than the app
    assert cfg["config"]["Cmd"] == ["/app/main"]
    # Only configs were read (app, old base, new base); layers moved by mount, nothing but the config uploaded.
    layer_digests = {l.digest for l in v2.layers} | {l.digest for l in world["app_layers"]}
    assert not layer_digests & set(stats.blobs_fetched) and stats.blob_gets == 3
    assert stats.bytes_uploaded < 64 * 1024 and stats.uploads == 1
    assert stats.mounts == 3 and stats.mount_fallbacks == 0 and result.mounted_layers == 3
    assert all(exists)
    assert stats.manifest_puts == 1
    # 3 manifests, 3 configs, 1 HEAD of the result, 3 mounts (no HEAD first), the config in POST + PUT
    # (distribution 2.8 answers a single-POST upload with 202), 1 manifest PUT.
    assert stats.requests == 13 and stats.manifest_heads == 1

    with new_client(registry.host) as c:  # idempotent and cheap
        again = rebase_image(c, app, old, new)
        assert again.digest == result.digest and not again.pushed
        assert c.stats.mounts == 0 and c.stats.uploads == 0 and c.stats.manifest_puts == 0
        assert c.stats.bytes_uploaded == 0
        assert c.stats.requests == 7  # the same reads, then one HEAD


def test_layers_the_app_already_holds_are_not_mounted_again(world, registry):
    """A new base that keeps the old base's first layer: only its new layer is mounted into the app's repository."""
    host = registry.host
    v1: Built = world["v1"]
    kept, fresh = v1.layers[0], make_layer({"etc/os": b"v2 partial"})
    with new_client(host) as c:
        push_image(c, world["bases"], [kept, fresh], tag="v2-partial", created="2024-06-01T00:00:00Z")
        c.stats = RegistryStats()
        result = rebase_image(c, _refs(world)[0], _refs(world)[1], ImageRef(host, "bases/x", "v2-partial"))
        assert c.stats.mounts == 1 and result.mounted_layers == 1
        assert [l["digest"] for l in manifest_json(c, result.ref)["layers"][:2]] == [kept.digest, fresh.digest]


def test_rebased_image_unpacks_with_skopeo_and_umoci(world, registry, tmp_path: Path):
    """An independent implementation checks every digest and diff_id of the result."""
    app, old, new = _refs(world)
    with new_client(registry.host) as c:
        result = rebase_image(c, app, old, new)
    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{result.ref}", f"oci:{layout}:img"],
                   check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:img", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "etc/os").read_bytes() == b"v2"
    assert (rootfs / "lib/x").read_bytes() == b"v2"
    assert (rootfs / "app/main").read_bytes() == b"app"


def test_dry_run_writes_nothing(world, registry):
    app, old, new = _refs(world)
    with new_client(registry.host) as c:
        result = rebase_image(c, app, old, new, target=ImageRef(registry.host, "apps/dry"), dry_run=True)
        assert not result.pushed and c.stats.manifest_puts == 0 and c.stats.mounts == 0 and c.stats.uploads == 0
        assert c.head_manifest(result.ref) is None


def test_target_with_tag_in_another_repository(world, registry):
    app, old, new = _refs(world)
    target = ImageRef(registry.host, "apps/other", "rebased")
    with new_client(registry.host) as c:
        result = rebase_image(c, app, old, new, target=target)
        assert c.head_manifest(target) == result.digest
        assert result.ref == target.with_tag(None).with_digest(result.digest)
        for layer in world["app_layers"]:  # the app's own layers were mounted too
            assert c.blob_exists(target, layer.digest)
        assert c.stats.blob_gets == 3


def test_missing_new_base_blob_is_a_clear_error_and_pushes_no_manifest(world, registry):
    host = registry.host
    broken = ImageRef(host, "bases/broken")
    layers = [make_layer({"etc/os": b"broken"}), make_layer({"x": b"only here"})]
    with new_client(host) as setup:
        push_image(setup, broken, layers, tag="v3")
    # Delete one layer from the repository after the manifest exists.
    resp = httpx.delete(f"http://{host}/v2/bases/broken/blobs/{layers[1].digest}")
    assert resp.status_code == 202
    app, old, _ = _refs(world)
    with new_client(host) as c:
        planned = rebase_image(c, app, old, broken.with_tag("v3"), dry_run=True)
        with pytest.raises(RegistryError) as err:
            rebase_image(c, app, old, broken.with_tag("v3"))
        assert layers[1].digest in str(err.value) and err.value.code == "BLOB_UNKNOWN"
        assert c.stats.manifest_puts == 0
        assert c.head_manifest(ImageRef(host, "apps/a", None, planned.digest)) is None


def test_docker_app_onto_an_oci_base_stays_a_docker_image(world, registry):
    host = registry.host
    bases, apps = ImageRef(host, "bases/d"), ImageRef(host, "apps/d")
    with new_client(host) as c:
        v1 = push_image(c, bases, [make_layer({"d": b"1"})], tag="v1", docker=True)
        v2 = push_image(c, bases, [make_layer({"d": b"2"})], tag="v2")  # OCI
        push_image(c, apps, v1.layers + [make_layer({"app": b"d"})], tag="1", docker=True)
        result = rebase_image(c, apps.with_tag("1"), bases.with_tag("v1"), bases.with_tag("v2"))
        m = manifest_json(c, result.ref)
    assert result.media_type == m["mediaType"] == oci.DOCKER_MANIFEST
    assert {l["mediaType"] for l in m["layers"]} == {oci.DOCKER_LAYER_GZIP}
    assert m["layers"][0]["digest"] == v2.layers[0].digest
    assert any("relabelled" in w for w in result.warnings)


def test_not_a_prefix_is_refused(world, registry):
    app, _, new = _refs(world)
    with new_client(registry.host) as c:
        with pytest.raises(RebaseError, match="not a prefix"):
            rebase_image(c, app, new, new)
        assert c.stats.manifest_puts == 0


def test_client_basics_against_the_real_registry(world, registry):
    host = registry.host
    repo = ImageRef(host, "misc/tags")
    with new_client(host) as c:
        layer = make_layer({"f": b"1"})
        for t in ("a", "b", "c"):
            push_image(c, repo, [layer], tag=t)
        assert sorted(c.list_tags(repo, page_size=1)) == ["a", "b", "c"]  # Link pagination
        digest = c.head_manifest(repo.with_tag("a"))
        m = c.get_manifest(repo.with_tag("a"))
        assert m.digest == digest and m.media_type == oci.OCI_MANIFEST
        assert c.head_manifest(repo.with_tag("nope")) is None
        with pytest.raises(RegistryError) as err:
            c.get_manifest(repo.with_tag("nope"))
        assert err.value.status == 404 and err.value.code == "MANIFEST_UNKNOWN"
        # A manifest referencing a blob the repository lacks is refused by the registry.
        bad = json.loads(m.raw)
        bad["layers"][0]["digest"] = oci.sha256_digest(b"nothing")
        raw = oci.canonical_json(bad)
        with pytest.raises(RegistryError) as err:
            c.put_manifest(repo.with_tag("bad"), raw, oci.OCI_MANIFEST)
        assert err.value.code == "MANIFEST_BLOB_UNKNOWN" and "MANIFEST_BLOB_UNKNOWN" in str(err.value)
        assert c.get_blob(repo, layer.digest, max_bytes=1024) == layer.blob
        with pytest.raises(RegistryError, match="limit"):
            c.get_blob(repo, layer.digest, max_bytes=10)
        with pytest.raises(RegistryError, match="not allowed"):
            c.get_manifest(ImageRef("evil.example", "x", "y"))


def test_blob_from_another_registry_is_streamed_not_mounted(world, registry):
    """The fallback copy (GET stream → PUT into the session) against two real registries."""
    from infra.local.registry_server import RegistryServer

    layer = world["v2"].layers[2]
    with RegistryServer() as other, new_client(registry.host) as c:
        c.plain_http_hosts = c.plain_http_hosts | {other.host}
        c.allowed_hosts = (c.allowed_hosts or frozenset()) | {other.host}
        dest = ImageRef(other.host, "mirror/x")
        assert c.mount_blob(dest, layer.digest, world["bases"]) == "uploaded"
        assert c.mount_blob(dest, layer.digest, world["bases"]) == "exists"
        assert c.get_blob(dest, layer.digest) == layer.blob
        assert c.stats.uploads == 1 and c.stats.bytes_uploaded == len(layer.blob)


# ---------------------------------------------------------------- stage 2: multi-platform


@pytest.fixture(scope="module")
def multi(registry) -> dict[str, Any]:
    host = registry.host
    bases, apps = ImageRef(host, "bases/m"), ImageRef(host, "apps/m")
    with new_client(host) as c:
        out: dict[str, Any] = {}
        for version in ("v1", "v2"):
            kids = [push_image(c, bases, [make_layer({"os": f"{version} {arch}".encode()})], arch=arch,
                               variant="v8" if arch == "arm64" else None)
                    for arch in ("amd64", "arm64")]
            out[version] = kids
            push_index(c, bases, kids, tag=version)
        # v3 lacks arm64.
        push_index(c, bases, [push_image(c, bases, [make_layer({"os": b"v3 amd64"})])], tag="v3-amd64-only")
        app_kids = []
        for base_kid in out["v1"]:
            arch = base_kid.config["architecture"]
            app_kids.append(push_image(c, apps, base_kid.layers + [make_layer({"app": arch.encode()})], arch=arch,
                                       variant=base_kid.config.get("variant")))
        out["app"] = push_index(c, apps, app_kids, tag="1", attestation_for=app_kids[0],
                                annotations={"org.example.keep": "yes"})
        out["app_kids"] = app_kids
    return out


def test_index_rebase_per_platform(multi, registry):
    host = registry.host
    app, old, new = ImageRef(host, "apps/m", "1"), ImageRef(host, "bases/m", "v1"), ImageRef(host, "bases/m", "v2")
    with new_client(host) as c:
        result = rebase_image(c, app, old, new)
        assert result.media_type == oci.OCI_INDEX
        assert result.platforms == ("linux/amd64", "linux/arm64/v8")
        assert any("attestation" in w for w in result.warnings)
        index = manifest_json(c, result.ref)
        assert index["annotations"] == {"org.example.keep": "yes"}
        assert [e["platform"]["architecture"] for e in index["manifests"]] == ["amd64", "arm64"]
        for entry, new_kid, app_kid in zip(index["manifests"], multi["v2"], multi["app_kids"]):
            child = manifest_json(c, result.ref.with_digest(entry["digest"]))
            assert [l["digest"] for l in child["layers"]] == [new_kid.layers[0].digest, app_kid.layers[1].digest]
            assert child["annotations"][oci.ANNOTATION_BASE_DIGEST] == c.head_manifest(new)
        assert c.stats.blob_gets == 6  # 2 platforms x 3 configs, no layer
        again = rebase_image(c, app, old, new)
        assert again.digest == result.digest and not again.pushed
        single = rebase_image(c, app, old, new, platform="linux/arm64", dry_run=True)
        assert single.media_type == oci.OCI_MANIFEST and single.platforms == ("linux/arm64/v8",)


def test_index_missing_platform_is_an_error(multi, registry):
    host = registry.host
    app, old = ImageRef(host, "apps/m", "1"), ImageRef(host, "bases/m", "v1")
    with new_client(host) as c:
        with pytest.raises(RebaseError, match="linux/arm64"):
            rebase_image(c, app, old, ImageRef(host, "bases/m", "v3-amd64-only"))
        assert c.stats.manifest_puts == 0


def test_a_refused_platform_of_a_multi_platform_rebase_is_named(multi, registry):
    host = registry.host
    app, v1, v2 = ImageRef(host, "apps/m", "1"), ImageRef(host, "bases/m", "v1"), ImageRef(host, "bases/m", "v2")
    with new_client(host) as c:
        with pytest.raises(RebaseError) as err:
            rebase_image(c, app, v1, ImageRef(host, "bases/m", "v3-amd64-only"))  # amd64 fine, arm64 refused
        assert str(err.value).startswith("linux/arm64/v8: new base ") and "has no linux/arm64/v8 image" in str(err.value)
        with pytest.raises(RebaseError, match=r"^linux/amd64: old base is not a prefix of the original"):
            rebase_image(c, app, v2, v2)  # both platforms refused: the first one listed is reported
        assert c.stats.manifest_puts == 0


# ---------------------------------------------------------------- client logic over MockTransport

REG = "reg.example"
Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kw: Any) -> tuple[RegistryClient, list[float]]:
    slept: list[float] = []
    kw.setdefault("credentials", StaticCredentials({}))
    # The mock's realm and storage hosts are named, as Google's are built in; they resolve to a public address.
    kw.setdefault("token_hosts", {REG: ["auth.example"]})
    kw.setdefault("storage_hosts", {REG: ["storage.example"]})
    kw.setdefault("resolve", lambda host: ["142.250.1.1"])
    return RegistryClient(transport=httpx.MockTransport(handler), sleep=slept.append, backoff=0.01, **kw), slept


def _manifest_bytes() -> bytes:
    return oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                               "config": oci.descriptor(oci.OCI_CONFIG, b"{}"), "layers": []})


def test_manifest_by_digest_is_verified():
    good = _manifest_bytes()
    tampered = good.replace(b'"layers":[]', b'"layers":[] ')

    def handler(req: httpx.Request) -> httpx.Response:
        assert all(t in req.headers["accept"] for t in oci.ACCEPT_MANIFEST)
        return httpx.Response(200, content=tampered, headers={"Content-Type": oci.OCI_MANIFEST})

    c, _ = mock_client(handler)
    with pytest.raises(RegistryError) as err:
        c.get_manifest(ImageRef(REG, "a", None, oci.sha256_digest(good)))
    assert err.value.code == "DIGEST_INVALID"


def test_manifest_by_tag_checks_docker_content_digest():
    raw = _manifest_bytes()
    c, _ = mock_client(lambda req: httpx.Response(200, content=raw, headers={
        "Content-Type": oci.OCI_MANIFEST, "Docker-Content-Digest": oci.sha256_digest(b"other")}))
    with pytest.raises(RegistryError, match="digest mismatch"):
        c.get_manifest(ImageRef(REG, "a", "t"))


def test_oversized_and_schema1_manifests_are_refused():
    big = b"{" + b" " * 100 + b"}"
    c, _ = mock_client(lambda req: httpx.Response(200, content=big), max_manifest_bytes=50)
    with pytest.raises(RegistryError, match="limit") as err:
        c.get_manifest(ImageRef(REG, "a", "t"))
    assert err.value.code == "SIZE_INVALID"
    s1 = json.dumps({"schemaVersion": 1, "name": "a", "tag": "t", "fsLayers": []}).encode()
    c, _ = mock_client(lambda req: httpx.Response(200, content=s1, headers={"Content-Type": oci.DOCKER_SCHEMA1_SIGNED}))
    with pytest.raises(RegistryError, match="schema1"):
        c.get_manifest(ImageRef(REG, "a", "t"))


def test_mount_refused_with_202_falls_back_to_streamed_upload():
    blob = b"layer bytes" * 100
    digest = oci.sha256_digest(blob)
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, str(req.url)))
        path = req.url.path
        if req.method == "HEAD" and path == f"/v2/dst/blobs/{digest}":
            return httpx.Response(404)
        if req.method == "POST" and path == "/v2/dst/blobs/uploads/":
            assert req.url.params["mount"] == digest and req.url.params["from"] == "src"
            return httpx.Response(202, headers={"Location": "/v2/dst/blobs/uploads/u1?_state=abc"})
        if req.method == "GET" and path == f"/v2/src/blobs/{digest}":
            return httpx.Response(307, headers={"Location": "https://storage.example/blob?sig=1"})
        if req.method == "GET" and req.url.host == "storage.example":
            assert "authorization" not in req.headers
            return httpx.Response(200, content=blob)
        if req.method == "PUT" and path == "/v2/dst/blobs/uploads/u1":
            assert req.url.params["_state"] == "abc" and req.url.params["digest"] == digest
            assert req.read() == blob
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(500)

    c, _ = mock_client(handler, retries=0)
    assert c.mount_blob(ImageRef(REG, "dst"), digest, ImageRef(REG, "src")) == "uploaded"
    assert c.stats.mount_fallbacks == 1 and c.stats.uploads == 1 and c.stats.mounts == 0
    assert c.stats.bytes_uploaded == len(blob) and c.stats.bytes_downloaded == len(blob) and c.stats.blob_gets == 1


def test_mount_is_asked_for_without_a_head_first():
    digest = oci.sha256_digest(b"x")
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.method)
        if req.method == "POST":
            assert req.url.params["mount"] == digest and req.url.params["from"] == "src"
            return httpx.Response(201, headers={"Location": f"/v2/dst/blobs/{digest}"})
        return httpx.Response(500)

    c, _ = mock_client(handler)
    assert c.mount_blob(ImageRef(REG, "dst"), digest, ImageRef(REG, "src")) == "mounted"
    assert c.mount_blob(ImageRef(REG, "dst"), digest, ImageRef(REG, "src")) == "mounted"  # 201 again: idempotent
    assert seen == ["POST", "POST"]
    assert c.stats.mounts == 2 and c.stats.bytes_uploaded == 0 and c.stats.mount_fallbacks == 0


def test_declined_mount_of_a_blob_the_target_holds_copies_nothing():
    """202 (e.g. the source lacks the blob) for a blob the target has: the session is cancelled, no copy."""
    digest = oci.sha256_digest(b"x")
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, req.url.path))
        if req.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/dst/blobs/uploads/u1?_state=s"})
        if req.method == "HEAD" and req.url.path == f"/v2/dst/blobs/{digest}":
            return httpx.Response(200)
        if req.method == "DELETE" and req.url.path == "/v2/dst/blobs/uploads/u1":
            return httpx.Response(204)
        return httpx.Response(500)

    c, _ = mock_client(handler, retries=0)
    assert c.mount_blob(ImageRef(REG, "dst"), digest, ImageRef(REG, "src")) == "exists"
    assert seen == [("POST", "/v2/dst/blobs/uploads/"), ("HEAD", f"/v2/dst/blobs/{digest}"),
                    ("DELETE", "/v2/dst/blobs/uploads/u1")]
    assert c.stats.mounts == 0 and c.stats.mount_fallbacks == 0 and c.stats.blob_gets == 0 and c.stats.uploads == 0


def test_bearer_token_flow_splits_scopes_and_caches():
    tokens: list[httpx.QueryParams] = []
    raw = _manifest_bytes()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            tokens.append(req.url.params)
            assert req.headers["authorization"].startswith("Basic ")
            return httpx.Response(200, json={"token": "T1", "expires_in": 300})
        if req.headers.get("authorization") != "Bearer T1":
            return httpx.Response(401, headers={"WWW-Authenticate":
                'Bearer realm="https://auth.example/token",service="reg.example",'
                'scope="repository:dst:pull,push repository:src:pull"'}, json={"errors": [{"code": "UNAUTHORIZED"}]})
        return httpx.Response(200, content=raw, headers={"Content-Type": oci.OCI_MANIFEST})

    c, _ = mock_client(handler, credentials=StaticCredentials({REG: ("user", "secret")}))
    c.get_manifest(ImageRef(REG, "dst", "t"))
    assert len(tokens) == 1
    assert sorted(tokens[0].get_list("scope")) == ["repository:dst:pull", "repository:dst:pull,push", "repository:src:pull"]
    assert tokens[0]["service"] == "reg.example"
    c.get_manifest(ImageRef(REG, "dst", "t2"))  # cached token for the same scopes: no new token request
    assert len(tokens) == 1


def test_mount_insufficient_scope_asks_for_pull_on_the_source():
    digest = oci.sha256_digest(b"x")
    token_scopes: list[list[str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            token_scopes.append(req.url.params.get_list("scope"))
            return httpx.Response(200, json={"token": f"T{len(token_scopes)}"})
        auth = req.headers.get("authorization")
        if auth is None:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t",service="s"'})
        if auth == "Bearer T2":  # T1 was refused as insufficient: only the re-asked token works
            return httpx.Response(201)
        return httpx.Response(401, headers={"WWW-Authenticate":
            'Bearer realm="https://auth.example/t",service="s",scope="repository:src:pull",error="insufficient_scope"'})

    c, _ = mock_client(handler)
    # The mount is the client's first call: anonymous, then T1 after the challenge, then T2 after insufficient_scope.
    assert c.mount_blob(ImageRef(REG, "dst"), digest, ImageRef(REG, "src")) == "mounted"
    assert len(token_scopes) == 2
    assert "repository:src:pull" in token_scopes[-1] and "repository:dst:pull,push" in token_scopes[-1]
    assert c.stats.mounts == 1 and c.stats.mount_fallbacks == 0


def test_redirects_to_the_metadata_server_are_refused():
    c, _ = mock_client(lambda req: httpx.Response(302, headers={"Location": "http://169.254.169.254/computeMetadata/v1/"}))
    with pytest.raises(RegistryError, match="refused location"):
        c.get_blob(ImageRef(REG, "a"), oci.sha256_digest(b"x"))


def test_basic_challenge_and_no_credentials_in_errors():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.headers.get("authorization", "").startswith("Basic "):
            return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    c, _ = mock_client(handler, credentials=StaticCredentials({REG: ("user", "hunter2")}))
    with pytest.raises(RegistryError) as err:
        c.get_manifest(ImageRef(REG, "a", "t"))
    assert err.value.status == 403 and err.value.code == "DENIED"
    assert "hunter2" not in str(err.value) and "Basic" not in str(err.value)
    assert "hunter2" not in repr(c.credentials)


def test_retries_honour_retry_after_and_are_bounded():
    raw = _manifest_bytes()
    calls = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(429, headers={"Retry-After": "2"})
        return httpx.Response(200, content=raw, headers={"Content-Type": oci.OCI_MANIFEST})

    c, slept = mock_client(handler, retries=4)
    c.get_manifest(ImageRef(REG, "a", "t"))
    assert calls["n"] == 3 and len(slept) == 2 and all(s >= 2 for s in slept)

    c, slept = mock_client(lambda req: httpx.Response(503), retries=2)
    with pytest.raises(RegistryError) as err:
        c.get_manifest(ImageRef(REG, "a", "t"))
    assert err.value.status == 503 and len(slept) == 2

    def broken(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    c, slept = mock_client(broken, retries=1)
    with pytest.raises(RegistryError, match="ConnectError"):
        c.head_manifest(ImageRef(REG, "a", "t"))


def test_host_not_allowed_raises_before_any_request():
    def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    c, _ = mock_client(handler, allowed_hosts=[REG])
    with pytest.raises(RegistryError, match="not allowed"):
        c.head_manifest(ImageRef("169.254.169.254", "a", "t"))


def test_put_blob_keeps_location_query_and_put_manifest_checks_digest():
    data = b'{"a":1}'
    digest = oci.sha256_digest(data)
    raw = _manifest_bytes()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":  # single POST first; this registry does not support it and opens a session
            assert req.url.params["digest"] == digest and req.read() == data
            return httpx.Response(202, headers={"Location": f"https://{REG}/v2/r/blobs/uploads/x?_state=s1"})
        if req.method == "PUT" and "/blobs/" in req.url.path:
            assert req.url.params["_state"] == "s1" and req.url.params["digest"] == digest
            return httpx.Response(201)
        if req.method == "PUT":
            assert req.headers["content-type"] == oci.OCI_MANIFEST
            return httpx.Response(201, headers={"Docker-Content-Digest": oci.sha256_digest(b"different")})
        return httpx.Response(500)

    c, _ = mock_client(handler)
    assert c.put_blob(ImageRef(REG, "r"), data) == digest
    # A small blob goes in the POST (single-POST upload); this registry answered 202, so it went again in the PUT.
    assert c.stats.uploads == 1 and c.stats.bytes_uploaded == 2 * len(data)
    with pytest.raises(RegistryError, match="registry stored"):
        c.put_manifest(ImageRef(REG, "r", "t"), raw, oci.OCI_MANIFEST)


def test_small_blob_goes_in_a_single_post():
    data = b'{"config":1}'
    digest = oci.sha256_digest(data)
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.method)
        if req.method == "POST" and req.url.params.get("digest") == digest:
            assert req.read() == data and req.headers["content-type"] == "application/octet-stream"
            return httpx.Response(201, headers={"Location": f"/v2/r/blobs/{digest}"})
        return httpx.Response(500)

    c, _ = mock_client(handler)
    assert c.put_blob(ImageRef(REG, "r"), data) == digest
    assert seen == ["POST"]  # no HEAD first, no PUT after
    assert c.stats.uploads == 1 and c.stats.bytes_uploaded == len(data)


def test_large_blob_is_skipped_when_present():
    data = b"x" * (SINGLE_POST_MAX + 1)
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.method)
        return httpx.Response(200 if req.method == "HEAD" else 500)

    c, _ = mock_client(handler)
    assert c.put_blob(ImageRef(REG, "r"), data) == oci.sha256_digest(data)
    assert seen == ["HEAD"] and c.stats.uploads == 0 and c.stats.bytes_uploaded == 0


def test_connections_are_reused_after_unread_responses(world, registry):
    """HEADs, a 201 mount and a 202 upload session have no body worth reading; closing them unread would
    drop the connection (httpcore only pools a response read to its end), so each would reconnect."""
    host = registry.host
    connects: list[str] = []

    def trace(name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.complete":
            connects.append(name)

    class Tracing(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            request.extensions["trace"] = trace  # httpcore reports each new connection
            return super().handle_request(request)

    layer = world["v2"].layers[0]
    with RegistryClient(plain_http_hosts=[host], allowed_hosts=[host], transport=Tracing()) as c:
        assert c.blob_exists(world["bases"], layer.digest)
        assert not c.blob_exists(world["bases"], oci.sha256_digest(b"none"))
        assert c.head_manifest(ImageRef(host, "bases/x", "v2")) == world["v2"].digest
        assert c.mount_blob(ImageRef(host, "apps/reuse"), layer.digest, world["bases"]) == "mounted"
        c.put_blob(ImageRef(host, "apps/reuse"), b'{"reuse":1}')  # POST 202, then PUT 201
        assert c.stats.requests == 6
    assert len(connects) == 1


def test_google_token_source_is_lazy_and_scoped_to_google_hosts():
    src = GoogleTokenSource()
    assert src.basic_auth("127.0.0.1:5000") is None and src._creds is None  # nothing loaded for other hosts
    assert GoogleTokenSource.handles("us-docker.pkg.dev") and GoogleTokenSource.handles("eu.gcr.io")
    assert GoogleTokenSource.handles("gcr.io") and not GoogleTokenSource.handles("pkg.dev.evil.example")


def test_parse_challenge():
    ch = parse_challenge('Bearer realm="https://a/token",service="s",scope="repository:x:pull repository:y:pull",error="insufficient_scope"')
    assert ch is not None and ch.realm == "https://a/token" and ch.service == "s"
    assert ch.scopes == ("repository:x:pull", "repository:y:pull") and ch.error == "insufficient_scope"
    assert parse_challenge("Negotiate xyz") is None
