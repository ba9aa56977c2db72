"""A base on one registry host, the apps on another (issue #14, Artifact Registry fidelity), against two
real registry servers (distribution, two ports: two hosts).

The spec's mount names a repository of the target's own registry; baseroll adds `origin=<base host>`,
which Google's registries use to mount across their hosts. distribution ignores it and answers 202, so
every layer of the new base the app repository lacks is streamed through baseroll: the bytes copied
are logged and returned, and the plan warns that base and app hosts differ.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator

import httpx
import pytest
from baseroll.clock import FakeClock
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.fake import FakeFleet
from baseroll.fleet.view import ServiceView
from baseroll.images import rebaser
from baseroll.images.rebase import RebaseError
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, StaticCredentials
from baseroll.rollout import fakes, planner
from baseroll.rollout.deps import Deps
from baseroll.rollout.plan import RebaseJob

from infra.local.registry_server import RegistryServer
from tests.integration.conftest import make_layer, push_image

pytestmark = pytest.mark.integration

SERVICE = "projects/tenants-aaaaa/locations/us-east1/services/shop"


@pytest.fixture(scope="module")
def hosts(registry: RegistryServer) -> Iterator[dict[str, Any]]:
    """Bases on the module's registry (bases/x: v1, then stable → v2); the app on a second one."""
    with RegistryServer() as apps_registry:
        base_host, app_host = registry.host, apps_registry.host
        with client_for(base_host, app_host) as c:
            v1_layers = [make_layer({"etc/os": b"v1"}), make_layer({"bin/tool": b"v1 tool"})]
            v2_layers = [make_layer({"etc/os": b"v2" * 5000}), make_layer({"bin/tool": b"v2 tool"})]
            bases = ImageRef(base_host, "bases/x")
            v1 = push_image(c, bases, v1_layers, tag="v1")
            v2 = push_image(c, bases, v2_layers, tag="v2")
            push_image(c, bases, v2_layers, tag="stable")
            app = push_image(c, ImageRef(app_host, "apps/a"), v1_layers + [make_layer({"app/main": b"app"})], tag="1")
        yield {"base_host": base_host, "app_host": app_host, "v1": v1, "v2": v2, "app": app}


def client_for(*hosts: str, **kw: Any) -> RegistryClient:
    return RegistryClient(plain_http_hosts=hosts, allowed_hosts=hosts, retries=1, backoff=0.01, **kw)


