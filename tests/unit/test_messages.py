import json

import pytest
from baseroll.contracts import messages, requests
from baseroll.contracts.messages import Result, Rollout, Step, Task
from baseroll.contracts.parsing import EventError

D = "sha256:" + "a" * 64
RO = Rollout("python-aaaaaaaaaaaa", "python", "reg.example.com/bases/python:3.12", D, "base",
             {"regions": ["us-central1"]})
SVC = "projects/tenants-prod-a/locations/us-central1/services/tenant-001"


@pytest.mark.parametrize("msg", [
    Task(RO, SVC, 1, ("reg.example.com/apps/a:1",), {"0": f"reg.example.com/apps/a@{D}"}),
    Task(RO, SVC, 0, ("reg.example.com/apps/a:1",), {}, {"0": f"reg.example.com/bases/python@{D}"}),
    Result(RO, SVC, 2, "rolled-back", "HEALTH_CHECK_CONTAINER_ERROR", ("a",), ("a",)),
    Step(RO, 3, 10, 1234.5, 7, 1),
])
def test_round_trip(msg):
    data, attrs = messages.encode(msg)
    assert attrs["kind"] == msg.kind and attrs["rollout_id"] == RO.rollout_id
    assert messages.decode(requests.message(data, attrs)) == msg


@pytest.mark.parametrize("patch, needle", [
    ({"schema": "v0"}, "schema"),
    ({"kind": "nope"}, "kind"),
    ({"targets": {"0": "reg.example.com/apps/a:1"}}, "pinned by digest"),
    ({"targets": {}}, "at least one container"),
    ({"targets": {"5": f"reg.example.com/apps/a@{D}"}}, "beyond the expected"),
    ({"service": "projects/x/services/y"}, "service"),
    ({"rollout": {**RO.__dict__, "base_digest": "sha256:short"}}, "base_digest"),
    ({"rollout": {**RO.__dict__, "rollout_id": "Bad Id"}}, "rollout_id"),
    ({"wave": -1}, "wave"),
])
def test_malformed_tasks_are_refused(patch, needle):
    data, _ = messages.encode(Task(RO, SVC, 1, ("reg.example.com/apps/a:1",), {"0": f"reg.example.com/apps/a@{D}"}))
    doc = {**json.loads(data), **patch}
    with pytest.raises(EventError, match=needle):
        messages.decode(requests.message(json.dumps(doc).encode()))
