"""The Cloud Run stand-in's gRPC front, driven by the unmodified `google.cloud.run_v2` clients on their
default transport (gRPC, as production uses): the stand-in's and the documented-semantics tests, written
against a `client` fixture, run here again with gRPC clients on the same state REST serves; plus what only
gRPC shows (status codes, the quota's ErrorInfo in the trailers, one state seen from both fronts, the CLI)
and that the fleet adapter's default transport is gRPC."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest
from baseroll.fleet.cloudrun import CloudRunFleet
from baseroll.fleet.view import FleetError
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.run_v2.services.revisions.transports import RevisionsGrpcTransport
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport

from infra.local.cloudrun.faults import ApiCall
from infra.local.cloudrun_standin import ApiError, CloudRunStandin
from infra.local.procs import free_port, stop, wait_http
from infra.local.registry_server import RegistryServer
from tests.integration.test_cloudrun_semantics import (  # noqa: F401  (re-run here over gRPC)
    test_a_failing_revision_is_detected_in_seconds_with_cloud_runs_reason,
    test_pinned_and_tagged_traffic_follows_the_roll,
    test_the_failed_state_is_the_documented_one,
)
from tests.integration.test_cloudrun_standin import (  # noqa: F401  (module-scoped fixtures; tests re-run over gRPC)
    FAST_POLL,
    OP_TIMEOUT,
    PROJECT,
    REGION,
    Images,
    _assert_ready,
    _client,
    _create,
    _no_faults_left,
    _parent,
    _service,
    _set_image,
    images,
    registry,
    standin,
    test_bad_image_fails_and_old_revision_keeps_serving,
    test_bad_input_is_invalid_argument,
    test_create_in_two_regions_fills_server_fields,
    test_create_twice_is_already_exists,
    test_get_and_delete,
    test_http_faults,
    test_index_resolves_to_amd64_child,
    test_injected_fault_fails_next_revision_only,
    test_list_paginates_sorted_per_region,
    test_reserved_label_prefixes_are_rejected,
    test_revisions_list_and_get,
    test_stale_etag_is_rejected,
    test_stats_over_http_match_and_reset,
    test_template_revision_left_set_is_conflict,
    test_update_by_digest_becomes_ready,
    test_update_mask_validate_only_and_allow_missing,
)

pytestmark = pytest.mark.integration


def grpc_client(target: str) -> run_v2.ServicesClient:
    """What `CloudRunFleet.connect` builds for an `http://` endpoint: a plaintext channel, no credentials."""
    return run_v2.ServicesClient(transport=ServicesGrpcTransport(channel=grpc.insecure_channel(target)))


@pytest.fixture(scope="module")
def client(standin: CloudRunStandin) -> Iterator[run_v2.ServicesClient]:  # noqa: F811
    c = grpc_client(standin.grpc_target)
    yield c
    c.transport.close()


@pytest.fixture(scope="module")
def revisions(standin: CloudRunStandin) -> Iterator[run_v2.RevisionsClient]:  # noqa: F811
    c = run_v2.RevisionsClient(transport=RevisionsGrpcTransport(channel=grpc.insecure_channel(standin.grpc_target)))
    yield c
    c.transport.close()


def test_the_fleet_adapter_talks_grpc_by_default(standin: CloudRunStandin, images: Images) -> None:  # noqa: F811
    fleet = CloudRunFleet.connect(standin.grpc_url)
    assert isinstance(fleet._client.transport, ServicesGrpcTransport)
    name = _create(fleet._client, "default-transport", images.good).name
    standin.reset_stats()
    assert [s.name for s in fleet.list_services(PROJECT, REGION) if s.name == name] == [name]
    assert fleet.get_service(name).images == (images.good,)
    stats = standin.stats()
    assert stats["calls"] == {"get_service": 1, "list_services": 1}
    assert stats["requests"] == {"GET": 2}  # counted as the REST mapping's verbs
    with pytest.raises(ValueError):
        CloudRunFleet.connect(standin.grpc_url, "soap")


def test_an_unreachable_endpoint_is_reported_at_once(standin: CloudRunStandin) -> None:  # noqa: F811
    CloudRunFleet.connect(standin.grpc_url).check_reachable(5.0)
    CloudRunFleet.connect(standin.url, "rest").check_reachable(5.0)  # REST: nothing to check, refusals are not retried
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FleetError, match=f"cannot reach {down} over gRPC \\(connection failed\\)"):
        CloudRunFleet.connect(down).check_reachable(30.0)


def test_rest_stays_selectable_and_both_fronts_share_one_state(
    standin: CloudRunStandin, images: Images, client: run_v2.ServicesClient,  # noqa: F811
) -> None:
    rest = CloudRunFleet.connect(standin.url, "rest")
    assert rest._client.transport.kind == "rest"
    created = _create(client, "both-fronts", images.good)
    over_rest = rest.get_service(created.name)
    assert over_rest.etag == created.etag and over_rest.images == (images.good,)
    done = _set_image(rest._client, created.name, images.good_v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert client.get_service(name=created.name).etag == done.etag


def test_call_hooks_see_both_fronts_alike(
    standin: CloudRunStandin, images: Images, client: run_v2.ServicesClient,  # noqa: F811
) -> None:
    """The hook point the e2e tests race baseroll through: the same call, ids and caller metadata over
    gRPC and REST, and an ApiError raised by a hook fails the call before it changes anything."""
    created = _create(client, "hooked", images.good)
    seen: list[tuple[str, str, str | None]] = []

    def hook(call: ApiCall) -> None:
        seen.append((call.method, call.resource, call.metadata.get("x-test-caller")))
        if call.method == "update_service" and call.metadata.get("x-test-caller") == "refuse":
            raise ApiError(400, "refused by a test hook")

    standin.add_call_hook(hook)
    try:
        for front, c in (("grpc", client), ("rest", _client(standin.url))):
            svc = c.get_service(name=created.name, metadata=[("x-test-caller", front)])
            svc.labels["hooked"] = front
            with pytest.raises(gexc.BadRequest, match="refused by a test hook"):
                c.update_service(service=svc, metadata=[("x-test-caller", "refuse")])
    finally:
        standin.remove_call_hook(hook)
    client.get_service(name=created.name)  # not seen: the hook is gone
    assert seen == [("get_service", created.name, "grpc"), ("update_service", created.name, "refuse"),
                    ("get_service", created.name, "rest"), ("update_service", created.name, "refuse")]
    assert client.get_service(name=created.name).etag == created.etag, "a refused update changes nothing"
    assert ApiCall("get_operation", ("p", "l", "op-1"), {}).resource == "projects/p/locations/l/operations/op-1"


def test_errors_are_grpc_statuses(client: run_v2.ServicesClient, standin: CloudRunStandin) -> None:  # noqa: F811
    with pytest.raises(gexc.NotFound) as err:
        client.get_service(name=f"{_parent()}/services/nope")
    assert err.value.grpc_status_code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(gexc.InvalidArgument):
        client.get_service(name="projects/p/services/no-location")
    with pytest.raises(gexc.InvalidArgument):
        client.list_services(parent=f"projects/{PROJECT}/locations/-")
    standin.inject_fault({"http": {"status": 403, "methods": ["GET"], "times": 1}})
    with pytest.raises(gexc.PermissionDenied):
        client.get_service(name=f"{_parent()}/services/nope")


def test_write_quota_over_grpc_carries_the_error_info(registry: RegistryServer, images: Images) -> None:  # noqa: F811
    with CloudRunStandin(registry_host=registry.host, write_quota_per_min=2) as cr:
        client = grpc_client(cr.grpc_target)
        for i in range(2):
            client.create_service(parent=_parent(), service_id=f"q-{i}", service=_service(images.good))
        with pytest.raises(gexc.TooManyRequests) as err:
            client.create_service(parent=_parent(), service_id="q-2", service=_service(images.good))
        assert err.value.grpc_status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.reason == "RATE_LIMIT_EXCEEDED"  # google.rpc.ErrorInfo in grpc-status-details-bin
        assert "Quota exceeded" in err.value.message
        assert len(list(client.list_services(parent=_parent()))) == 2  # reads are never throttled
        assert cr.stats()["throttled"] == 1
        client.transport.close()


def test_cli_serves_grpc_too(registry: RegistryServer, images: Images, tmp_path: Path) -> None:  # noqa: F811
    port, grpc_port = free_port(), free_port()
    root = Path(__file__).resolve().parents[2]
    log = open(tmp_path / "standin.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.local.cloudrun_standin", "--port", str(port), "--grpc-port", str(grpc_port),
         "--registry-host", registry.host],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_standin/healthz", proc=proc, timeout=20)
        fleet = CloudRunFleet.connect(f"http://127.0.0.1:{grpc_port}")
        _assert_ready(_create(fleet._client, "over-the-cli", images.good))
        assert [s.name for s in fleet.list_services(PROJECT, REGION)] == [f"{_parent()}/services/over-the-cli"]
        assert httpx.get(f"http://127.0.0.1:{port}/_standin/stats", timeout=5).json()["calls"]["create_service"] == 1
    finally:
        stop(proc)
        log.close()
    assert proc.returncode == 0, (tmp_path / "standin.log").read_text()
