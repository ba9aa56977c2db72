"""The Cloud Run stand-in, driven by the unmodified `google.cloud.run_v2` REST clients against the real registry."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from infra.local.cloudrun_standin import CloudRunStandin
from infra.local.procs import free_port, stop, wait_http
from infra.local.registry_server import RegistryServer

pytestmark = pytest.mark.integration

PROJECT = "demo-project"
REGION = "us-central1"
OTHER_REGION = "europe-west1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FAST_POLL = polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2, multiplier=1.5)
OP_TIMEOUT = 15.0

State = run_v2.Condition.State
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST


# --- pushing images over the OCI distribution API ---------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(http: httpx.Client, repo: str, data: bytes) -> str:
    digest = _digest(data)
    r = http.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]  # keeps its query (the upload state)
    sep = "&" if "?" in location else "?"
    r = http.put(f"{location}{sep}digest={digest}", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return digest


def _push_manifest(http: httpx.Client, repo: str, ref: str, manifest: dict, media_type: str) -> str:
    body = json.dumps(manifest).encode()
    r = http.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == _digest(body)
    return _digest(body)


def _layer(text: str) -> tuple[bytes, str]:
    """A gzipped tar holding one file; returns (blob, diff_id of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), _digest(tar_bytes)


def _push_single(http: httpx.Client, repo: str, tag: str, *, arch: str, diff_ids_extra: int = 0) -> tuple[str, int]:
    """Push a one-layer image; returns (manifest digest, manifest size)."""
    blob, diff_id = _layer(f"{repo}:{tag}:{arch}")
    layer_digest = _push_blob(http, repo, blob)
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id] + [_digest(b"x%d" % i) for i in range(diff_ids_extra)]},
    }
    config_bytes = json.dumps(config).encode()
    config_digest = _push_blob(http, repo, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(blob)}],
    }
    digest = _push_manifest(http, repo, tag, manifest, OCI_MANIFEST)
    return digest, len(json.dumps(manifest).encode())


def _push_index(http: httpx.Client, repo: str, tag: str, children: dict[str, tuple[str, int]]) -> str:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": n, "platform": {"os": "linux", "architecture": arch}}
            for arch, (d, n) in children.items()
        ],
    }
    return _push_manifest(http, repo, tag, index, OCI_INDEX)


@dataclass(frozen=True)
class Images:
    good: str  # linux/amd64 by digest
    good_tag: str  # the same image by tag
    good_v2: str  # another linux/amd64 image by digest
    arm64: str  # a linux/arm64 image by digest
    index: str  # an OCI index with amd64 and arm64 children, by digest
    arm_only_index: str  # an OCI index without linux/amd64
    bad_diff_ids: str  # config lists more diff_ids than the manifest has layers
    missing: str  # a digest nothing was pushed under


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as reg:
        yield reg


@pytest.fixture(scope="module")
def images(registry: RegistryServer) -> Images:
    host = registry.host
    with httpx.Client(base_url=registry.url, timeout=10.0, trust_env=False) as http:
        good, good_size = _push_single(http, "apps/hello", "v1", arch="amd64")
        good_v2, _ = _push_single(http, "apps/hello", "v2", arch="amd64")
        arm64, arm_size = _push_single(http, "apps/hello", "arm", arch="arm64")
        index = _push_index(http, "apps/hello", "multi", {"amd64": (good, good_size), "arm64": (arm64, arm_size)})
        arm_only = _push_index(http, "apps/hello", "arm-only", {"arm64": (arm64, arm_size)})
        bad, _ = _push_single(http, "apps/hello", "bad", arch="amd64", diff_ids_extra=1)
    return Images(
        good=f"{host}/apps/hello@{good}",
        good_tag=f"{host}/apps/hello:v1",
        good_v2=f"{host}/apps/hello@{good_v2}",
        arm64=f"{host}/apps/hello@{arm64}",
        index=f"{host}/apps/hello@{index}",
        arm_only_index=f"{host}/apps/hello@{arm_only}",
        bad_diff_ids=f"{host}/apps/hello@{bad}",
        missing=f"{host}/apps/hello@sha256:{'0' * 64}",
    )


@pytest.fixture(scope="module")
def standin(registry: RegistryServer) -> Iterator[CloudRunStandin]:
    with CloudRunStandin(registry_host=registry.host, deploy_latency_s=0.05, seed=7) as cr:
        yield cr


