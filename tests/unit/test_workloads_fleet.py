"""Jobs and worker pools in the rollout: their names in messages, one Fleet over an adapter per kind,
discovery of every kind, and a whole rollout (planner, steps, the real worker) over services, jobs
and a worker pool in the in-memory fakes with a FakeClock."""
from __future__ import annotations

import time

import pytest
from baseroll import config
from baseroll.config import ConfigError
from baseroll.contracts import ids, ledger, messages, topics
from baseroll.contracts.messages import Result, Rollout, Task
from baseroll.contracts.parsing import EventError
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.fake import FakeFleet, FakeProber
from baseroll.fleet.fake_jobs import FakeJobs, Run
from baseroll.fleet.view import FleetError, ServiceView
from baseroll.fleet.workloads import Workloads, adapters
from baseroll.images import refs
from baseroll.rollout import fakes, pipeline, planner, step, worker

LOC = "projects/tenants-aaaaa/locations/us-east1"
APP = f"{fakes.REGISTRY}/apps/batch:prod"
LABELS = {"baseroll-app-tag": "prod"}
VERIFY = {**LABELS, "baseroll-verify-execution": "true"}


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) called: the core must sleep on deps.clock")
    monkeypatch.setattr(time, "sleep", refuse)


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("name, kind", [
    (f"{LOC}/services/shop", "service"),
    (f"{LOC}/jobs/nightly-export", "job"),
    (f"{LOC}/jobs/{'j' * 63}", "job"),
    (f"{LOC}/workerPools/pull", "worker-pool"),
    ("projects/123456/locations/europe-west4/workerPools/p", "worker-pool"),
    (f"{LOC}/workerpools/pull", None),  # the collection is camel-cased
    (f"{LOC}/revisions/shop-00001", None),
    (f"{LOC}/jobs/{'j' * 64}", None),
    (f"{LOC}/workerPools/{'p' * 50}", None),  # a worker pool id has fewer than 50 characters
    (f"{LOC}/jobs/nightly/executions/nightly-abc", None),
])
def test_a_workload_name_says_its_kind(name: str, kind: str | None) -> None:
    assert ids.workload_kind(name) == kind


def _roundtrip(msg: Task | Result) -> Task | Result | messages.Step:
    data, attrs = messages.encode(msg)
    return messages.decode(PubSubMessage("m-1", data, attrs, None, None))


def test_tasks_and_results_carry_job_and_worker_pool_names() -> None:
    ro = Rollout(ledger.rollout_id("python", "sha256:" + "b" * 64), "python", f"{fakes.REGISTRY}/bases/python:3.12",
                 "sha256:" + "b" * 64)
    new = f"{APP}@sha256:" + "2" * 64
    for name in (f"{LOC}/jobs/nightly", f"{LOC}/workerPools/pull"):
        task = Task(ro, name, 1, (APP,), {"0": new})
        assert _roundtrip(task) == task
        result = Result(ro, name, 1, "updated", "", (APP,), (new,))
        assert _roundtrip(result) == result
    with pytest.raises(EventError, match="service: missing or malformed"):
        _roundtrip(Task(ro, f"{LOC}/jobs/nightly/executions/x", 1, (APP,), {"0": new}))


# ------------------------------------------------------------------------------------------ one Fleet

def _fleet() -> tuple[Workloads, FakeFleet, FakeJobs, FakeFleet]:
    services, jobs, pools = FakeFleet(), FakeJobs(), FakeFleet()
    services.add(ServiceView(f"{LOC}/services/shop", (APP,)))
    jobs.add(ServiceView(f"{LOC}/jobs/nightly", (APP,)))
    pools.add(ServiceView(f"{LOC}/workerPools/pull", (APP,), kind="worker-pool"))
    return Workloads({"service": services, "job": jobs, "worker-pool": pools}), services, jobs, pools


