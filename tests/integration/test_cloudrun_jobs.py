"""Jobs, executions and worker pools on the Cloud Run stand-in, through google-cloud-run's unmodified
JobsClient, ExecutionsClient and WorkerPoolsClient on their default transport (gRPC), against the real
registry: first the documented semantics the stand-in serves (docs/GOOGLE_APIS.md#jobs-and-worker-pools),
then baseroll's adapters (`fleet.jobs`) and deploy state machines (`fleet.workload_deploy`) over them."""
from __future__ import annotations

from typing import Iterator

import grpc
import pytest
from baseroll.clock import SYSTEM
from baseroll.contracts import ledger
from baseroll.fleet.deploy import Target
from baseroll.fleet.jobs import CloudRunJobs, CloudRunWorkerPools
from baseroll.fleet.workload_deploy import apply_job, apply_workload
from baseroll.fleet.workloads import VERIFY_EXECUTION_LABEL
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.run_v2.services.executions.transports import ExecutionsGrpcTransport
from google.cloud.run_v2.services.jobs.transports import JobsGrpcTransport
from google.cloud.run_v2.services.worker_pools.transports import WorkerPoolsGrpcTransport

from infra.local.cloudrun_standin import CloudRunStandin
from tests.integration.test_cloudrun_standin import (  # noqa: F401  (module-scoped fixtures)
    FAST_POLL,
    OP_TIMEOUT,
    PROJECT,
    REGION,
    Images,
    images,
    registry,
    standin,
)

State = run_v2.Condition.State
Completion = run_v2.ExecutionReference.CompletionStatus
PARENT = f"projects/{PROJECT}/locations/{REGION}"
BASE = "sha256:" + "b" * 64
RID = ledger.rollout_id("python", BASE)


@pytest.fixture(scope="module")
def channel(standin: CloudRunStandin) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(standin.grpc_target)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def jobs(channel: grpc.Channel) -> run_v2.JobsClient:
    return run_v2.JobsClient(transport=JobsGrpcTransport(channel=channel))


@pytest.fixture(scope="module")
def executions(channel: grpc.Channel) -> run_v2.ExecutionsClient:
    return run_v2.ExecutionsClient(transport=ExecutionsGrpcTransport(channel=channel))


@pytest.fixture(scope="module")
def pools(channel: grpc.Channel) -> run_v2.WorkerPoolsClient:
    return run_v2.WorkerPoolsClient(transport=WorkerPoolsGrpcTransport(channel=channel))


@pytest.fixture
def slow_executions(standin: CloudRunStandin) -> Iterator[None]:
    standin.execution_latency_s = 1.5
    yield
    standin.execution_latency_s = CloudRunStandin.execution_latency_s


@pytest.fixture(autouse=True)
def clean(standin: CloudRunStandin) -> Iterator[None]:
    yield
    standin.clear_faults()
    standin.set_write_quota(None)


def _job(client: run_v2.JobsClient, jid: str, image: str, labels: dict[str, str] | None = None) -> run_v2.Job:
    body = run_v2.Job(labels=labels or {}, template=run_v2.ExecutionTemplate(
        template=run_v2.TaskTemplate(containers=[run_v2.Container(image=image)])))
    return client.create_job(parent=PARENT, job_id=jid, job=body).result(timeout=OP_TIMEOUT, polling=FAST_POLL)


def _pool(client: run_v2.WorkerPoolsClient, wid: str, image: str) -> run_v2.WorkerPool:
    body = run_v2.WorkerPool(template=run_v2.WorkerPoolRevisionTemplate(containers=[run_v2.Container(image=image)]))
    return client.create_worker_pool(parent=PARENT, worker_pool_id=wid, worker_pool=body).result(
        timeout=OP_TIMEOUT, polling=FAST_POLL)


def _set_job_image(client: run_v2.JobsClient, job: run_v2.Job, image: str) -> run_v2.Job:
    job.template.template.containers[0].image = image
    return client.update_job(job=job).result(timeout=OP_TIMEOUT, polling=FAST_POLL)


# --- the stand-in: what Google documents ----------------------------------------------------------------


def test_creating_and_updating_a_job_reconciles_it_and_runs_nothing(jobs: run_v2.JobsClient,
                                                                     executions: run_v2.ExecutionsClient,
                                                                     images: Images) -> None:
    job = _job(jobs, "reconcile", images.good)
    assert (job.generation, job.observed_generation, job.terminal_condition.state) == (1, 1, State.CONDITION_SUCCEEDED)
    updated = _set_job_image(jobs, job, images.good_v2)
    assert (updated.generation, updated.observed_generation) == (2, 2) and updated.etag != job.etag
    assert updated.execution_count == 0 and list(executions.list_executions(parent=job.name)) == []


