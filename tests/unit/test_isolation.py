"""Failure isolation: one bad image, service or track fails alone, with its reason; every entry point
decides each failure through `edge.classify` (acknowledged with `event.rejected`/`task.failed`, or
raised for a redelivery). Over the in-memory fakes; the wire version is
tests/integration/test_deliveries.py."""
from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
from baseroll.contracts import ledger, messages, requests, topics
from baseroll.contracts.messages import Result, Rollout, Step, Task
from baseroll.contracts.records import RolloutRecord
from baseroll.edge import handlers
from baseroll.fleet.view import ServiceView
from baseroll.images import match, oci
from baseroll.images.match import BaseVersion, ImageFacts
from baseroll.images.refs import parse
from baseroll.images.registry import RegistryError
from baseroll.rollout import fakes, pipeline, planner
from baseroll.rollout.fakes import REGISTRY, FakeWorld, layer
from baseroll.rollout.plan import RebaseJob
from google.api_core import exceptions as gexc

TRACK = f"{REGISTRY}/bases/python:3.12"
OTHER_TRACK = f"{REGISTRY}/bases/node:22"
SVC = "projects/tenants-aaaaa/locations/us-east1/services/{}"
D = "sha256:" + "d" * 64
BIG = b"9" * 5000


# ------------------------------------------------------------------------------------------ validators


def _index(child: dict[str, Any], **top: Any) -> bytes:
    base = {"mediaType": oci.OCI_MANIFEST, "digest": D, "size": 10,
            "platform": {"os": "linux", "architecture": "amd64"}}
    return json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [{**base, **child}], **top}).encode()


