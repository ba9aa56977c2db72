"""Cloud Build notifications (topic `cloud-builds`, docs/GOOGLE_APIS.md#cloud-build) with realistic payloads."""
from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from baseroll.contracts import pubsub
from baseroll.contracts.parsing import EventError
from baseroll.edge import builds, envelope
from baseroll.edge.builds import BuildEvent, BuiltImage
from baseroll.images.refs import ImageRef

BUILD_ID = "3f6d2b7a-1c2e-4d5f-8a9b-0c1d2e3f4a5b"
PROJECT = "platform-builds"
HOST = "us-central1-docker.pkg.dev"
D1 = "sha256:" + "a1" * 32
D2 = "sha256:" + "b2" * 32
IMAGE = f"{HOST}/{PROJECT}/apps/shop"

# Shaped like a real SUCCESS notification: the Build resource in camelCase JSON.
SUCCESS: dict[str, Any] = {
    "id": BUILD_ID,
    "projectId": PROJECT,
    "status": "SUCCESS",
    "source": {"storageSource": {"bucket": f"{PROJECT}_cloudbuild", "object": "source/1700000000.1-abc.tgz"}},
    "steps": [
        {"name": "gcr.io/cloud-builders/docker", "args": ["build", "-t", f"{IMAGE}:v7", "."], "status": "SUCCESS",
         "timing": {"startTime": "2024-05-01T10:00:03Z", "endTime": "2024-05-01T10:01:10Z"}},
    ],
    "results": {
        "images": [
            {"name": f"{IMAGE}:v7", "digest": D1,
             "pushTiming": {"startTime": "2024-05-01T10:01:11Z", "endTime": "2024-05-01T10:01:15Z"}},
            {"name": f"{IMAGE}:latest", "digest": D1,
             "pushTiming": {"startTime": "2024-05-01T10:01:15Z", "endTime": "2024-05-01T10:01:16Z"}},
        ],
        "buildStepImages": ["sha256:" + "c3" * 32],
        "buildStepOutputs": [""],
    },
    "createTime": "2024-05-01T10:00:00.123456Z",
    "startTime": "2024-05-01T10:00:01Z",
    "finishTime": "2024-05-01T10:01:17.5Z",
    "timeout": "600s",
    "images": [f"{IMAGE}:v7", f"{IMAGE}:latest"],
    "logsBucket": f"gs://{PROJECT}_cloudbuild/logs",
    "sourceProvenance": {},
    "buildTriggerId": "0a1b2c3d-0000-4000-8000-000000000001",
    "options": {"logging": "LEGACY", "pool": {}},
    "logUrl": f"https://console.cloud.google.com/cloud-build/builds/{BUILD_ID}?project=123456789012",
    "substitutions": {"_APP_NAME": "shop", "_APP_TAG": "v7", "REPO_NAME": "shop", "COMMIT_SHA": "0" * 40},
    "tags": ["baseroll-app", "trigger-0a1b2c3d"],
    "timing": {"BUILD": {"startTime": "2024-05-01T10:00:03Z", "endTime": "2024-05-01T10:01:10Z"}},
    "queueTtl": "3600s",
    "name": f"projects/123456789012/locations/global/builds/{BUILD_ID}",
}


def build(status: str = "SUCCESS", *, drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SUCCESS)
    body["status"] = status
    for key in drop:
        body.pop(key, None)
    body.update(changes)
    return body