def test_a_job_whose_image_does_not_resolve_fails_and_keeps_its_observed_generation(
        jobs: run_v2.JobsClient, images: Images) -> None:
    job = _job(jobs, "unresolved", images.good)
    with pytest.raises(gexc.GoogleAPICallError):
        _set_job_image(jobs, job, images.missing)
    now = jobs.get_job(name=job.name)
    assert not now.reconciling and now.terminal_condition.state == State.CONDITION_FAILED
    assert now.terminal_condition.reason == run_v2.Condition.CommonReason.CONTAINER_MISSING
    assert (now.generation, now.observed_generation) == (2, 1)


def test_an_execution_completes_and_the_job_shows_it(jobs: run_v2.JobsClient, executions: run_v2.ExecutionsClient,
                                                     images: Images) -> None:
    job = _job(jobs, "runs", images.good)
    ex = jobs.run_job(name=job.name).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    completed = next(c for c in ex.conditions if c.type_ == "Completed")
    assert completed.state == State.CONDITION_SUCCEEDED and ex.succeeded_count == ex.task_count == 1
    assert ex.template.containers[0].image == images.good and ex.completion_time
    now = jobs.get_job(name=job.name)
    assert now.execution_count == 1 and now.latest_created_execution.name == ex.name
    assert now.latest_created_execution.completion_status == Completion.EXECUTION_SUCCEEDED
    assert [e.name for e in executions.list_executions(parent=job.name)] == [ex.name]


def test_a_failing_execution_has_the_execution_reason(standin: CloudRunStandin, jobs: run_v2.JobsClient,
                                                      executions: run_v2.ExecutionsClient, images: Images) -> None:
    job = _job(jobs, "fails", images.good)
    standin.inject_fault({"service": job.name, "times": 1})
    with pytest.raises(gexc.GoogleAPICallError):
        jobs.run_job(name=job.name).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    ex = next(iter(executions.list_executions(parent=job.name)))
    assert ex.conditions[0].state == State.CONDITION_FAILED and ex.failed_count == 1
    assert ex.conditions[0].execution_reason == run_v2.Condition.ExecutionReason.NON_ZERO_EXIT_CODE


def test_a_running_execution_keeps_the_template_it_started_with(
        slow_executions: None, jobs: run_v2.JobsClient, executions: run_v2.ExecutionsClient, images: Images) -> None:
    job = _job(jobs, "running", images.good)
    started = jobs.run_job(name=job.name)
    _set_job_image(jobs, jobs.get_job(name=job.name), images.good_v2)
    ex = executions.get_execution(name=started.metadata.name)
    assert ex.reconciling and ex.running_count == 1 and ex.template.containers[0].image == images.good
    done = started.result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert done.succeeded_count == 1 and done.template.containers[0].image == images.good


def test_a_stale_etag_and_the_write_quota_apply_to_jobs(standin: CloudRunStandin, jobs: run_v2.JobsClient,
                                                        images: Images) -> None:
    job = _job(jobs, "etag", images.good)
    _set_job_image(jobs, jobs.get_job(name=job.name), images.good_v2)
    job.template.template.containers[0].image = images.good
    with pytest.raises(gexc.Aborted):
        jobs.update_job(job=job, retry=None)
    standin.set_write_quota(1)
    jobs.run_job(name=job.name, retry=None)
    with pytest.raises(gexc.ResourceExhausted):
        jobs.run_job(name=job.name, retry=None)


def test_a_worker_pool_deploys_revisions_like_a_service(pools: run_v2.WorkerPoolsClient, images: Images) -> None:
    pool = _pool(pools, "pull", images.good)
    assert pool.latest_ready_revision == pool.latest_created_revision and pool.observed_generation == 1
    pool.template.containers[0].image = images.good_v2
    v2 = pools.update_worker_pool(worker_pool=pool).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert v2.latest_ready_revision == v2.latest_created_revision != pool.latest_ready_revision
    assert [s.revision for s in v2.instance_split_statuses] == [v2.latest_ready_revision.rsplit("/", 1)[1]]
    v2.template.containers[0].image = images.missing
    with pytest.raises(gexc.GoogleAPICallError):
        pools.update_worker_pool(worker_pool=v2).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    failed = pools.get_worker_pool(name=pool.name)
    assert failed.terminal_condition.state == State.CONDITION_FAILED and not failed.reconciling
    assert failed.latest_ready_revision == v2.latest_ready_revision != failed.latest_created_revision
    assert (failed.generation, failed.observed_generation) == (3, 2)