def _manifest(**fields: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": D, "size": 2}, "layers": [], **fields}


@pytest.mark.parametrize("raw", [
    _index({"annotations": "attestation-manifest"}),  # annotations a string
    _index({"annotations": {oci.ANNOTATION_REFERENCE_TYPE: 5}}),
    _index({"mediaType": [oci.DOCKER_SCHEMA1]}),  # a list: unhashable in SCHEMA1_TYPES
    _index({"platform": {"os": ["linux"], "architecture": "amd64"}}),
    _index({"platform": "linux/amd64"}),
    json.dumps(_manifest(mediaType=[oci.OCI_MANIFEST])).encode(),
    json.dumps(_manifest(mediaType={"a": 1})).encode(),
    json.dumps(_manifest(layers="none")).encode(),
    b'{"schemaVersion": 2, "mediaType": "' + oci.OCI_MANIFEST.encode() + b'", "size": ' + BIG + b"}",
    b'{"schemaVersion": ' + BIG + b"}",
    b'{"schemaVersion": 2, "x": 1e999}',
    b'{"schemaVersion": 2, "x": NaN}',
    json.dumps(_manifest(config={"mediaType": oci.OCI_CONFIG, "digest": D, "size": 2**70})).encode(),
], ids=["annotations-str", "annotation-int", "child-mediatype-list", "platform-os-list", "platform-str",
        "mediatype-list", "mediatype-object", "layers-str", "huge-size", "huge-schema-version", "float-inf", "nan",
        "size-over-int64"])
def test_wrong_typed_manifest_fields_raise_ocierror_only(raw: bytes) -> None:
    with pytest.raises(oci.OCIError):
        oci.parse_manifest_or_index(raw)


@pytest.mark.parametrize("raw", [
    b'{"rootfs": {"diff_ids": []}, "created": ' + BIG + b"}",
    b'{"rootfs": {"diff_ids": [5]}}',
    b'{"rootfs": "layers"}',
    b'{"rootfs": {"diff_ids": []}, "history": "x"}',
    b'{"rootfs": {"diff_ids": []}, "config": []}',
    b'{"rootfs": {"diff_ids": []}, "architecture": 64}',
])
def test_wrong_typed_config_fields_raise_ocierror_only(raw: bytes) -> None:
    with pytest.raises(oci.OCIError):
        oci.parse_config(raw)


@pytest.mark.parametrize("desc", [
    {"annotations": "attestation-manifest"}, {"annotations": ["x"]}, {"platform": "unknown/unknown"},
    {"platform": ["unknown"]}, "not a descriptor", 5, None,
])
def test_is_attestation_reads_only_well_typed_fields(desc: Any) -> None:
    assert oci.is_attestation(desc) is False


def test_select_platform_passes_over_children_that_are_not_objects() -> None:
    good = {"digest": D, "platform": {"os": "linux", "architecture": "amd64"}}
    assert oci.select_platform({"manifests": ["x", 5, {"annotations": "s"}, good]}, oci.Platform("linux", "amd64")) == good
    assert oci.select_platform({"manifests": "x"}, oci.Platform("linux", "amd64")) is None


@pytest.mark.parametrize("annotations", [
    {oci.ANNOTATION_BASE_NAME: TRACK, oci.ANNOTATION_BASE_DIGEST: 5},
    {oci.ANNOTATION_BASE_NAME: 5, oci.ANNOTATION_BASE_DIGEST: D},
    {oci.ANNOTATION_BASE_NAME: [TRACK], oci.ANNOTATION_BASE_DIGEST: [D]},
])
def test_a_wrong_typed_base_annotation_is_skipped_and_the_layers_decide(annotations: dict) -> None:
    app = ImageFacts(parse(f"{REGISTRY}/apps/a@{D}"), (layer("debian"), layer("py1"), layer("app")), annotations)
    old = BaseVersion("sha256:" + "1" * 64, (layer("debian"), layer("py1")))
    new = BaseVersion("sha256:" + "2" * 64, (layer("debian"), layer("py2")))
    result = match.match_image(app, parse(TRACK), new, [old, new])
    assert (result.verdict, result.how) == ("outdated", "layer-prefix")


# ------------------------------------------------------------------------------------------ per image, per track


def test_whatever_one_rebase_throws_fails_that_image_only(capsys: pytest.CaptureFixture) -> None:
    jobs = [RebaseJob(parse(f"{REGISTRY}/apps/{n}@{D}"), parse(f"{TRACK}@{D}")) for n in ("bad", "good", "worse")]
    new = parse(f"{TRACK}@sha256:" + "2" * 64)

    def rebase(job: RebaseJob, new_base: Any, dry_run: bool) -> Any:
        if "bad" in job.app.repository:
            raise TypeError("unhashable type: 'list'")
        if "worse" in job.app.repository:
            raise AttributeError("'str' object has no attribute 'get'")
        return job.app.with_digest("sha256:" + "3" * 64)

    out = pipeline.rebase_jobs_for(jobs, new, rebase)
    assert out[jobs[0]] == "TypeError: unhashable type: 'list'"
    assert out[jobs[2]].startswith("AttributeError")
    assert out[jobs[1]] == jobs[1].app.with_digest("sha256:" + "3" * 64)
    assert capsys.readouterr().out.count('"image.rebase_failed"') == 2


def test_a_waves_rebases_run_at_once() -> None:
    """Each rebase waits for the other two at a barrier: rebased one after another, the first would
    wait out the barrier's timeout and fail its image."""
    jobs = [RebaseJob(parse(f"{REGISTRY}/apps/{n}@{D}"), parse(f"{TRACK}@{D}")) for n in ("a", "b", "c")]
    new = parse(f"{TRACK}@sha256:" + "2" * 64)
    meet = threading.Barrier(3, timeout=5)

    def rebase(job: RebaseJob, new_base: Any, dry_run: bool) -> Any:
        meet.wait()
        return job.app.with_digest("sha256:" + "3" * 64)

    out = pipeline.rebase_jobs_for(jobs, new, rebase)
    assert list(out) == jobs and all(not isinstance(r, str) for r in out.values()), out


def _world(*tracks: tuple[str, str]) -> FakeWorld:
    return FakeWorld(fakes.config(tracks=tracks or (("python", TRACK),)))


def test_a_sweep_goes_on_past_a_track_that_fails(capsys: pytest.CaptureFixture) -> None:
    """The first track's tag is gone (MANIFEST_UNKNOWN), the second's listing crashes; the third still starts."""
    w = _world(("gone", f"{REGISTRY}/bases/gone:1"), ("node", OTHER_TRACK), ("python", TRACK))
    w.registry.push(OTHER_TRACK, [layer("debian"), layer("node")])
    base = w.registry.push(TRACK, [layer("debian"), layer("py2")])
    old = w.registry.push(f"{REGISTRY}/bases/python:3.12.0", [layer("debian"), layer("py1")])
    app = w.registry.push(f"{REGISTRY}/apps/shop:v1", [*[layer("debian"), layer("py1")], layer("shop")])
    assert old and base
    w.fleet.add(ServiceView(SVC.format("shop"), (str(app),)))
    real_list_tags = w.registry.list_tags

    def list_tags(repo: Any, **kw: Any) -> list[str]:
        if "node" in repo.repository:
            raise KeyError("a bug in one track's listing")
        return real_list_tags(repo, **kw)

    w.registry.list_tags = list_tags  # type: ignore[method-assign]
    out = planner.sweep(w.deps)
    by_track = {r.get("track") or r["rollout_id"].split("-")[0]: r for r in out["rollouts"]}
    assert by_track["gone"]["status"] == "failed" and "does not exist" in by_track["gone"]["reason"]
    assert by_track["node"]["status"] == "failed" and by_track["node"]["reason"].startswith("KeyError")
    assert by_track["python"]["status"] != "failed" and by_track["python"]["rollout_id"].startswith("python-")
    assert capsys.readouterr().out.count('"sweep.track_failed"') == 2


# ------------------------------------------------------------------------------------------ the entry points


def _envelope(data: bytes, attributes: dict[str, str] | None = None) -> dict[str, Any]:
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes or {}, "messageId": "m-1"},
            "subscription": "projects/p/subscriptions/s"}


