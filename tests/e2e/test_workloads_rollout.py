"""Services, jobs and a worker pool on one base, rolled together by one rollout on the local stack
(Pub/Sub, the functions, the Cloud Run stand-in over gRPC, the real registry).

- every eligible service, both jobs and the worker pool end on the new base with the ledger's `rolled`;
- the job labelled `baseroll-verify-execution` is run exactly once, on its new image;
- the unlabelled job is never run, and its execution that was running keeps the old image;
- a second labelled job whose verification execution fails (a fault injected for it) is put back on
  its old image (`rolled-back`) and counts as the one failure of its wave;
- `baseroll plan` and `baseroll status` name the kind of each workload.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import grpc
import pytest
from baseroll import cli
from baseroll.contracts import ledger
from click.testing import CliRunner
from google.cloud import run_v2
from google.cloud.run_v2.services.executions.transports import ExecutionsGrpcTransport
from google.cloud.run_v2.services.jobs.transports import JobsGrpcTransport
from google.cloud.run_v2.services.worker_pools.transports import (
    WorkerPoolsGrpcTransport,
)

from infra.local import scenario, seed
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

PROJECT, REGION = "tenants-prod-a", "us-central1"
LOC = f"projects/{PROJECT}/locations/{REGION}"
VERIFY = {"baseroll-verify-execution": "true"}
JOBS = {"nightly": VERIFY, "export": {}, "report": VERIFY}  # report's verification execution fails
POOL = f"{LOC}/workerPools/pull"
RUNNING_S = 600.0  # the export job's execution started before the rollout runs this long (stopped with the stack)


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(projects=(PROJECT,), regions=(REGION,), ready_timeout_s=20,
                    rollout={"waves": [0.5, 1.0], "failure_budget": 1, "job_verify_timeout_s": 20}) as s:
        yield s


@pytest.fixture(scope="module")
def clients(stack: LocalStack) -> Iterator[tuple[run_v2.JobsClient, run_v2.ExecutionsClient, run_v2.WorkerPoolsClient]]:
    assert stack.cloudrun is not None
    channel = grpc.insecure_channel(stack.cloudrun.grpc_target)
    yield (run_v2.JobsClient(transport=JobsGrpcTransport(channel=channel)),
           run_v2.ExecutionsClient(transport=ExecutionsGrpcTransport(channel=channel)),
           run_v2.WorkerPoolsClient(transport=WorkerPoolsGrpcTransport(channel=channel)))
    channel.close()


@pytest.fixture(scope="module")
def fleet(stack: LocalStack, clients):
    seeded = scenario.seed_fleet(stack, services=6, canaries=0)
    jobs, _, pools = clients
    image = str(seeded.apps["py-api"])
    for jid, labels in JOBS.items():
        seed.create_job(jobs, f"{LOC}/jobs/{jid}", image, labels=labels)
    seed.create_worker_pool(pools, POOL, image)
    return seeded


def _running_execution(stack: LocalStack, jobs: run_v2.JobsClient, name: str) -> run_v2.Execution:
    """Start an execution of `name` that is still running when the rollout updates the job."""
    assert stack.cloudrun is not None
    stack.cloudrun.execution_latency_s = RUNNING_S
    try:
        return jobs.run_job(name=name).metadata  # RunJob's operation carries the execution from the start
    finally:
        stack.cloudrun.execution_latency_s = type(stack.cloudrun).execution_latency_s


def _cli_json(stack: LocalStack, *args: str) -> Any:
    result = CliRunner().invoke(cli.main, ["--config", str(stack.config_path), "--json", *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_one_rollout_moves_services_jobs_and_a_worker_pool(stack: LocalStack, fleet, clients) -> None:
    jobs, executions, pools = clients
    old_image = str(fleet.apps["py-api"])
    running = _running_execution(stack, jobs, f"{LOC}/jobs/export")
    stack.cloudrun.inject_fault({"service": f"{LOC}/jobs/report", "times": 1})  # its one execution fails
    new_base = scenario.push_new_base(stack, fleet, "python")

    plan = _cli_json(stack, "plan", "--base", str(fleet.base_track("python")))
    kinds = {r["service"]: (r["kind"], r["action"]) for r in plan["services"]}
    assert {kinds[f"{LOC}/jobs/{j}"] for j in JOBS} == {("job", "roll")} and kinds[POOL] == ("worker-pool", "roll")
    assert {k for k, _ in kinds.values()} == {"service", "job", "worker-pool"}

    scenario.publish_push(stack, new_base, "3.12")
    record = scenario.wait_rollout(stack, scenario.rollout_id("python", new_base), timeout=120)
    assert record["status"] == "finished", record
    assert sum(w["failed"] for w in record["waves"]) == 1, record["waves"]

    for r in scenario.results(stack, fleet):
        if r.seeded.eligible_for("python"):
            assert r.state == ledger.ROLLED and scenario.on_base(stack, r.image, new_base), r
    moved = {f"{LOC}/jobs/nightly": jobs.get_job(name=f"{LOC}/jobs/nightly"),
             f"{LOC}/jobs/export": jobs.get_job(name=f"{LOC}/jobs/export"), POOL: pools.get_worker_pool(name=POOL)}
    for name, workload in moved.items():
        image = workload.template.template.containers[0].image if "/jobs/" in name else \
            workload.template.containers[0].image
        assert workload.annotations[ledger.STATE] == ledger.ROLLED and scenario.on_base(stack, image, new_base), name

    (verification,) = executions.list_executions(parent=f"{LOC}/jobs/nightly")  # exactly one run, on the new image
    nightly = moved[f"{LOC}/jobs/nightly"]
    assert verification.template.containers[0].image == nightly.template.template.containers[0].image
    assert verification.succeeded_count == 1
    (still,) = executions.list_executions(parent=f"{LOC}/jobs/export")  # never run by baseroll
    assert still.name == running.name and still.running_count == 1
    assert still.template.containers[0].image == old_image

    report = jobs.get_job(name=f"{LOC}/jobs/report")
    assert report.template.template.containers[0].image == old_image
    assert report.annotations[ledger.STATE] == ledger.ROLLED_BACK and "NON_ZERO_EXIT_CODE" in \
        report.annotations[ledger.REASON]
    (failed,) = executions.list_executions(parent=f"{LOC}/jobs/report")
    assert failed.failed_count == 1

    planned = {r["service"]: r["kind"] for r in stack.log_records("service.planned")}  # the planner function's
    assert (planned[POOL], planned[f"{LOC}/jobs/report"]) == ("worker-pool", "job")
    (track,) = [t for t in _cli_json(stack, "status", "--services") if t["track"] == "python"]
    shown = {r["service"]: r["kind"] for r in track["services"]}
    assert shown[POOL] == "worker-pool" and shown[f"{LOC}/jobs/nightly"] == "job"
    assert "service" in shown.values()
