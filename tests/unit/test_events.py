import base64
import json

import pytest
from baseroll.contracts.parsing import EventError
from baseroll.contracts.roll import RollRequest
from baseroll.edge import artifact_push as pushes
from baseroll.edge import envelope as envelopes
from baseroll.edge.artifact_push import Ignored
from baseroll.images.refs import ImageRef

D1 = "sha256:" + "1" * 64
HOST = "us-docker.pkg.dev"
TRACK = ImageRef(HOST, "p/bases/python", "3.12")


def envelope(data: bytes | str, **message) -> dict:
    raw = data if isinstance(data, str) else base64.b64encode(data).decode()
    return {"message": {"data": raw, "messageId": "m1", "attributes": {}, **message},
            "subscription": "projects/p/subscriptions/s"}


def push(payload: dict) -> pushes.ArtifactPush:
    return pushes.artifact_push(envelopes.pubsub_message(envelope(json.dumps(payload).encode())))


def test_insert_with_tracked_tag_becomes_roll_request():
    p = push({"action": "INSERT", "digest": f"{HOST}/p/bases/python@{D1}", "tag": f"{HOST}/p/bases/python:3.12"})
    decision = pushes.roll_request_from_push(p, {TRACK}, "m1")
    assert isinstance(decision, RollRequest)
    assert decision.kind == "base" and decision.image == TRACK and decision.digest == D1
    assert decision.source == "artifact-push"


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"action": "DELETE", "tag": f"{HOST}/p/bases/python:3.12"}, "not an INSERT"),
        ({"action": "INSERT", "digest": f"{HOST}/p/bases/python@{D1}"}, "without a tag"),
        ({"action": "INSERT", "digest": f"{HOST}/p/apps/a@{D1}", "tag": f"{HOST}/p/apps/a:v2"}, "not followed"),
        ({"action": "INSERT", "digest": f"{HOST}/p/bases/python@{D1}", "tag": f"{HOST}/p/bases/python:3.13"},
         "not followed"),
    ],
)
def test_other_pushes_are_ignored_with_reason(payload, reason):
    decision = pushes.roll_request_from_push(push(payload), {TRACK}, "m1")
    assert isinstance(decision, Ignored) and reason in decision.reason


@pytest.mark.parametrize(
    "env, needle",
    [
        ([], "JSON object"),
        ({"nomessage": 1}, "no 'message'"),
        ({"message": {"data": 5}}, "base64 string"),
        ({"message": {"data": "***"}}, "base64"),
        ({"message": {"data": "", "attributes": {"a": 1}}}, "attributes"),
        ({"message": {"data": "A" * (400 * 1024)}}, "larger"),
    ],
)
def test_malformed_envelopes(env, needle):
    with pytest.raises(EventError, match=needle):
        envelopes.pubsub_message(env)


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (json.dumps({"action": "UPDATE", "tag": f"{HOST}/a/b:c"}).encode(), "INSERT or DELETE"),
        (json.dumps({"action": "INSERT"}).encode(), "neither"),
        (json.dumps({"action": "INSERT", "tag": "python:3.12"}).encode(), "fully qualified"),
        (json.dumps({"action": "INSERT", "digest": f"{HOST}/a/b:c"}).encode(), "not pinned"),
        (json.dumps({"action": "INSERT", "tag": f"{HOST}/a/b"}).encode(), "has no tag"),
        (json.dumps({"action": "INSERT", "tag": 7}).encode(), "must be a string"),
        (json.dumps({"action": "INSERT", "digest": f"{HOST}/a/x@{D1}", "tag": f"{HOST}/a/y:1"}).encode(),
         "different images"),
    ],
)
def test_malformed_artifact_messages(data, needle):
    with pytest.raises(EventError, match=needle):
        pushes.artifact_push(envelopes.pubsub_message(envelope(data)))
