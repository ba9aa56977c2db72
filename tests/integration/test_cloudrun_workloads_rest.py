"""Jobs, executions and worker pools on the Cloud Run stand-in's REST front, through google-cloud-run's
unmodified JobsClient, ExecutionsClient and WorkerPoolsClient built with `transport="rest"` (the gRPC
front is tested in test_cloudrun_jobs.py): the same state, the same semantics, calls counted under the
same method names; then baseroll's adapters over REST."""
from __future__ import annotations

import pytest
from baseroll.clock import SYSTEM
from baseroll.contracts import ledger
from baseroll.fleet.deploy import Target
from baseroll.fleet.jobs import CloudRunJobs, CloudRunWorkerPools
from baseroll.fleet.workload_deploy import apply_job, apply_workload
from baseroll.fleet.workloads import VERIFY_EXECUTION_LABEL
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from infra.local.cloudrun_standin import CloudRunStandin
from tests.integration.test_cloudrun_jobs import PARENT, _job
from tests.integration.test_cloudrun_standin import (  # noqa: F401  (module-scoped fixtures)
    FAST_POLL,
    OP_TIMEOUT,
    Images,
    images,
    registry,
    standin,
)

BASE = "sha256:" + "b" * 64
RID = ledger.rollout_id("python", BASE)


def _rest(cls: type, standin: CloudRunStandin):
    return cls(credentials=AnonymousCredentials(), transport="rest", client_options=ClientOptions(api_endpoint=standin.url))


@pytest.fixture(autouse=True)
def clean(standin: CloudRunStandin):
    yield
    standin.clear_faults()


def test_a_job_over_rest_is_updated_without_running_then_run_once(standin: CloudRunStandin, images: Images) -> None:
    jobs, executions = _rest(run_v2.JobsClient, standin), _rest(run_v2.ExecutionsClient, standin)
    job = _job(jobs, "rest-job", images.good)
    job.template.template.containers[0].image = images.good_v2
    updated = jobs.update_job(job=job).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert (updated.generation, updated.observed_generation, updated.execution_count) == (2, 2, 0)
    assert list(executions.list_executions(parent=job.name)) == []
    ex = jobs.run_job(name=job.name).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert ex.succeeded_count == 1 and ex.template.containers[0].image == images.good_v2
    assert executions.get_execution(name=ex.name).name == ex.name
    assert [e.name for e in executions.list_executions(parent=job.name)] == [ex.name]
    assert job.name in [j.name for j in jobs.list_jobs(parent=PARENT)]
    calls = standin.stats()["calls"]
    assert calls["update_job"] >= 1 and calls["run_job"] >= 1 and calls["list_executions"] >= 1
    job = jobs.get_job(name=job.name)
    with pytest.raises(gexc.Conflict):  # ABORTED is HTTP 409 over REST
        jobs.delete_job(request=run_v2.DeleteJobRequest(name=job.name, etag='"stale"'), retry=None)
    jobs.delete_job(request=run_v2.DeleteJobRequest(name=job.name, etag=job.etag)).result(
        timeout=OP_TIMEOUT, polling=FAST_POLL)
    with pytest.raises(gexc.NotFound):
        jobs.get_job(name=job.name)


def test_a_worker_pool_over_rest_deploys_a_revision_and_honours_the_update_mask(standin: CloudRunStandin,
                                                                                images: Images) -> None:
    pools = _rest(run_v2.WorkerPoolsClient, standin)
    body = run_v2.WorkerPool(labels={"team": "a"}, template=run_v2.WorkerPoolRevisionTemplate(
        containers=[run_v2.Container(image=images.good)]))
    pool = pools.create_worker_pool(parent=PARENT, worker_pool_id="rest-pool", worker_pool=body).result(
        timeout=OP_TIMEOUT, polling=FAST_POLL)
    pool.template.containers[0].image = images.good_v2
    pool.labels["team"] = "b"
    masked = run_v2.UpdateWorkerPoolRequest(worker_pool=pool, update_mask={"paths": ["template"]})
    v2 = pools.update_worker_pool(request=masked).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    assert v2.template.containers[0].image == images.good_v2 and v2.labels["team"] == "a"  # outside the mask
    assert v2.latest_ready_revision == v2.latest_created_revision != pool.latest_ready_revision
    assert "rest-pool" in [p.name.rsplit("/", 1)[1] for p in pools.list_worker_pools(parent=PARENT)]


@pytest.mark.parametrize("fault, result, ends_on", [(False, "updated", "good_v2"), (True, "rolled-back", "good")])
def test_the_adapters_roll_and_verify_a_job_and_roll_a_pool_over_rest(standin: CloudRunStandin, images: Images,
                                                                      fault: bool, result: str, ends_on: str) -> None:
    jid = f"rest-verify-{result}"
    _job(_rest(run_v2.JobsClient, standin), jid, images.good, {VERIFY_EXECUTION_LABEL: "true"})
    fleet = CloudRunJobs.connect(standin.url, "rest")
    planned = fleet.get_service(f"{PARENT}/jobs/{jid}")
    if fault:
        standin.inject_fault({"service": planned.name, "times": 1})
    out = apply_job(fleet, planned, Target({0: images.good_v2}), rollout=RID, base_digest=BASE, timeout_s=30.0,
                    verify_timeout_s=30.0, clock=SYSTEM)
    assert (out.result, fleet.get_service(planned.name).images) == (result, (getattr(images, ends_on),)), out.reason
    assert len(fleet.executions(planned.name)) == 1

    pools = CloudRunWorkerPools.connect(standin.url, "rest")
    body = run_v2.WorkerPool(template=run_v2.WorkerPoolRevisionTemplate(containers=[run_v2.Container(image=images.good)]))
    _rest(run_v2.WorkerPoolsClient, standin).create_worker_pool(
        parent=PARENT, worker_pool_id=f"rest-roll-{result}", worker_pool=body).result(timeout=OP_TIMEOUT, polling=FAST_POLL)
    pool = pools.get_service(f"{PARENT}/workerPools/rest-roll-{result}")
    rolled = apply_workload({"worker-pool": pools}, pool, Target({0: images.good_v2}), rollout=RID, base_digest=BASE,
                            timeout_s=30.0, clock=SYSTEM)
    assert rolled.result == "updated" and pools.get_service(pool.name).images == (images.good_v2,)