def message(body: Any, attributes: dict[str, str] | None = None) -> pubsub.PubSubMessage:
    """Through the Eventarc envelope, as the function receives it."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    attrs = {"buildId": BUILD_ID, "status": body.get("status", "") if isinstance(body, dict) else ""}
    attrs = attrs if attributes is None else attributes
    env = {"message": {"data": base64.b64encode(data).decode(), "attributes": attrs, "messageId": "9"},
           "subscription": "projects/p/subscriptions/eventarc-cloud-builds"}
    return envelope.pubsub_message(env)


def test_success_with_results_images() -> None:
    ev = builds.parse_build(message(SUCCESS))
    assert ev == BuildEvent(
        build_id=BUILD_ID,
        project_id=PROJECT,
        status="SUCCESS",
        images=(BuiltImage(ImageRef(HOST, f"{PROJECT}/apps/shop", "v7"), D1),
                BuiltImage(ImageRef(HOST, f"{PROJECT}/apps/shop", "latest"), D1)),
        substitutions=SUCCESS["substitutions"],
        tags=("baseroll-app", "trigger-0a1b2c3d"),
        log_url=SUCCESS["logUrl"],
        trigger_id="0a1b2c3d-0000-4000-8000-000000000001",
        finish_time="2024-05-01T10:01:17.5Z",
    )
    assert builds.is_success(ev)
    # Two tags, one image: both entries pin the same digest.
    assert {img.pinned for img in ev.images} == {ImageRef(HOST, f"{PROJECT}/apps/shop", None, D1)}


def test_untagged_image_name_keeps_no_tag() -> None:
    body = build(results={"images": [{"name": IMAGE, "digest": D2}]})
    (img,) = builds.parse_build(message(body)).images
    assert img.name_ref == ImageRef(HOST, f"{PROJECT}/apps/shop") and img.digest == D2


def test_working_without_results() -> None:
    body = build("WORKING", drop=("results", "finishTime"))
    ev = builds.parse_build(message(body))
    assert ev.status == "WORKING" and ev.images == () and ev.finish_time is None
    assert not builds.is_success(ev)


def test_queued_with_minimal_fields_and_status_only_in_attributes() -> None:
    body = {"id": BUILD_ID, "projectId": PROJECT}
    ev = builds.parse_build(message(body, {"buildId": BUILD_ID, "status": "QUEUED"}))
    assert (ev.status, ev.images, ev.substitutions, ev.tags, ev.log_url) == ("QUEUED", (), {}, (), None)


def test_failure_has_no_images_to_act_on() -> None:
    body = build("FAILURE", results={"buildStepImages": ["", ""], "buildStepOutputs": []},
                 failureInfo={"type": "USER_BUILD_STEP", "detail": "Build step failure: step 0 exited 1"})
    ev = builds.parse_build(message(body))
    assert ev.status == "FAILURE" and ev.images == ()
    assert not builds.is_success(ev)


def test_build_id_from_attributes_when_data_lacks_it() -> None:
    ev = builds.parse_build(message(build(drop=("id",))))
    assert ev.build_id == BUILD_ID


def test_unknown_future_status_is_not_malformed() -> None:
    ev = builds.parse_build(message(build("PAUSED")))
    assert ev.status == "PAUSED" and not builds.is_success(ev)


@pytest.mark.parametrize(
    "body, attributes, needle",
    [
        (build("SUCCESS"), {"buildId": BUILD_ID, "status": "FAILURE"},
         "status: 'SUCCESS' in the data disagrees with attributes.status 'FAILURE'"),
        (build(), {"buildId": "other-build", "status": "SUCCESS"}, "id: '3f6d2b7a"),
        (build(drop=("status",)), {"buildId": BUILD_ID}, "status: missing from both"),
        (build(drop=("id",)), {"status": "SUCCESS"}, "id: missing from both"),
        (build("success"), {"buildId": BUILD_ID}, "status: 'success' is malformed"),
        (build(), {"buildId": BUILD_ID, "status": "ok?"}, "attributes.status: 'ok?' is malformed"),
        (build(id=42), {"status": "SUCCESS"}, "id: 42 is malformed"),
        (build(drop=("projectId",)), None, "projectId: None is not a project id"),
        (build(projectId="Not A Project"), None, "projectId: 'Not A Project'"),
        (build(results=[]), None, "results: must be an object, got list"),
        (build(results={"images": {}}), None, "results.images: must be a list"),
        (build(results={"images": ["x"]}), None, "results.images[0]: must be an object"),
        (build(results={"images": [{"name": f"{IMAGE}:v1", "digest": D1}, {"name": "shop:v1", "digest": D1}]}), None,
         "results.images[1].name: 'shop:v1' is not fully qualified"),
        (build(results={"images": [{"name": 5, "digest": D1}]}), None, "results.images[0].name: must be a string"),
        (build(results={"images": [{"name": IMAGE, "digest": "sha256:abc"}]}), None,
         "results.images[0].digest: 'sha256:abc' is not a sha256 digest"),
        (build(results={"images": [{"name": IMAGE, "digest": "SHA256:" + "A" * 64}]}), None,
         "results.images[0].digest"),
        (build(results={"images": [{"name": IMAGE}]}), None, "results.images[0].digest: None"),
        (build(results={"images": [{"name": f"{IMAGE}@{D2}", "digest": D1}]}), None,
         "results.images[0]: name is pinned to"),
        (build(substitutions={"_X": 1}), None, "substitutions: must map strings to strings"),
        (build(tags="baseroll"), None, "tags: must be a list of strings"),
        (build(logUrl=7), None, "logUrl: must be a string"),
        (b"not json", None, "not valid JSON"),
        (b"[" * 5000, None, "not valid JSON"),
        (b'["a list"]', None, "must be a JSON object, got list"),
    ],
)
def test_malformed_builds(body: Any, attributes: dict[str, str] | None, needle: str) -> None:
    with pytest.raises(EventError) as exc:
        builds.parse_build(message(body, attributes if attributes is not None else {"buildId": BUILD_ID}))
    assert needle in str(exc.value)