def _client(url: str) -> run_v2.ServicesClient:
    return run_v2.ServicesClient(
        credentials=AnonymousCredentials(), transport="rest", client_options=ClientOptions(api_endpoint=url)
    )


@pytest.fixture(scope="module")
def client(standin: CloudRunStandin) -> run_v2.ServicesClient:
    return _client(standin.url)


@pytest.fixture(scope="module")
def revisions(standin: CloudRunStandin) -> run_v2.RevisionsClient:
    return run_v2.RevisionsClient(
        credentials=AnonymousCredentials(), transport="rest", client_options=ClientOptions(api_endpoint=standin.url)
    )


@pytest.fixture(autouse=True)
def _no_faults_left(standin: CloudRunStandin) -> Iterator[None]:
    yield
    standin.clear_faults()


# --- helpers ---------------------------------------------------------------------------------------------


def _parent(region: str = REGION) -> str:
    return f"projects/{PROJECT}/locations/{region}"


def _service(image: str, **kw: object) -> run_v2.Service:
    return run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)]), **kw)


def _create(client: run_v2.ServicesClient, sid: str, image: str, region: str = REGION, **kw: object) -> run_v2.Service:
    op = client.create_service(parent=_parent(region), service_id=sid, service=_service(image, **kw))
    return op.result(timeout=OP_TIMEOUT, polling=FAST_POLL)


def _set_image(client: run_v2.ServicesClient, name: str, image: str):
    """Read-modify-write the way a roller does it: fresh etag, template.revision cleared."""
    svc = client.get_service(name=name)
    svc.template.containers[0].image = image
    svc.template.revision = ""
    return client.update_service(service=svc)


def _short(revision: str) -> str:
    return revision.rsplit("/", 1)[-1]


def _assert_ready(svc: run_v2.Service) -> None:
    assert svc.terminal_condition.state == State.CONDITION_SUCCEEDED, svc.terminal_condition
    assert svc.observed_generation == svc.generation
    assert svc.latest_ready_revision and svc.latest_ready_revision == svc.latest_created_revision
    assert not svc.reconciling


# --- tests -----------------------------------------------------------------------------------------------


def test_create_in_two_regions_fills_server_fields(client: run_v2.ServicesClient, images: Images) -> None:
    a = _create(client, "two-regions", images.good_tag, REGION)
    b = _create(client, "two-regions", images.good, OTHER_REGION)

    for svc, region in ((a, REGION), (b, OTHER_REGION)):
        _assert_ready(svc)
        assert svc.name == f"{_parent(region)}/services/two-regions"
        # The URL the stand-in's loopback proxy serves the service on (common.service_uri), one per region
        assert svc.uid and svc.etag and svc.uri.endswith(f"/s/{PROJECT}/{region}/two-regions") and svc.urls == [svc.uri]
        assert svc.generation == 1
        assert svc.create_time and svc.update_time
        assert re.fullmatch(rf"{svc.name}/revisions/two-regions-00001-[a-z]{{3}}", svc.latest_created_revision)
        assert [(t.type_, t.percent) for t in svc.traffic] == [(LATEST, 100)]
        assert [(t.type_, t.revision, t.percent) for t in svc.traffic_statuses] == [
            (LATEST, _short(svc.latest_ready_revision), 100)
        ]
    assert a.uid != b.uid
    assert client.get_service(name=a.name).etag == a.etag


def test_create_twice_is_already_exists(client: run_v2.ServicesClient, images: Images) -> None:
    _create(client, "twice", images.good)
    with pytest.raises(gexc.Conflict):
        client.create_service(parent=_parent(), service_id="twice", service=_service(images.good))


def test_list_paginates_sorted_per_region(client: run_v2.ServicesClient, images: Images) -> None:
    region = "asia-east1"
    ops = [
        client.create_service(parent=_parent(region), service_id=f"fleet-{i:03d}", service=_service(images.good))
        for i in range(120)
    ]
    pages = list(client.list_services(request=run_v2.ListServicesRequest(parent=_parent(region), page_size=50)).pages)
    assert [len(p.services) for p in pages] == [50, 50, 20]
    names = [s.name for p in pages for s in p.services]
    assert names == sorted(names) == [f"{_parent(region)}/services/fleet-{i:03d}" for i in range(120)]

    first_default = next(iter(client.list_services(parent=_parent(region)).pages))
    assert len(first_default.services) == 100 and first_default.next_page_token

    assert all(s.name.startswith(_parent(OTHER_REGION)) for s in client.list_services(parent=_parent(OTHER_REGION)))
    for op in ops:
        _assert_ready(op.result(timeout=OP_TIMEOUT, polling=FAST_POLL))


