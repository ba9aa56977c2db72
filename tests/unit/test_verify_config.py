"""Verify at zero traffic: its configuration, the per-service probe, the pure decisions, and the worker
and waves around it (docs/GOOGLE_APIS.md#verify-at-zero-traffic)."""
from __future__ import annotations

import dataclasses

import pytest
from baseroll import config
from baseroll.config import ConfigError, Labels, VerifySettings
from baseroll.config.rollout import FUNCTION_TIMEOUT_S, VERIFY_WRITE_S, WORKER_MARGIN_S
from baseroll.contracts import ledger
from baseroll.contracts.messages import Rollout, Task
from baseroll.fleet import deploy, verification
from baseroll.fleet.fake import FakeProber
from baseroll.fleet.verification import VERIFY_TAG, Probe, Reply
from baseroll.fleet.view import LATEST, REVISION, ServiceView, TrafficSplit
from baseroll.rollout import fakes, policy, worker
from baseroll.rollout.fakes import REGISTRY, FakeWorld, layer

NAME = "projects/tenants-aaaaa/locations/us-east1/services/shop"


def _parse(verify: object, **rollout: object) -> config.Config:
    return config.parse({"projects": ["tenants-aaaaa"], "regions": ["us-east1"], "allowed_registries": [REGISTRY],
                         "base_tracks": [{"name": "python", "image": f"{REGISTRY}/bases/python:3.12"}],
                         "rollout": {"verify": verify, **rollout}})


# ---------------------------------------------------------------- configuration

def test_on_by_default_with_get_slash_three_requests_below_500() -> None:
    cfg = _parse({})
    assert cfg.rollout.verify == VerifySettings(True, "/", "GET", 500, (), 3, 5.0, internal_ingress=False)
    assert cfg.labels.verify == "baseroll-verify" and cfg.labels.verify_path == "baseroll-verify-path"


def test_every_key_is_read() -> None:
    v = _parse({"path": "/healthz?deep=1", "method": "HEAD", "expect_status": [200, 204], "requests": 5,
                "timeout_s": 2.5, "expect_below": 400}).rollout.verify
    assert v == VerifySettings(True, "/healthz?deep=1", "HEAD", 400, (200, 204), 5, 2.5)
    assert _parse(False).rollout.verify.enabled is False


@pytest.mark.parametrize("verify, field", [
    ({"path": "healthz"}, "rollout.verify.path"),
    ({"path": "/a b"}, "rollout.verify.path"),
    ({"path": "/a#frag"}, "rollout.verify.path"),
    ({"method": "POST"}, "rollout.verify.method"),
    ({"requests": 0}, "rollout.verify.requests"),
    ({"requests": 2.5}, "rollout.verify.requests"),
    ({"timeout_s": 0}, "rollout.verify.timeout_s"),
    ({"expect_status": [200, 700]}, "rollout.verify.expect_status"),
    ({"expect_status": "200"}, "rollout.verify.expect_status"),
    ({"enabled": "yes"}, "rollout.verify.enabled"),
    ({"retries": 2}, "rollout.verify.retries"),
    ("on", "rollout.verify"),
])
def test_a_bad_setting_is_refused_naming_it(verify: object, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}"):
        _parse(verify)


def test_the_readiness_timeout_must_leave_room_for_the_check() -> None:
    """Two gates, the check's requests and the traffic write after it, and the margin fit 540 s."""
    verify = {"requests": 4, "timeout_s": 10}
    most = (FUNCTION_TIMEOUT_S - WORKER_MARGIN_S - 4 * 10 - VERIFY_WRITE_S) / 2
    assert _parse(verify, ready_timeout_s=most).rollout.ready_timeout_s == most
    with pytest.raises(ConfigError, match=r"rollout.ready_timeout_s: at most 227.5 s.*4 x 10 s requests"):
        _parse(verify, ready_timeout_s=most + 1)
    # off, and no job whose verification execution needs room: the old limit
    assert _parse(False, ready_timeout_s=255, workloads=["service"]).rollout.ready_timeout_s == 255


def test_the_config_and_the_deploy_count_the_same_traffic_write() -> None:
    assert VERIFY_WRITE_S == deploy.TRAFFIC_WRITE_S


def test_a_verified_task_makes_two_writes_so_half_as_many_tasks_are_released() -> None:
    assert _parse({}, write_quota_per_min=60).rollout.quota_for("us-east1") == 30
    assert _parse(False, write_quota_per_min=60).rollout.quota_for("us-east1") == 60


