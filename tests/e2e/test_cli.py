"""The operator CLI against the local stack: plan, roll, status and rebase over the real clients,
and what a user sees when something expected goes wrong."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from baseroll import cli
from baseroll.images.refs import parse
from click.testing import CliRunner

from infra.local import scenario
from infra.local.procs import LOOPBACK, free_port
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack():
    with LocalStack() as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_fleet(stack, services=28)


def run(stack, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["--config", str(stack.config_path), *args], catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def run_fresh(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m baseroll.cli` in an environment with no Pub/Sub emulator and unusable Google
    credentials: a command that creates a Google client it does not need fails here. The rollout
    store (the stack's Firestore emulator, which needs no credentials) stays reachable: plan and
    status read its lineage."""
    fresh = {"PATH": os.environ["PATH"], "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/adc.json",
             "FIRESTORE_EMULATOR_HOST": os.environ["FIRESTORE_EMULATOR_HOST"], **env}
    return subprocess.run([sys.executable, "-m", "baseroll.cli", "--config", str(config), *args],
                          cwd=ROOT, env=fresh, capture_output=True, text=True, timeout=120)


def write_config(stack, tmp_path: Path, **changes) -> Path:
    path = tmp_path / "baseroll.yaml"
    path.write_text(yaml.safe_dump({**stack.config(), **changes}, sort_keys=False))
    return path


def test_plan_status_roll_status(stack, fleet):
    track = fleet.base_track("python")
    new_base = scenario.push_new_base(stack, fleet, "python")
    before = stack.cloudrun.stats()["services"]

    code, out = run(stack, "--json", "plan", "--base", str(track))
    assert code == 0, out
    plan = json.loads(out)
    eligible = {s.name for s in fleet.services if s.eligible_for("python")}
    assert {r["service"] for r in plan["services"] if r["action"] == "roll"} == eligible
    assert all(r["targets"]["0"].startswith(f"{stack.registry.host}/apps/") for r in plan["services"] if r["action"] == "roll")
    assert sum(len(w) for w in plan["waves"]) == len(eligible)
    assert stack.cloudrun.stats()["services"] == before, "plan must change nothing"

    code, out = run(stack, "--json", "status", "--base", "python")
    assert code == 0, out
    st = json.loads(out)[0]
    assert st["on_current"] == 0 and st["outdated"] == len(eligible) + sum(
        1 for s in fleet.services if s.base == "python" and s.opted_out)

    code, out = run(stack, "roll", "--base", str(track), "--timeout", "180")
    assert code == 0, out
    assert f"{scenario.rollout_id('python', new_base)}: finished" in out

    # The fleet as Cloud Run (the stand-in) sees it, not as our own status reads it back.
    after = stack.cloudrun.stats()["services"]
    run_client = stack.run_client()
    for s in fleet.services:
        updates = after[s.name]["updates"] - before[s.name]["updates"]
        deployed = after[s.name]["images"][len(before[s.name]["images"]):]  # images updates changed to
        serving = run_client.get_service(name=s.name).template.containers[0].image
        if s.name in eligible:
            assert updates == 1 and deployed == [serving], f"{s.name}: {updates} updates, {deployed}"
            assert serving != s.image and "@sha256:" in serving and scenario.on_base(stack, serving, new_base)
        else:
            assert updates == 0 and deployed == [] and serving == s.image, f"{s.name} was touched"

    code, out = run(stack, "--json", "status", "--base", "python")
    st = json.loads(out)[0]
    assert st["on_current"] == len(eligible) and st["failed"] == 0
    assert st["opted_out"] == st["outdated"], "only opted-out services stay on the old base"