def _request(**fields: Any) -> dict[str, Any]:
    return _envelope(requests.to_message(**fields))


def _logged(capsys: pytest.CaptureFixture, message: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [r for r in lines if r.get("message") == message]


def test_a_roll_request_for_an_app_outside_the_allow_list_is_refused_before_any_read(capsys) -> None:
    w = _world()
    out = handlers.on_roll_request(_request(app=f"evil.example.com/apps/a@{D}"), "e-1", lambda: w.deps)
    assert out["status"] == "rejected" and out["kind"] == "refused"
    assert "evil.example.com" in out["reason"] and "not allow-listed" in out["reason"]
    assert sum(w.registry.calls.values()) == 0
    assert _logged(capsys, "event.rejected")[0]["kind"] == "refused"


@pytest.mark.parametrize("fields", [
    {"app": f"{REGISTRY}/apps/gone@{D}"},  # an app digest that no longer exists
    {"base": TRACK},  # a tracked tag that no longer exists
], ids=["app-digest-gone", "tracked-tag-gone"])
def test_a_roll_request_for_an_image_that_is_gone_is_acknowledged(fields: dict, capsys) -> None:
    w = _world()
    out = handlers.on_roll_request(_request(**fields), "e-1", lambda: w.deps)
    assert (out["status"], out["kind"]) == ("rejected", "registry-refused")
    assert "does not exist" in out["reason"] and not w.records.records
    assert _logged(capsys, "event.rejected")


def test_a_registry_that_is_down_is_raised_for_a_redelivery(capsys) -> None:
    w = _world()

    def unavailable(ref: Any) -> str | None:
        raise RegistryError("HEAD: 503 Service Unavailable", 503, "UNAVAILABLE")

    w.registry.head_manifest = unavailable  # type: ignore[method-assign]
    with pytest.raises(RegistryError):
        handlers.on_roll_request(_request(app=f"{REGISTRY}/apps/a@{D}"), "e-1", lambda: w.deps)
    assert _logged(capsys, "event.retried")[0]["kind"] == "registry-unavailable"


def test_a_build_whose_one_image_is_gone_still_starts_the_others(capsys) -> None:
    w = _world()
    app = w.registry.push(f"{REGISTRY}/apps/shop:v2", [layer("debian"), layer("shop2")])
    body = {"id": "b-1", "projectId": "builds-prj", "status": "SUCCESS", "results": {"images": [
        {"name": f"{REGISTRY}/apps/gone:v1", "digest": D}, {"name": f"{REGISTRY}/apps/shop:v2", "digest": app.digest}]}}
    out = handlers.on_build_complete(_envelope(json.dumps(body).encode(), {"buildId": "b-1", "status": "SUCCESS"}),
                                     "e-1", lambda: w.deps)
    statuses = [r["status"] for r in out["rollouts"]]
    assert statuses[0] == "rejected" and statuses[1] != "rejected"
    assert _logged(capsys, "event.rejected")[0]["image"] == f"{REGISTRY}/apps/gone:v1"


def _task_world(track: str = TRACK) -> tuple[FakeWorld, Task]:
    w = _world()
    base = w.registry.push(TRACK, [layer("debian"), layer("py2")])
    assert base.digest
    ro = Rollout(ledger.rollout_id("python", base.digest), "python", track, base.digest)
    old, new = f"{REGISTRY}/apps/shop@sha256:" + "1" * 64, f"{REGISTRY}/apps/shop@sha256:" + "2" * 64
    return w, Task(ro, SVC.format("shop"), 0, (old,), {"0": new})


def _task_envelope(task: Task) -> dict[str, Any]:
    return _envelope(*messages.encode(task))


def test_a_task_for_a_service_deleted_after_planning_fails_once_with_its_reason(capsys) -> None:
    w, task = _task_world()  # the service is not in the fleet: deleted since the plan
    out = handlers.roll_service(_task_envelope(task), "e-1", lambda: w.deps)
    assert (out["status"], out["kind"]) == ("failed", "cloud-run-refused") and "not found" in out["reason"]
    results = w.bus.messages(topics.RESULTS)
    assert len(results) == 1
    result = results[0]
    assert isinstance(result, Result) and result.outcome == "failed" and "not found" in result.reason
    assert _logged(capsys, "task.failed")[0]["service"] == task.service


def test_a_task_whose_track_image_is_not_allow_listed_is_refused_before_any_read(capsys) -> None:
    w, task = _task_world(track="evil.example.com/bases/python:3.12")
    w.fleet.add(ServiceView(task.service, task.expected))
    out = handlers.roll_service(_task_envelope(task), "e-1", lambda: w.deps)
    assert (out["status"], out["kind"]) == ("failed", "refused")
    assert sum(w.registry.calls.values()) == 0 and w.fleet.get_service(task.service).images == task.expected
    assert _logged(capsys, "task.failed")


def test_a_cloud_run_permission_error_fails_the_task_and_a_timeout_is_redelivered() -> None:
    w, task = _task_world()
    w.fleet.add(ServiceView(task.service, task.expected))
    for exc, permanent in ((gexc.PermissionDenied("run.services.get"), True), (gexc.ServiceUnavailable("x"), False)):
        def get_service(name: str, exc: Exception = exc) -> ServiceView:
            raise exc

        w.fleet.get_service = get_service  # type: ignore[method-assign]
        if permanent:
            assert handlers.roll_service(_task_envelope(task), "e-1", lambda: w.deps)["status"] == "failed"
        else:
            with pytest.raises(gexc.ServiceUnavailable):
                handlers.roll_service(_task_envelope(task), "e-1", lambda: w.deps)


def _step_world() -> tuple[FakeWorld, Step]:
    w = _world()
    base = w.registry.push(TRACK, [layer("debian"), layer("py2")])
    assert base.digest
    ro = Rollout(ledger.rollout_id("python", base.digest), "python", TRACK, base.digest)
    w.records.create(RolloutRecord(ro.rollout_id, "python", base.digest, TRACK))
    return w, Step(ro, wave=0, cursor=0, seq=1)


def test_a_step_on_a_corrupt_record_is_acknowledged(capsys) -> None:
    w, step = _step_world()
    w.records.records[step.rollout.rollout_id].status = 5  # type: ignore[assignment]
    out = handlers.on_roll_result(_envelope(*messages.encode(step)), "e-1", lambda: w.deps)
    assert (out["status"], out["kind"]) == ("rejected", "corrupt-record") and "status is a int" in out["reason"]
    assert _logged(capsys, "rollout.unrecorded")


def test_a_step_that_fails_for_good_halts_its_rollout_with_the_reason() -> None:
    w, step = _step_world()

    def list_services(project: str, region: str) -> Any:
        raise gexc.PermissionDenied("run.services.list denied")

    w.fleet.list_services = list_services  # type: ignore[method-assign]
    out = handlers.on_roll_result(_envelope(*messages.encode(step)), "e-1", lambda: w.deps)
    assert out["kind"] == "cloud-run-refused"
    rec = w.records.get(step.rollout.rollout_id)
    assert rec is not None and rec.status == "halted" and "run.services.list denied" in rec.reason