def test_update_by_digest_becomes_ready(client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images) -> None:
    sid = "roll-ok"
    svc = _service(images.good_tag)
    svc.template.revision = f"{sid}-initial"
    first = client.create_service(parent=_parent(), service_id=sid, service=svc).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert _short(first.latest_ready_revision) == f"{sid}-initial"

    op = _set_image(client, first.name, images.good_v2)
    assert not op.done()  # a deploy is a long-running operation
    done = op.result(timeout=OP_TIMEOUT, polling=FAST_POLL)

    _assert_ready(done)
    assert done.generation == 2
    assert done.etag != first.etag
    assert done.latest_ready_revision != first.latest_ready_revision
    assert re.fullmatch(rf"{sid}-00002-[a-z]{{3}}", _short(done.latest_ready_revision))
    assert done.template.containers[0].image == images.good_v2
    assert done.traffic_statuses[0].revision == _short(done.latest_ready_revision)
    got = client.get_service(name=first.name)
    assert got.latest_ready_revision == done.latest_ready_revision and got.etag == done.etag

    stats = standin.stats()["services"][first.name]
    assert stats["updates"] == 1 and stats["images"] == [images.good_v2]
    assert stats["revisions_ready"] == 2


def test_index_resolves_to_amd64_child(client: run_v2.ServicesClient, images: Images) -> None:
    _assert_ready(_create(client, "multi-arch", images.index))


@pytest.mark.parametrize(
    ("sid", "attr", "reason"),
    [
        ("arm64-single", "arm64", "REVISION_FAILED"),
        ("arm64-index", "arm_only_index", "REVISION_FAILED"),
        ("bad-diffids", "bad_diff_ids", "REVISION_FAILED"),
        ("missing-digest", "missing", "CONTAINER_MISSING"),
    ],
)
def test_bad_image_fails_and_old_revision_keeps_serving(
    client: run_v2.ServicesClient, images: Images, sid: str, attr: str, reason: str
) -> None:
    before = _create(client, sid, images.good)
    op = _set_image(client, before.name, getattr(images, attr))
    with pytest.raises(gexc.GoogleAPICallError) as err:
        op.result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert isinstance(err.value, gexc.FailedPrecondition)
    assert "is not ready and cannot serve traffic" in err.value.message

    svc = client.get_service(name=before.name)
    tc = svc.terminal_condition
    assert tc.state == State.CONDITION_FAILED
    assert tc.reason.name == reason
    assert tc.message
    assert svc.latest_ready_revision == before.latest_ready_revision
    assert svc.latest_created_revision != before.latest_created_revision
    # A failed reconciliation keeps the last serving generation observed (Service.reconciling's docstring).
    assert (svc.reconciling, svc.generation, svc.observed_generation) == (False, 2, 1)
    assert svc.traffic_statuses[0].revision == _short(before.latest_ready_revision)


def test_template_revision_left_set_is_conflict(client: run_v2.ServicesClient, images: Images) -> None:
    svc = _service(images.good)
    svc.template.revision = "named-rev-v1"
    created = client.create_service(parent=_parent(), service_id="named-rev", service=svc).result(
        timeout=OP_TIMEOUT, polling=FAST_POLL
    )
    current = client.get_service(name=created.name)
    current.template.containers[0].image = images.good_v2  # forgot to clear template.revision
    with pytest.raises(gexc.Conflict) as err:
        client.update_service(service=current)
    assert "different configuration already exists" in err.value.message


def test_stale_etag_is_rejected(client: run_v2.ServicesClient, images: Images) -> None:
    created = _create(client, "stale-etag", images.good)
    stale = client.get_service(name=created.name)
    _set_image(client, created.name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)

    stale.template.containers[0].image = images.good
    with pytest.raises((gexc.Conflict, gexc.Aborted)) as err:
        client.update_service(service=stale)
    assert err.value.code == 409
    assert client.get_service(name=created.name).template.containers[0].image == images.good_v2