def test_rebase_command(stack, fleet):
    versions = fleet.base_versions["node"]
    new = scenario.push_new_base(stack, fleet, "node")
    app = fleet.apps["node-web"]
    host = stack.registry.host
    # A loopback registry needs no --plain-http (as with crane); a bare --tag lands in the app's repository.
    code, out = run(stack, "--json", "rebase", str(app), "--old-base", str(versions[0]), "--new-base", str(new),
                    "--tag", "rebased")
    assert code == 0, out
    result = json.loads(out)
    assert result["pushed"] and result["bytes_downloaded"] < 64 * 1024
    assert scenario.on_base(stack, result["image"], new)
    assert stack.registry_client().head_manifest(app.with_tag("rebased")) == result["digest"]

    # A whole reference, as `crane rebase --tag` takes: another repository of the same registry.
    elsewhere = f"{host}/apps/node-web-rebased:r1"
    code, out = run(stack, "--json", "rebase", str(app), "--old-base", str(versions[0]), "--new-base", str(new),
                    "--tag", elsewhere)
    assert code == 0, out
    assert json.loads(out)["image"].startswith(f"{host}/apps/node-web-rebased@sha256:")
    assert stack.registry_client().head_manifest(parse(elsewhere)) == result["digest"]

    code, out = run(stack, "rebase", str(app), "--old-base", str(fleet.base_versions["python"][0]),
                    "--new-base", str(new), "--plain-http", host)
    assert code == 2 and "refused" in out


@pytest.mark.parametrize("tag, needle", [
    ("registry.example.com/apps/x:t", "is not 127.0.0.1"),
    ("bad tag!", "not a valid tag"),
    (f"127.0.0.1:5000/apps/x@sha256:{'a' * 64}", "names a digest"),
])
def test_rebase_tag_refused(stack, fleet, tag, needle):
    app = fleet.apps["node-web"]
    code, out = run(stack, "rebase", str(app), "--old-base", str(app), "--new-base", str(app), "--tag", tag)
    assert code == 2 and needle in out, out


def test_bad_input_exit_codes(stack):
    assert run(stack, "plan", "--base", "127.0.0.1:1/not/tracked:1")[0] == 2
    assert run(stack, "plan")[0] == 2
    assert run(stack, "status", "--base", "nope")[0] == 2


def test_plan_and_status_need_no_pubsub_and_json_is_clean(stack, fleet):
    """No PUBSUB_EMULATOR_HOST, no Google credentials: plan and status still work (they publish
    nothing); with --json stdout is one JSON document and stderr is empty."""
    track = str(fleet.base_track("node"))
    for args in (("--json", "status"), ("--json", "plan", "--base", track)):
        proc = run_fresh(stack.config_path, *args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr
        json.loads(proc.stdout)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_expected_errors_are_one_line(stack, fleet, tmp_path):
    host = stack.registry.host
    unpushed = {"name": "ruby", "image": f"{host}/bases/ruby:3.3"}
    config = write_config(stack, tmp_path, base_tracks=[*stack.config()["base_tracks"], unpushed])
    one_line_error(run_fresh(config, "status"), 1, f"{host}/bases/ruby:3.3", "push the image first")
    one_line_error(run_fresh(config, "--json", "plan", "--base", unpushed["image"]), 1, "bases/ruby:3.3")

    # roll publishes, so it needs Pub/Sub: here, credentials it cannot find.
    one_line_error(run_fresh(stack.config_path, "roll", "--base", str(fleet.base_track("node"))), 1,
                   "no Google credentials", "make up")

    # Nothing listens there. Over gRPC the reads would retry UNAVAILABLE for 120 s (longer than
    # run_fresh waits); the CLI checks the connection first (docs/GOOGLE_APIS.md#transports).
    for transport in ("grpc", "rest"):
        down = write_config(stack, tmp_path, cloud_run_endpoint=f"http://{LOOPBACK}:{free_port()}",
                            cloud_run_transport=transport)
        one_line_error(run_fresh(down, "status"), 1, "cannot reach http://127.0.0.1:")

    app = fleet.apps["py-api"]
    missing = f"{host}/apps/nope:v1"
    one_line_error(run_fresh(stack.config_path, "rebase", missing, "--old-base", str(app), "--new-base", str(app)),
                   1, "apps/nope")
    one_line_error(run_fresh(tmp_path / "absent.yaml", "status"), 2, "config:", "absent.yaml")

    debug = run_fresh(config, "--debug", "status")
    assert debug.returncode != 0 and "Traceback" in debug.stderr, "--debug shows the traceback"
