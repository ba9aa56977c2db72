"""Artifact Registry version listing: name mapping, paging bounds, errors, laziness; Catalog's use of it.

Pure logic: the Artifact Registry client is a fake with only the two methods the lister calls.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from baseroll.images import oci
from baseroll.images.artifact_registry import (
    ArtifactRegistryError,
    ArtifactRegistryVersions,
    is_artifact_registry,
    package_path,
)
from baseroll.images.catalog import Catalog
from baseroll.images.refs import ImageRef, parse
from baseroll.images.registry import Manifest, RegistryError
from google.api_core import exceptions, retry

HOST = "europe-west1-docker.pkg.dev"
PKG = "projects/proj/locations/europe-west1/repositories/bases/packages/python%2Fslim"
REPO_NAME = "projects/proj/locations/europe-west1/repositories/bases"


def d(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


class FakeAR:
    """``list_versions`` answering from a list, ``per_page`` at most per call."""

    def __init__(self, digests: list[str], per_page: int = 3, error: Exception | None = None) -> None:
        self.digests = digests
        self.per_page = per_page
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def _page(self, request: dict[str, Any]) -> tuple[list[str], str]:
        start = int(request["page_token"] or 0)
        size = min(self.per_page, request["page_size"])
        chunk = self.digests[start:start + size]
        nxt = start + size
        return chunk, (str(nxt) if nxt < len(self.digests) else "")

    def list_versions(self, *, request: dict[str, Any], retry: Any, timeout: float) -> Any:
        self.calls.append({"method": "list_versions", **request, "retry": retry, "timeout": timeout})
        if self.error:
            raise self.error
        chunk, nxt = self._page(request)
        versions = [SimpleNamespace(name=f"{request['parent']}/versions/{x}") for x in chunk]
        return SimpleNamespace(versions=versions, next_page_token=nxt)


# ---------------------------------------------------------------- name mapping


@pytest.mark.parametrize("ref, expected", [
    ("us-docker.pkg.dev/p/r/img", "projects/p/locations/us/repositories/r/packages/img"),
    ("europe-west1-docker.pkg.dev/proj/bases/python/slim",
     "projects/proj/locations/europe-west1/repositories/bases/packages/python%2Fslim"),
    ("asia-northeast1-docker.pkg.dev/p/r/a/b/c:tag",
     "projects/p/locations/asia-northeast1/repositories/r/packages/a%2Fb%2Fc"),
    ("us-central1-docker.pkg.dev/example.com/proj/r/img@sha256:" + "a" * 64,
     "projects/example.com:proj/locations/us-central1/repositories/r/packages/img"),
])
def test_package_name_mapping(ref: str, expected: str) -> None:
    assert package_path(parse(ref)).package_name == expected


def test_package_path_parts_and_repository_name() -> None:
    p = package_path(parse(f"{HOST}/proj/bases/python/slim"))
    assert (p.project, p.location, p.repository, p.image) == ("proj", "europe-west1", "bases", "python/slim")
    assert p.repository_name == REPO_NAME


@pytest.mark.parametrize("ref", ["gcr.io/p/img", "docker.pkg.dev/p/r/img", "us-docker.pkg.dev.evil.com/p/r/img",
                                 "us-docker.pkg.dev/p/r", "us-docker.pkg.dev/example.com/p/r"])
def test_refs_that_are_not_artifact_registry_images(ref: str) -> None:
    with pytest.raises(ValueError):
        package_path(parse(ref))


def test_is_artifact_registry() -> None:
    assert is_artifact_registry(parse("us-docker.pkg.dev/p/r/i"))
    assert not is_artifact_registry(parse("gcr.io/p/i"))
    assert not is_artifact_registry(parse("127.0.0.1:5000/p/r/i"))


# ---------------------------------------------------------------- listing and bounds


def test_lists_all_pages_and_returns_digests_in_order() -> None:
    digests = [d(i) for i in range(7)]
    fake = FakeAR(digests + [digests[0]], per_page=3)  # a duplicate is dropped
    lister = ArtifactRegistryVersions(fake, page_size=3)
    assert lister(parse(f"{HOST}/proj/bases/python/slim:3.12")) == digests
    assert [c["page_token"] for c in fake.calls] == ["", "3", "6"]
    assert {c["parent"] for c in fake.calls} == {PKG}
    assert all(isinstance(c["retry"], retry.Retry) and c["timeout"] == lister.timeout for c in fake.calls)


def test_paging_is_bounded_by_max_pages(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeAR([d(i) for i in range(100)], per_page=5)
    lister = ArtifactRegistryVersions(fake, page_size=5, max_pages=3)
    got = lister.versions(parse(f"{HOST}/proj/bases/python/slim"))
    assert got == [d(i) for i in range(15)]
    assert len(fake.calls) == 3
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert any(l["message"] == "artifact_registry.listing_truncated" and l["pages"] == 3 for l in lines)


def test_paging_is_bounded_by_max_versions() -> None:
    fake = FakeAR([d(i) for i in range(100)], per_page=10)
    lister = ArtifactRegistryVersions(fake, page_size=10, max_pages=50, max_versions=25)
    assert lister.versions(parse(f"{HOST}/proj/bases/python/slim")) == [d(i) for i in range(25)]
    # the last page asks only for what is still allowed
    assert [c["page_size"] for c in fake.calls] == [10, 10, 5]


def test_page_size_is_capped_by_the_api_limit() -> None:
    with pytest.raises(ValueError):
        ArtifactRegistryVersions(FakeAR([]), page_size=1001)


def test_non_digest_version_names_are_skipped() -> None:
    fake = FakeAR([d(1), "latest", "sha256:short", d(2)], per_page=10)
    assert ArtifactRegistryVersions(fake).versions(parse(f"{HOST}/proj/bases/python/slim")) == [d(1), d(2)]


def test_missing_package_has_no_versions() -> None:
    fake = FakeAR([], error=exceptions.NotFound("no such package"))
    assert ArtifactRegistryVersions(fake).versions(parse(f"{HOST}/proj/bases/python/slim")) == []


def test_api_errors_become_registry_errors() -> None:
    fake = FakeAR([], error=exceptions.PermissionDenied("artifactregistry.versions.list denied"))
    with pytest.raises(ArtifactRegistryError) as info:
        ArtifactRegistryVersions(fake).versions(parse(f"{HOST}/proj/bases/python/slim"))
    assert isinstance(info.value, RegistryError) and info.value.status == 403
    assert "PermissionDenied" in str(info.value)


def test_client_is_created_lazily_once() -> None:
    made: list[FakeAR] = []

    def factory() -> FakeAR:
        made.append(FakeAR([d(1)]))
        return made[-1]

    lister = ArtifactRegistryVersions(client_factory=factory)
    assert made == []
    ref = parse(f"{HOST}/proj/bases/python/slim")
    assert lister(ref) == [d(1)] and lister(ref) == [d(1)]
    assert len(made) == 1


def test_import_loads_no_google_client() -> None:
    code = ("import sys; import baseroll.images.artifact_registry, baseroll.images.catalog; "
            "print(any(m.startswith(('google.cloud.artifactregistry', 'google.auth')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "functions")}).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- the real client, over REST to a local stub


@pytest.fixture
def ar_stub() -> Iterator[tuple[int, list[tuple[str, dict[str, list[str]]]]]]:
    """A loopback HTTP stub of ListVersions (two pages) that records each request."""
    seen: list[tuple[str, dict[str, list[str]]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            seen.append((url.path, query))
            parent = unquote(url.path)[len("/v1/"):-len("/versions")]
            first = not query.get("pageToken")
            body = {"versions": [{"name": f"{parent}/versions/{d(1) if first else d(2)}"}]}
            if first:
                body["nextPageToken"] = "page-2"
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, seen
    finally:
        server.shutdown()
        server.server_close()


def test_real_client_request_shape_and_paging(ar_stub) -> None:
    """The installed google-cloud-artifact-registry client accepts our request and its pager our paging."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import artifactregistry_v1

    port, seen = ar_stub

    def factory() -> Any:
        return artifactregistry_v1.ArtifactRegistryClient(
            credentials=AnonymousCredentials(), transport="rest",
            client_options={"api_endpoint": f"http://127.0.0.1:{port}"})

    lister = ArtifactRegistryVersions(client_factory=factory, page_size=7)
    assert lister(parse(f"{HOST}/proj/bases/python/slim:3.12")) == [d(1), d(2)]
    # The resource name (with its literal %2F) is percent-encoded once more in the URL path.
    assert [unquote(path) for path, _ in seen] == [f"/v1/{PKG}/versions"] * 2
    assert [q.get("pageToken") for _, q in seen] == [None, ["page-2"]]
    assert all(q["pageSize"] == ["7"] for _, q in seen)