def test_each_workload_is_read_and_written_through_the_adapter_of_its_kind() -> None:
    fleet, services, jobs, pools = _fleet()
    pool = fleet.get_service(f"{LOC}/workerPools/pull")
    assert pool.kind == "worker-pool" and pools.calls["get_service"] == 1 and services.calls["get_service"] == 0
    fleet.update_images(fleet.get_service(f"{LOC}/jobs/nightly"), {0: APP + "@sha256:" + "2" * 64},
                        annotations={}, timeout=5)
    assert jobs.calls["update_images"] == 1 and services.calls["update_images"] == pools.calls["update_images"] == 0
    assert jobs.executions_of == {}  # an update runs nothing
    assert adapters(fleet) == {"service": services, "job": jobs, "worker-pool": pools}
    assert adapters(services) == {"service": services}


def test_a_kind_not_rolled_or_a_name_of_no_kind_is_a_fleet_error() -> None:
    fleet = Workloads({"service": FakeFleet()})
    with pytest.raises(FleetError, match="jobs are not rolled"):
        fleet.get_service(f"{LOC}/jobs/nightly")
    with pytest.raises(FleetError, match="not the name of a Cloud Run service, job or worker pool"):
        fleet.get_service(f"{LOC}/revisions/shop-00001")


def test_discovery_lists_every_kind_in_every_location() -> None:
    fleet, services, jobs, pools = _fleet()
    cfg = fakes.config(regions=("us-east1", "europe-west4"))
    found = pipeline.discover(fleet, cfg)
    assert sorted((s.kind, s.name.rsplit("/", 1)[-1]) for s in found) == [
        ("job", "nightly"), ("service", "shop"), ("worker-pool", "pull")]
    assert services.calls["list_services"] == jobs.calls["list_services"] == pools.calls["list_services"] == 2


# ------------------------------------------------------------------------------------------ configuration

def _parse(**rollout: object) -> config.Config:
    return config.parse({"projects": ["tenants-aaaaa"], "regions": ["us-east1"], "allowed_registries": [fakes.REGISTRY],
                         "base_tracks": [{"name": "python", "image": f"{fakes.REGISTRY}/bases/python:3.12"}],
                         "rollout": rollout})


def test_workloads_default_to_every_kind_and_a_job_verification_fits_the_function_limit() -> None:
    cfg = _parse()
    assert cfg.rollout.workloads == ("service", "job", "worker-pool") and cfg.rollout.job_verify_timeout_s == 30
    assert cfg.labels.verify_execution == "baseroll-verify-execution"
    # two gates + a 120 s verification execution + 30 s of the worker's own: (540 - 30 - 120) / 2
    assert _parse(job_verify_timeout_s=120, ready_timeout_s=195).rollout.ready_timeout_s == 195
    with pytest.raises(ConfigError, match=r"at most 195 s.*job_verify_timeout_s: 120 s"):
        _parse(job_verify_timeout_s=120, ready_timeout_s=196)
    assert _parse(job_verify_timeout_s=120, ready_timeout_s=240, workloads=["service"]).rollout.workloads == (
        "service",)  # no job rolled: its verification needs no room
    for bad in (["job", "job"], [], ["cronjob"], "service"):
        with pytest.raises(ConfigError, match="rollout.workloads"):
            _parse(workloads=bad)


# ------------------------------------------------------------------------------------------ a rollout

