"""The Cloud Run fleet adapter (`CloudRunFleet`) over the unmodified run_v2 client and the stand-in, on
both transports (gRPC, the default, and REST): how many calls an update costs, and that staleness is caught by the read just before the write
(whether Cloud Run enforces the etag on update is not documented: docs/GOOGLE_APIS.md)."""
from __future__ import annotations

from typing import Iterator

import pytest
from baseroll.fleet import health
from baseroll.fleet.cloudrun import CloudRunFleet
from baseroll.fleet.view import StaleService

from infra.local.cloudrun_standin import CloudRunStandin
from tests.integration.test_cloudrun_standin import (  # noqa: F401  (module-scoped fixtures)
    FAST_POLL,
    OP_TIMEOUT,
    Images,
    _create,
    _set_image,
    images,
    registry,
    standin,
)

ANN = {"baseroll.dev/rollout-id": "py-test"}


@pytest.fixture(params=["grpc", "rest"])
def fleet(request: pytest.FixtureRequest, standin: CloudRunStandin) -> Iterator[CloudRunFleet]:  # noqa: F811
    url = standin.grpc_url if request.param == "grpc" else standin.url
    fleet = CloudRunFleet.connect(url, request.param)
    yield fleet
    fleet._client.transport.close()


def test_an_update_reads_the_service_just_before_it_writes(
    fleet: CloudRunFleet, standin: CloudRunStandin, images: Images,  # noqa: F811
) -> None:
    name = _create(fleet._client, f"adapter-once-{fleet._client.transport.kind}", images.good).name
    standin.reset_stats()
    current = fleet.get_service(name)
    after = fleet.update_images(current, {0: images.good_v2}, annotations=ANN, timeout=OP_TIMEOUT)

    calls = standin.stats()["calls"]
    # The caller's read, the adapter's read just before the write, one write, operation polls; the
    # finished operation carries the service.
    assert calls.get("get_service") == 2 and calls.get("update_service") == 1
    assert calls.get("get_operation", 0) >= 1
    assert after.images == (images.good_v2,) and after.annotations["baseroll.dev/rollout-id"] == "py-test"
    assert health.assess(after).state == "ready"
    assert after.etag == fleet._client.get_service(name=name).etag


def test_update_of_a_stale_view_is_refused_and_changes_nothing(
    fleet: CloudRunFleet, standin: CloudRunStandin, images: Images,  # noqa: F811
) -> None:
    name = _create(fleet._client, f"adapter-stale-{fleet._client.transport.kind}", images.good).name
    current = fleet.get_service(name)
    _set_image(fleet._client, name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)  # someone else
    standin.reset_stats()
    with pytest.raises(StaleService):
        fleet.update_images(current, {0: images.good}, annotations=ANN, timeout=OP_TIMEOUT)
    now = fleet._client.get_service(name=name)
    assert now.template.containers[0].image == images.good_v2 and "baseroll.dev/rollout-id" not in now.annotations
    assert standin.stats()["services"].get(name, {}).get("updates", 0) == 0


def test_a_failed_revision_is_returned_as_the_service_now_is(
    fleet: CloudRunFleet, standin: CloudRunStandin, images: Images,  # noqa: F811
) -> None:
    name = _create(fleet._client, f"adapter-failed-{fleet._client.transport.kind}", images.good).name
    standin.inject_fault({"service": name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    after = fleet.update_images(fleet.get_service(name), {0: images.good_v2}, annotations=ANN, timeout=OP_TIMEOUT)
    assert health.assess(after).state == "failed" and after.terminal_reason == "HEALTH_CHECK_CONTAINER_ERROR"
    assert after.latest_ready_revision != after.latest_created_revision