# ---------------------------------------------------------------- Catalog(version_lister=...)


class FakeRegistry:
    """The RegistryClient methods Catalog calls: tags of the base, manifests by tag or digest, configs."""

    def __init__(self, images: dict[str, list[str]], tags: dict[str, str]) -> None:
        self.manifests: dict[str, Manifest] = {}
        for _, layers in images.items():
            raw = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                                      "config": {"mediaType": oci.OCI_CONFIG, "digest": d(0), "size": 2},
                                      "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": l, "size": 1} for l in layers]})
            m = Manifest(oci.OCI_MANIFEST, oci.sha256_digest(raw), raw, json.loads(raw), len(raw))
            self.manifests[m.digest] = m
        self.by_name = {name: self.digest_of(layers) for name, layers in images.items()}
        self.tags = {tag: self.by_name[name] for tag, name in tags.items()}

    def digest_of(self, layers: list[str]) -> str:
        return next(m.digest for m in self.manifests.values() if [l["digest"] for l in m.data["layers"]] == layers)

    def list_tags(self, repo: ImageRef) -> list[str]:
        return list(self.tags)

    def head_manifest(self, ref: ImageRef) -> str | None:
        return self.tags.get(ref.tag or "")

    def get_manifest(self, ref: ImageRef) -> Manifest:
        assert ref.digest
        return self.manifests[ref.digest]

    def get_blob(self, repo: ImageRef, digest: str, max_bytes: int = 0) -> bytes:  # configs, without labels
        return b'{"config": {}}'