def test_one_rollout_moves_services_jobs_and_a_worker_pool_and_verifies_only_the_labelled_job() -> None:
    w = fakes.FakeWorld(fakes.config(waves=(1.0,)))
    old = str(w.registry.push(APP, [fakes.layer("batch-v1")]).pinned())
    new = str(w.registry.push(APP, [fakes.layer("batch-v2")]).pinned())
    jobs, pools = FakeJobs(), FakeFleet()
    w.fleet.add(ServiceView(f"{LOC}/services/shop", (old,), labels=LABELS))
    jobs.add(ServiceView(f"{LOC}/jobs/nightly", (old,), labels=VERIFY))
    jobs.add(ServiceView(f"{LOC}/jobs/export", (old,), labels=LABELS))
    running = jobs.start_execution(f"{LOC}/jobs/export", Run(reads_to_finish=10**6))  # a long batch run
    pools.add(ServiceView(f"{LOC}/workerPools/pull", (old,), labels=LABELS, kind="worker-pool"))
    w.deps.fleet = Workloads({"service": w.fleet, "job": jobs, "worker-pool": pools})
    w.deps.prober = FakeProber()  # verification at zero traffic: for the service only
    w.bus.subscribe(topics.TASKS, lambda task: step.record_result(w.deps, worker.roll_service(w.deps, task)))
    w.clock.on_sleep.append(lambda now: w.bus.deliver(topics.TASKS))

    out = planner.start(w.deps, RollRequest("app", refs.parse(APP), None, "request", "e-1"))
    assert out["to_roll"] == 4
    step.handle_step(w.deps, w.bus.steps(topics.RESULTS)[-1], "m-1")

    record = w.records.get(out["rollout_id"])
    assert record.status == "finished", record
    assert record.waves == [{"wave": 0, "size": 4, "done": 4, "failed": 0, "skipped": 0}]
    everything = {**w.fleet.services, **jobs.services, **pools.services}
    assert {n: (v.images, v.annotations[ledger.STATE]) for n, v in everything.items()} == {
        n: ((new,), ledger.ROLLED) for n in everything}
    assert [e.images for e in jobs.executions_of[f"{LOC}/jobs/nightly"]] == [(new,)]  # one run, on the new image
    assert jobs.executions_of[f"{LOC}/jobs/export"] == [running]  # none run; the running one keeps its image
    assert len(w.deps.prober.sent) == 3  # the service's three requests; the pool's and the jobs' none
    results = {r.service: r for r in w.bus.messages(topics.RESULTS) if isinstance(r, Result)}
    assert "1 running execution(s) keep the previous image" in results[f"{LOC}/jobs/export"].reason
    assert "verified by" in results[f"{LOC}/jobs/nightly"].reason


def test_a_failed_verification_execution_takes_the_job_back_and_fails_its_wave() -> None:
    w = fakes.FakeWorld(fakes.config(waves=(1.0,), workloads=("job",)))
    old = str(w.registry.push(APP, [fakes.layer("batch-v1")]).pinned())
    new = str(w.registry.push(APP, [fakes.layer("batch-v2")]).pinned())
    jobs = FakeJobs([ServiceView(f"{LOC}/jobs/nightly", (old,), labels=VERIFY)])
    jobs.runs[new] = Run(succeeds=False, reads_to_finish=2)
    w.deps.fleet = Workloads({"job": jobs})
    w.bus.subscribe(topics.TASKS, lambda task: step.record_result(w.deps, worker.roll_service(w.deps, task)))
    w.clock.on_sleep.append(lambda now: w.bus.deliver(topics.TASKS))

    out = planner.start(w.deps, RollRequest("app", refs.parse(APP), None, "request", "e-1"))
    step.handle_step(w.deps, w.bus.steps(topics.RESULTS)[-1], "m-1")

    record = w.records.get(out["rollout_id"])
    assert record.status == "halted" and record.waves[0]["failed"] == 1, record
    job = jobs.services[f"{LOC}/jobs/nightly"]
    assert job.images == (old,) and job.annotations[ledger.STATE] == ledger.ROLLED_BACK
    (result,) = [r for r in w.bus.messages(topics.RESULTS) if isinstance(r, Result)]
    assert result.outcome == "rolled-back" and "NON_ZERO_EXIT_CODE" in result.reason


def test_a_request_filter_places_jobs_and_worker_pools_and_can_name_them() -> None:
    from baseroll.contracts.requests import ServiceFilter, parse_filter

    by_location = ServiceFilter(projects=("tenants-aaaaa",), regions=("us-east1",))
    for name in (f"{LOC}/services/shop", f"{LOC}/jobs/nightly", f"{LOC}/workerPools/pull"):
        assert by_location.matches(name, {})
    assert not ServiceFilter(regions=("europe-west4",)).matches(f"{LOC}/jobs/nightly", {})
    named = parse_filter({"services": [f"{LOC}/jobs/nightly", f"{LOC}/workerPools/pull"]})
    assert named.services == (f"{LOC}/jobs/nightly", f"{LOC}/workerPools/pull")
    with pytest.raises(EventError, match="not a full service, job or worker pool name"):
        parse_filter({"services": [f"{LOC}/jobs/nightly/executions/x"]})
