"""The demo's real-server apps (infra/local/server_apps.py) really run, and each base flavour breaks them
the way it claims: built into the real registry, rebased there by baseroll onto each flavour, then run
by the Cloud Run stand-in's revision runner (skopeo copy, umoci unpack, the entrypoint chrooted with
PORT set, ready once it listens: Cloud Run's default startup probe).

good → 200 with the new patch's greeting; startup-broken → the process exits and the startup probe
fails; answers-500 → it listens and answers 500 naming the missing file.
"""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from baseroll.images.rebaser import rebase_image
from baseroll.images.refs import ImageRef

from infra.local import server_apps
from infra.local.cloudrun.bundles import BundleCache
from infra.local.cloudrun.runner import LaunchSpec, RevisionRunner
from infra.local.procs import LOOPBACK
from infra.local.seed import SeededFleet
from tests.integration.conftest import manifest_json, new_client

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 5.0  # a busybox httpd listens within milliseconds; Cloud Run's default probe waits 240 s


@pytest.fixture(scope="module")
def built(registry):
    """Patch 1 (good) with every app on it, then patches 2, 3, 4: good, answers-500, startup-broken."""
    with new_client(registry.host) as c:
        fleet = SeededFleet(registry.host)
        server_apps.seed_images(c, fleet)
        for flavour in (server_apps.GOOD, server_apps.ANSWERS_500, server_apps.STARTUP_BROKEN):
            server_apps.push_next_base(c, fleet, flavour)
        yield c, fleet


@pytest.fixture
def runner(tmp_path: Path):
    if os.geteuid() != 0:  # the one allowed skip, as in test_rebased_image_runs: chroot needs root
        pytest.skip("NOT RUN: needs root for chroot and for `umoci unpack` without --rootless")
    r = RevisionRunner(BundleCache(tmp_path / "images"), tmp_path / "logs", startup_timeout_s=START_TIMEOUT_S)
    yield r
    r.stop_all()


def get(runner: RevisionRunner, image: ImageRef) -> httpx.Response:
    """Start `image` as a revision (asserting it became ready) and send it `GET /`."""
    failure = runner.start(str(image), LaunchSpec(str(image)))
    assert failure is None, failure
    return httpx.get(f"http://{LOOPBACK}:{runner.port(str(image))}/", timeout=5)


def test_apps_are_real_images_of_a_few_mib(built):
    c, fleet = built
    for app, kind in server_apps.APPS.items():
        m = manifest_json(c, fleet.apps[app])
        size = sum(l["size"] for l in m["layers"])
        assert 256 << 10 < size < 4 << 20, f"{app}: {size} bytes of layers"
        assert m["mediaType"].startswith("application/vnd.docker." if kind == "docker" else "application/vnd.oci.")
        assert len(m["layers"]) == 3  # busybox, /etc, the app's www


@pytest.mark.parametrize("app", ["hello", "checkout"])  # an annotated OCI image and a Docker schema 2 one
def test_each_flavour_breaks_a_rebased_app_as_it_claims(built, runner, tmp_path, app):
    c, fleet = built
    v1, good, answers_500, startup_broken = fleet.base_versions[server_apps.BASE]
    r = get(runner, fleet.apps[app])
    assert (r.status_code, r.text) == (200, f"{app} says: hello from busybox 1.35 patch 1\n")

    rebased = {base: rebase_image(c, fleet.apps[app], v1, base).ref for base in (good, answers_500, startup_broken)}
    r = get(runner, rebased[good])
    assert (r.status_code, r.text) == (200, f"{app} says: hello from busybox 1.35 patch 2\n")
    r = get(runner, rebased[answers_500])  # the subtly broken base still starts and listens
    assert (r.status_code, r.text) == (500, f"{app}: cannot read /etc/baseroll/greeting\n")

    failure = runner.start("broken", LaunchSpec(str(rebased[startup_broken])))
    assert failure is not None and failure.reason == "HEALTH_CHECK_CONTAINER_ERROR", failure
    assert "broken" not in runner.running()
    # The shell started and could not find the applet the base dropped (the revision's log).
    assert "httpd: not found" in (tmp_path / "logs" / "broken.log").read_text()