def test_labels_are_checked_as_label_keys() -> None:
    with pytest.raises(ConfigError, match="not a valid Cloud Run label key"):
        config.parse({"projects": ["tenants-aaaaa"], "regions": ["us-east1"], "allowed_registries": [REGISTRY],
                      "base_tracks": [{"name": "python", "image": f"{REGISTRY}/bases/python:3.12"}],
                      "labels": {"verify_path": "Verify/Path"}})


# ---------------------------------------------------------------- the probe of one service

PROBES = {
    # labels -> the probe (None: not verified)
    "no label": ({}, Probe()),
    "opted out": ({"baseroll-verify": "false"}, None),
    "opted out, another spelling": ({"baseroll-verify": "OFF"}, None),
    "any other value keeps it": ({"baseroll-verify": "true"}, Probe()),
    "a path label": ({"baseroll-verify-path": "healthz"}, Probe(path="/healthz")),
    "a nested path label": ({"baseroll-verify-path": "api--v1--health"}, Probe(path="/api/v1/health")),
}


@pytest.mark.parametrize("name", PROBES)
def test_the_probe_of_a_service_follows_its_labels(name: str) -> None:
    labels, probe = PROBES[name]
    svc = ServiceView(NAME, ("img",), labels=labels)
    assert policy.verification_probe(svc, VerifySettings(), Labels()) == probe


INGRESS = {
    # (ingress, internal_ingress setting) -> verified
    ("", False): True,
    ("INGRESS_TRAFFIC_ALL", False): True,
    ("INGRESS_TRAFFIC_INTERNAL_ONLY", False): False,
    ("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER", False): False,
    ("INGRESS_TRAFFIC_INTERNAL_ONLY", True): True,
    ("INGRESS_TRAFFIC_NONE", True): False,
}


@pytest.mark.parametrize("ingress, internal", INGRESS)
def test_a_service_the_worker_cannot_reach_is_not_verified_and_says_why(ingress: str, internal: bool) -> None:
    svc = ServiceView(NAME, ("img",), ingress=ingress)
    settings = VerifySettings(internal_ingress=internal)
    verified = INGRESS[(ingress, internal)]
    assert (policy.verification_probe(svc, settings, Labels()) is not None) is verified
    why = policy.not_verified(svc, settings, Labels())
    assert (why is None) is verified and (verified or ingress in why)


def test_internal_ingress_is_a_config_switch() -> None:
    assert _parse({"internal_ingress": True}).rollout.verify.internal_ingress is True
    with pytest.raises(ConfigError, match="^rollout.verify.internal_ingress: true or false"):
        _parse({"internal_ingress": "yes"})


def test_no_probe_when_off_in_the_config_or_for_a_worker_pool() -> None:
    svc = ServiceView(NAME, ("img",))
    assert policy.verification_probe(svc, VerifySettings(enabled=False), Labels()) is None
    assert policy.verification_probe(dataclasses.replace(svc, kind="worker-pool"), VerifySettings(), Labels()) is None


# ---------------------------------------------------------------- pure decisions

REPLIES = {
    # (reply, probe) -> passes
    "200": (Reply(200), Probe(), True),
    "404 is below 500": (Reply(404), Probe(), True),
    "500": (Reply(500), Probe(), False),
    "503": (Reply(503), Probe(), False),
    "401 never passes under expect_below": (Reply(401), Probe(), False),
    "403 never passes under expect_below": (Reply(403), Probe(), False),
    "a listed 403 passes": (Reply(403), Probe(expect_status=(403,)), True),
    "an unlisted 200": (Reply(200), Probe(expect_status=(204,)), False),
    "expect_below 300, a 302": (Reply(302), Probe(expect_below=300), False),
    "no answer": (Reply(None, error="ConnectError"), Probe(), False),
}


@pytest.mark.parametrize("name", REPLIES)
def test_whether_a_reply_passes(name: str) -> None:
    reply, probe, passes = REPLIES[name]
    assert (verification.refusal(reply, probe) is None) is passes


def test_the_first_failure_ends_the_check_and_names_the_request() -> None:
    prober = FakeProber()
    prober.replies["https://t.example/"] = Reply(500, b"  boom\n  " + b"z" * 300)
    found = verification.check(prober, "https://t.example", "https://s.example", Probe(requests=3))
    assert not found.passed and len(prober.sent) == 1
    assert found.detail == f"request 1/3 GET / answered 500: {'boom ' + 'z' * 191!r}"


