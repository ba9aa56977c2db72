"""The operator CLI against the local stack: plan, roll, status and rebase over the real clients."""
from __future__ import annotations

import json

import pytest
from baseroll import cli
from click.testing import CliRunner

from infra.local import scenario
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e


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

    code, out = run(stack, "--json", "status", "--base", "python")
    st = json.loads(out)[0]
    assert st["on_current"] == len(eligible) and st["failed"] == 0
    assert st["opted_out"] == st["outdated"], "only opted-out services stay on the old base"


def test_rebase_command(stack, fleet):
    versions = fleet.base_versions["node"]
    new = scenario.push_new_base(stack, fleet, "node")
    app = fleet.apps["node-web"]
    host = stack.registry.host
    code, out = run(stack, "--json", "rebase", str(app), "--old-base", str(versions[0]), "--new-base", str(new),
                    "--plain-http", host, "--tag", "rebased")
    assert code == 0, out
    result = json.loads(out)
    assert result["pushed"] and result["bytes_downloaded"] < 64 * 1024
    assert scenario.on_base(stack, result["image"], new)
    assert stack.registry_client().head_manifest(app.with_tag("rebased")) == result["digest"]

    code, out = run(stack, "rebase", str(app), "--old-base", str(fleet.base_versions["python"][0]),
                    "--new-base", str(new), "--plain-http", host)
    assert code == 2 and "refused" in out


def test_bad_input_exit_codes(stack):
    assert run(stack, "plan", "--base", "127.0.0.1:1/not/tracked:1")[0] == 2
    assert run(stack, "plan")[0] == 2
    assert run(stack, "status", "--base", "nope")[0] == 2