def test_jobs_and_worker_pools_list_by_page_and_delete(jobs: run_v2.JobsClient, pools: run_v2.WorkerPoolsClient,
                                                       images: Images) -> None:
    made = [_job(jobs, f"page-{i}", images.good).name for i in range(3)]
    request = run_v2.ListJobsRequest(parent=PARENT, page_size=2)
    assert [j.name for j in jobs.list_jobs(request=request) if j.name in made] == made
    assert all(len(page.jobs) <= 2 for page in jobs.list_jobs(request=request).pages)
    assert len(list(jobs.list_jobs(request=request).pages)) >= 2
    with pytest.raises(gexc.InvalidArgument):
        list(jobs.list_jobs(parent=f"projects/{PROJECT}/locations/-"))
    gone = jobs.delete_job(name=made[0]).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert gone.name == made[0] and gone.delete_time
    with pytest.raises(gexc.NotFound):
        jobs.get_job(name=made[0])
    pool = _pool(pools, "doomed", images.good)
    with pytest.raises(gexc.Aborted):
        pools.delete_worker_pool(request=run_v2.DeleteWorkerPoolRequest(name=pool.name, etag='"stale"'), retry=None)
    pools.delete_worker_pool(request=run_v2.DeleteWorkerPoolRequest(name=pool.name, etag=pool.etag)).result(
        timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert pool.name not in [p.name for p in pools.list_worker_pools(parent=PARENT)]


# --- baseroll's adapters and state machines over the clients ---------------------------------------------


def test_job_adapter_lists_jobs_as_views_of_kind_job(standin: CloudRunStandin, jobs: run_v2.JobsClient,
                                                     images: Images) -> None:
    _job(jobs, "listed", images.good, {"team": "a"})
    views = {v.name: v for v in CloudRunJobs.connect(standin.grpc_url).list_services(PROJECT, REGION)}
    listed = views[f"{PARENT}/jobs/listed"]
    assert (listed.kind, listed.images, listed.labels, listed.terminal_state) == \
        ("job", (images.good,), {"team": "a"}, "CONDITION_SUCCEEDED")


@pytest.mark.parametrize("fault, result, ends_on, state", [
    (False, "updated", "good_v2", ledger.ROLLED),
    (True, "rolled-back", "good", ledger.ROLLED_BACK),
])
def test_a_labelled_job_is_verified_by_one_execution(standin: CloudRunStandin, jobs: run_v2.JobsClient,
                                                     images: Images, fault: bool, result: str, ends_on: str,
                                                     state: str) -> None:
    jid = f"verify-{result}"
    _job(jobs, jid, images.good, {VERIFY_EXECUTION_LABEL: "true"})
    fleet = CloudRunJobs.connect(standin.grpc_url)
    planned = fleet.get_service(f"{PARENT}/jobs/{jid}")
    if fault:
        standin.inject_fault({"service": planned.name, "times": 1})
    out = apply_job(fleet, planned, Target({0: images.good_v2}), rollout=RID, base_digest=BASE, timeout_s=30.0,
                    verify_timeout_s=30.0, clock=SYSTEM)
    job = fleet.get_service(planned.name)
    assert (out.result, job.images, job.annotations[ledger.STATE]) == (result, (getattr(images, ends_on),), state)
    assert len(fleet.executions(planned.name)) == 1
    calls = standin.stats()["calls"]
    assert calls["update_job"] >= 1 and calls["run_job"] >= 1
    again = apply_job(fleet, job, Target({0: images.good_v2}), rollout=RID, base_digest=BASE, timeout_s=30.0,
                      verify_timeout_s=30.0, clock=SYSTEM)
    assert again.result == ("already-current" if not fault else "skipped")
    after = standin.stats()["calls"]
    assert (after.get("update_job"), after.get("run_job")) == (calls.get("update_job"), calls.get("run_job"))


def test_an_unlabelled_job_is_updated_and_never_executed(standin: CloudRunStandin, jobs: run_v2.JobsClient,
                                                         images: Images) -> None:
    _job(jobs, "quiet", images.good)
    fleet = CloudRunJobs.connect(standin.grpc_url)
    planned = fleet.get_service(f"{PARENT}/jobs/quiet")
    out = apply_workload({"job": fleet}, planned, Target({0: images.good_v2}), rollout=RID, base_digest=BASE,
                         timeout_s=30.0, clock=SYSTEM)
    assert out.result == "updated" and fleet.get_service(planned.name).images == (images.good_v2,)
    assert fleet.executions(planned.name) == []


@pytest.mark.parametrize("target, result", [("good_v2", "updated"), ("missing", "rolled-back")])
def test_a_worker_pool_rolls_and_rolls_back_through_the_client(standin: CloudRunStandin,
                                                              pools: run_v2.WorkerPoolsClient, images: Images,
                                                              target: str, result: str) -> None:
    _pool(pools, f"roll-{result}", images.good)
    fleet = CloudRunWorkerPools.connect(standin.grpc_url)
    planned = fleet.get_service(f"{PARENT}/workerPools/roll-{result}")
    assert planned.kind == "worker-pool"
    out = apply_workload({"worker-pool": fleet}, planned, Target({0: getattr(images, target)}), rollout=RID,
                         base_digest=BASE, timeout_s=30.0, clock=SYSTEM)
    pool = fleet.get_service(planned.name)
    assert out.result == result, out.reason
    assert pool.images == ((images.good_v2,) if result == "updated" else (images.good,))
    assert pool.latest_ready_revision == pool.latest_created_revision and pool.terminal_state == "CONDITION_SUCCEEDED"