def test_during_the_check_latest_is_pinned_and_a_stale_tag_of_ours_replaced() -> None:
    svc = ServiceView(NAME, ("img",), latest_ready_revision="shop-00002",
                      traffic=(TrafficSplit(LATEST, 90), TrafficSplit(REVISION, 10, "shop-00001", "old"),
                               TrafficSplit(REVISION, 0, "shop-00002", VERIFY_TAG)))
    assert verification.during_check(svc, "shop-00003-b1234") == (
        TrafficSplit(REVISION, 90, "shop-00002"), TrafficSplit(REVISION, 10, "shop-00001", "old"),
        TrafficSplit(REVISION, 0, "shop-00003-b1234", VERIFY_TAG))
    assert verification.during_check(ServiceView(NAME, ("img",)), "shop-00001-b1") is None  # nothing serves


def test_after_a_pass_pins_to_the_replaced_revision_move_and_latest_stays() -> None:
    before = (TrafficSplit(REVISION, 50, "shop-00002", "blue"), TrafficSplit(REVISION, 30, "shop-00001"),
              TrafficSplit(LATEST, 20))
    assert verification.after_pass(before, "shop-00002", "shop-00003") == (
        TrafficSplit(REVISION, 50, "shop-00003", "blue"), TrafficSplit(REVISION, 30, "shop-00001"),
        TrafficSplit(LATEST, 20))


# ---------------------------------------------------------------- the worker and the waves

def _world(labels: dict[str, str] | None = None) -> tuple[FakeWorld, Task, FakeProber]:
    w = FakeWorld(fakes.config())
    base = w.registry.push(f"{REGISTRY}/bases/python:3.12", [layer("debian"), layer("python 3.12.1")])
    assert base.digest
    old, new = f"{REGISTRY}/apps/shop@sha256:" + "1" * 64, f"{REGISTRY}/apps/shop@sha256:" + "2" * 64
    w.fleet.add(ServiceView(NAME, (old,), labels=labels or {}))
    prober = FakeProber()
    w.deps.prober = prober
    ro = Rollout(ledger.rollout_id("python", base.digest), "python", f"{REGISTRY}/bases/python:3.12", base.digest)
    return w, Task(ro, NAME, 1, (old,), {"0": new}), prober


def test_the_worker_verifies_with_the_configured_probe() -> None:
    w, task, prober = _world({"baseroll-verify-path": "ready"})
    result = worker.roll_service(w.deps, task)
    assert result.outcome == "updated" and result.reason.startswith("3 x GET /ready -> 200")
    assert [url for _, url, _ in prober.sent] == [w.fleet.services[NAME].uri.replace(
        "https://", f"https://{VERIFY_TAG}---") + "/ready"] * 3


def test_an_opted_out_service_is_not_verified() -> None:
    w, task, prober = _world({"baseroll-verify": "false"})
    assert worker.roll_service(w.deps, task).outcome == "updated" and prober.sent == []
    assert w.fleet.calls["update_images"] == 1


def test_a_failed_check_is_a_failure_its_wave_counts() -> None:
    w, task, prober = _world()
    prober.default = Reply(500, b"nope")
    result = worker.roll_service(w.deps, task)
    assert result.outcome == "rolled-back" and result.outcome in deploy.FAILED_OUTCOMES
    assert "answered 500: 'nope'" in result.reason
    assert w.fleet.services[NAME].annotations[ledger.STATE] == ledger.ROLLED_BACK


def test_the_adapter_reads_the_ingress_the_service_url_and_tag_urls() -> None:
    from baseroll.fleet.cloudrun import view
    from google.cloud import run_v2

    svc = run_v2.Service(name=NAME, ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY,
                         uri="https://shop-x.a.run.app", traffic_statuses=[
                             run_v2.TrafficTargetStatus(tag=VERIFY_TAG, uri="https://t---shop-x.a.run.app"),
                             run_v2.TrafficTargetStatus(percent=100)])
    got = view(svc)
    assert (got.ingress, got.uri, dict(got.tag_uris)) == (
        "INGRESS_TRAFFIC_INTERNAL_ONLY", "https://shop-x.a.run.app", {VERIFY_TAG: "https://t---shop-x.a.run.app"})
    assert view(run_v2.Service(name=NAME)).ingress == ""