IMAGES = {"v1": [d(11)], "v2": [d(11), d(12)], "v3": [d(13)]}


def _catalog_world() -> tuple[FakeRegistry, list[str]]:
    reg = FakeRegistry(IMAGES, tags={"latest": "v3", "3": "v3"})  # v1 and v2 lost their tags
    return reg, [reg.by_name["v3"], reg.by_name["v2"], reg.by_name["v1"]]


def test_catalog_lists_versions_on_artifact_registry_and_reads_them() -> None:
    reg, listed = _catalog_world()
    seen: list[ImageRef] = []

    def lister(ref: ImageRef) -> list[str]:
        seen.append(ref)
        return listed + ["not-a-digest"]

    track = parse(f"{HOST}/proj/bases/python:latest")
    catalog = Catalog(reg, version_lister=lister)  # type: ignore[arg-type]
    # Listed, not tied: which track each listed version is of is `rollout.lineage`'s to decide.
    assert catalog.listed_versions(track) == listed
    assert seen == [ImageRef(HOST, "proj/bases/python")]
    versions = catalog.versions_of(track, listed)
    assert set(versions) == set(listed) and versions[reg.by_name["v2"]].layers == (d(11), d(12))
    assert catalog.tags_of(track) == {"latest": reg.by_name["v3"], "3": reg.by_name["v3"]}


def test_catalog_without_lister_or_off_artifact_registry_lists_nothing() -> None:
    reg, listed = _catalog_world()
    track = parse(f"{HOST}/proj/bases/python:latest")
    assert Catalog(reg).listed_versions(track) == []  # type: ignore[arg-type]
    called: list[ImageRef] = []
    other = parse("gcr.io/proj/python:latest")
    got = Catalog(reg, version_lister=lambda r: called.append(r) or listed).listed_versions(other)  # type: ignore[arg-type]
    assert got == [] and called == []


def test_catalog_survives_a_failing_lister() -> None:
    reg, _ = _catalog_world()

    def lister(ref: ImageRef) -> list[str]:
        raise ArtifactRegistryError("denied", status=403)

    track = parse(f"{HOST}/proj/bases/python:latest")
    assert Catalog(reg, version_lister=lister).listed_versions(track) == []  # type: ignore[arg-type]