class Recording(httpx.HTTPTransport):
    """The real transport, keeping every mount request's query."""

    def __init__(self) -> None:
        super().__init__()
        self.mounts: list[dict[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "mount" in request.url.params:
            self.mounts.append(dict(request.url.params))
        return super().handle_request(request)


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_cross_host_rebase_streams_the_new_base_and_reports_the_bytes(hosts, capsys):
    v1, v2, app = hosts["v1"], hosts["v2"], hosts["app"]
    transport = Recording()
    with client_for(hosts["base_host"], hosts["app_host"], transport=transport) as c:
        result = rebaser.rebase_image(c, app.ref, v1.ref, v2.ref)
        again = rebaser.rebase_image(c, app.ref, v1.ref, v2.ref)  # a re-run: nothing is copied twice
        pushed = json.loads(c.get_manifest(result.ref).raw)
    expected = sum(len(layer.blob) for layer in v2.layers)
    assert result.pushed and result.ref.registry == hosts["app_host"]
    assert result.copied_bytes == expected and result.mounted_layers == len(v2.layers)
    assert (again.copied_bytes, again.pushed) == (0, False)
    # Every new-base layer was asked for by mount from the base's host (origin), then copied.
    assert {(m["mount"], m["from"], m["origin"]) for m in transport.mounts} == {
        (layer.digest, "bases/x", hosts["base_host"]) for layer in v2.layers}
    assert [d["digest"] for d in pushed["layers"]][:2] == [layer.digest for layer in v2.layers]
    logs = log_lines(capsys.readouterr().out)
    copies = [line for line in logs if line["message"] == "registry.cross_host_copy"]
    assert sorted(line["bytes"] for line in copies) == sorted(len(layer.blob) for layer in v2.layers)
    assert all(line["severity"] == "WARNING" and line["status"] == 202 for line in copies)
    done = [line for line in logs if line["message"] == "rebase.done"]
    assert done[0]["copied_bytes"] == expected and done[0]["severity"] == "WARNING"


def test_the_plan_warns_when_base_and_app_hosts_differ(hosts, capsys):
    base_host, app_host = hosts["base_host"], hosts["app_host"]
    cfg = fakes.config(tracks=(("x", f"{base_host}/bases/x:stable"),), waves=(1.0,))
    cfg = dataclasses.replace(cfg, allowed_registries=frozenset({base_host, app_host}))
    registry = client_for(base_host, app_host)

    def rebase(job: RebaseJob, new_base: ImageRef, dry_run: bool = False) -> ImageRef:
        return rebaser.rebase_image(registry, job.app, job.old_base, new_base, dry_run=dry_run).ref

    fleet = FakeFleet()
    fleet.add(ServiceView(SERVICE, (str(hosts["app"].ref),)))
    lineage = fakes.MemoryLineage()
    lineage.record_version("x", hosts["v1"].ref.digest or "")  # the track was seen at v1 before it moved
    clock = FakeClock()
    deps = Deps(config=cfg, fleet=fleet, registry=registry, bus=fakes.FakeBus(), records=fakes.MemoryRecordStore(clock),
                rebase=rebase, lineage=lineage, clock=clock)
    with registry:
        report = planner.start(deps, RollRequest("base", ImageRef(base_host, "bases/x", "stable"), None, "test", "e-1",
                                                 True))
    assert [s["action"] for s in report["services"]] == ["roll"], report
    warnings = [line for line in log_lines(capsys.readouterr().out) if line["message"] == "plan.cross_host"]
    assert len(warnings) == 1 and warnings[0]["severity"] == "WARNING"
    assert (warnings[0]["base_host"], warnings[0]["app_host"]) == (base_host, app_host)


def test_a_registry_that_mounts_from_the_origin_host_moves_no_bytes(capsys):
    """What Google's registries do with `origin` (go-containerregistry PR #1388): 201, nothing streamed."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST" and request.url.params.get("origin") == "us-docker.pkg.dev":
            return httpx.Response(201, headers={"Location": f"/v2/p/apps/a/blobs/{request.url.params['mount']}"})
        return httpx.Response(404)

    hosts = ("us-docker.pkg.dev", "us-central1-docker.pkg.dev")
    digest = "sha256:" + "ab" * 32
    with RegistryClient(allowed_hosts=hosts, transport=httpx.MockTransport(handler), retries=0,
                        credentials=StaticCredentials({}), resolve=lambda host: ["142.250.1.1"]) as c:
        outcome = c.transfer_blob(ImageRef(hosts[1], "p/apps/a"), digest, ImageRef(hosts[0], "p/bases/x"))
    assert outcome == ("mounted", 0)
    assert [r.method for r in seen] == ["POST"] and seen[0].url.host == hosts[1]
    assert "registry.cross_host_copy" not in capsys.readouterr().out


def test_a_rebase_that_would_leave_no_layers_is_refused_before_anything_is_pushed(registry):
    """Registries have refused layerless manifests (the OCI artifact guidance asks for one layer)."""
    host = registry.host
    with client_for(host) as c:
        os_layer = make_layer({"etc/os": b"empty-test"})
        old = push_image(c, ImageRef(host, "bases/empty"), [os_layer], tag="old")
        app = push_image(c, ImageRef(host, "apps/empty"), [os_layer], tag="1")  # adds no layer of its own
        new = push_image(c, ImageRef(host, "bases/empty"), [], tag="new", history=[])
        with pytest.raises(RebaseError, match="no layers"):
            rebaser.rebase_image(c, app.ref, old.ref, new.ref)
        assert c.stats.mounts == 0 and c.stats.manifest_puts == 3  # the setup's three images only