def test_injected_fault_fails_next_revision_only(
    client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images
) -> None:
    created = _create(client, "faulty", images.good)
    r = httpx.post(
        f"{standin.url}/_standin/faults",
        json={"service": created.name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1},
        timeout=5,
    )
    assert r.status_code == 200, r.text

    with pytest.raises(gexc.FailedPrecondition):
        _set_image(client, created.name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    failed = client.get_service(name=created.name)
    assert failed.terminal_condition.state == State.CONDITION_FAILED
    assert failed.terminal_condition.revision_reason.name == "HEALTH_CHECK_CONTAINER_ERROR"
    assert failed.latest_ready_revision == created.latest_ready_revision

    _assert_ready(_set_image(client, created.name, images.good).result(timeout=OP_TIMEOUT, polling=FAST_POLL))


def test_a_new_service_whose_first_revision_fails_has_no_ready_revision(
    client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images
) -> None:
    # A failed reconcile keeps the last serving revision's fields, "empty for a new service", and
    # puts the cause in terminal_condition (docs/GOOGLE_APIS.md#cloud-run); an update can still fix it.
    name = f"{_parent()}/services/first-fails"
    standin.inject_fault({"service": name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    with pytest.raises(gexc.FailedPrecondition):
        _create(client, "first-fails", images.good)
    failed = client.get_service(name=name)
    assert failed.terminal_condition.state == State.CONDITION_FAILED
    assert failed.terminal_condition.revision_reason.name == "HEALTH_CHECK_CONTAINER_ERROR"
    assert failed.latest_created_revision and not failed.latest_ready_revision
    assert not failed.traffic_statuses or not failed.traffic_statuses[0].revision
    assert not failed.reconciling

    fixed = _set_image(client, name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    _assert_ready(fixed)
    assert fixed.latest_created_revision != failed.latest_created_revision


@pytest.mark.parametrize(
    "where", ["labels", "annotations", "template.labels", "template.annotations"]
)
def test_reserved_label_prefixes_are_rejected(client: run_v2.ServicesClient, images: Images, where: str) -> None:
    created = _create(client, f"reserved-{where.replace('.', '-')}", images.good)
    svc = client.get_service(name=created.name)
    target = svc.template if where.startswith("template.") else svc
    getattr(target, where.split(".")[-1])["run.googleapis.com/launch-stage"] = "BETA"
    with pytest.raises(gexc.BadRequest) as err:
        client.update_service(service=svc)
    assert "run.googleapis.com" in err.value.message
    assert client.get_service(name=created.name).generation == 1


def test_update_mask_validate_only_and_allow_missing(client: run_v2.ServicesClient, images: Images) -> None:
    created = _create(client, "masked", images.good)

    svc = client.get_service(name=created.name)
    svc.labels["team"] = "infra"
    svc.template.containers[0].image = images.good_v2  # not in the mask: must be ignored
    done = client.update_service(
        request=run_v2.UpdateServiceRequest(service=svc, update_mask={"paths": ["labels"]})
    ).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert done.labels["team"] == "infra"
    assert done.template.containers[0].image == images.good
    assert done.latest_created_revision == created.latest_created_revision  # no template change, no revision
    assert done.generation == 2

    svc = client.get_service(name=created.name)
    svc.template.containers[0].image = images.good_v2
    preview = client.update_service(request=run_v2.UpdateServiceRequest(service=svc, validate_only=True)).result(
        timeout=OP_TIMEOUT, polling=FAST_POLL
    )
    assert preview.template.containers[0].image == images.good_v2
    assert client.get_service(name=created.name).template.containers[0].image == images.good

    missing = _service(images.good, name=f"{_parent()}/services/upserted")
    with pytest.raises(gexc.NotFound):
        client.update_service(service=missing)
    _assert_ready(
        client.update_service(request=run_v2.UpdateServiceRequest(service=missing, allow_missing=True)).result(
            timeout=OP_TIMEOUT, polling=FAST_POLL
        )
    )


def test_get_and_delete(client: run_v2.ServicesClient, images: Images) -> None:
    with pytest.raises(gexc.NotFound):
        client.get_service(name=f"{_parent()}/services/nope")
    created = _create(client, "doomed", images.good)
    client.delete_service(name=created.name).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    with pytest.raises(gexc.NotFound):
        client.get_service(name=created.name)


def test_bad_input_is_invalid_argument(client: run_v2.ServicesClient, images: Images) -> None:
    with pytest.raises(gexc.BadRequest):
        client.create_service(parent=_parent(), service_id="Bad_Id", service=_service(images.good))
    with pytest.raises(gexc.BadRequest) as err:
        client.create_service(parent=_parent(), service_id="no-image", service=run_v2.Service(template={"containers": [{}]}))
    assert "image" in err.value.message


def test_revisions_list_and_get(
    client: run_v2.ServicesClient, revisions: run_v2.RevisionsClient, images: Images
) -> None:
    created = _create(client, "with-revs", images.good)
    for image in (images.good_v2, images.missing):
        try:
            _set_image(client, created.name, image).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
        except gexc.FailedPrecondition:
            pass
    revs = list(revisions.list_revisions(request=run_v2.ListRevisionsRequest(parent=created.name, page_size=2)))
    assert len(revs) == 3
    assert [r.create_time for r in revs] == sorted((r.create_time for r in revs), reverse=True)  # newest first
    newest, middle, oldest = revs
    assert newest.conditions[0].reason.name == "CONTAINER_MISSING"
    assert middle.conditions[0].state == State.CONDITION_SUCCEEDED
    assert oldest.name == created.latest_created_revision
    assert middle.containers[0].image == images.good_v2
    got = revisions.get_revision(name=middle.name)
    assert got.name == middle.name and got.service == "with-revs"
    with pytest.raises(gexc.NotFound):
        revisions.get_revision(name=f"{created.name}/revisions/with-revs-99999-zzz")


def test_http_faults(client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images) -> None:
    created = _create(client, "http-faults", images.good)
    standin.inject_fault({"http": {"status": 503, "methods": ["PATCH"], "times": 1}})
    with pytest.raises(gexc.ServiceUnavailable):
        _set_image(client, created.name, images.good_v2)
    standin.inject_fault({"http": {"status": 429, "probability": 1.0, "methods": ["PATCH"], "seed": 3, "times": 1}})
    throttled = standin.stats()["throttled"]
    with pytest.raises(gexc.TooManyRequests):
        _set_image(client, created.name, images.good_v2)
    assert standin.stats()["throttled"] == throttled + 1
    _assert_ready(_set_image(client, created.name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL))


def test_write_quota_per_project_and_region(registry: RegistryServer, images: Images) -> None:
    with CloudRunStandin(registry_host=registry.host, write_quota_per_min=3) as cr:
        client = _client(cr.url)
        for i in range(3):
            client.create_service(parent=_parent(), service_id=f"q-{i}", service=_service(images.good))
        with pytest.raises(gexc.TooManyRequests) as err:
            client.create_service(parent=_parent(), service_id="q-3", service=_service(images.good))
        assert err.value.reason == "RATE_LIMIT_EXCEEDED"  # google.rpc.ErrorInfo detail, as Google sends it
        assert "Quota exceeded" in err.value.message
        # Another region has its own bucket; reads are never throttled.
        client.create_service(parent=_parent(OTHER_REGION), service_id="q-0", service=_service(images.good))
        assert len(list(client.list_services(parent=_parent()))) == 3
        assert cr.stats()["throttled"] == 1

        r = httpx.post(f"{cr.url}/_standin/quota", json={"write_quota_per_min": None}, timeout=5)
        assert r.status_code == 200
        client.create_service(parent=_parent(), service_id="q-3", service=_service(images.good))


def test_stats_over_http_match_and_reset(client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images) -> None:
    standin.reset_stats()
    created = _create(client, "counted", images.good)
    _set_image(client, created.name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    stats = httpx.get(f"{standin.url}/_standin/stats", timeout=5).json()
    assert stats == standin.stats()  # admin calls are not counted as API requests
    assert stats["requests"]["PATCH"] >= 1 and stats["requests"]["POST"] >= 1 and stats["requests"]["GET"] >= 2
    assert stats["calls"]["update_service"] == 1 and stats["calls"]["get_service"] == 1
    assert stats["services"][created.name]["updates"] == 1
    assert httpx.post(f"{standin.url}/_standin/faults", json={"reason": "NOPE"}, timeout=5).status_code == 400
    assert httpx.post(f"{standin.url}/_standin/reset-stats", timeout=5).status_code == 200
    assert standin.stats() == {"services": {}, "throttled": 0, "requests": {}, "calls": {}, "responses": {}}


def test_cli_runs_as_its_own_process(registry: RegistryServer, tmp_path: Path) -> None:
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    log = open(tmp_path / "standin.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.local.cloudrun_standin", "--port", str(port), "--registry-host", registry.host],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_standin/healthz", proc=proc, timeout=20)
        client = _client(f"http://127.0.0.1:{port}")
        assert list(client.list_services(parent=_parent())) == []
    finally:
        stop(proc)
        log.close()
    assert proc.returncode == 0, (tmp_path / "standin.log").read_text()
