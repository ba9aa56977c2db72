"""Each IAM grant in infra/terraform justified by the code path that needs it, and the source-topic
switches. The HCL model and checkers are tests/unit/test_terraform.py's; this file reads the code
(functions/baseroll) to show what each identity calls, publishes and reads.
"""
from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from tests.unit.test_terraform import (
    CUSTOM_ROLE_PERMISSIONS,
    PUBLISH_SCOPE,
    TF_DIR,
    Module,
    custom_role,
    identity_of,
    resolve_topic,
)

PACKAGE = Path(__file__).resolve().parents[2] / "functions" / "baseroll"
# The Cloud Run Admin API v2 methods fleet/cloudrun.py may call and the permissions each needs
# (Cloud Run IAM permissions; an update returns a long-running operation the client polls).
RUN_METHOD_PERMISSIONS = {
    "list_services": {"run.services.list"},  # the planner's discovery (roles/run.viewer)
    "get_service": {"run.services.get"},
    "update_service": {"run.services.update", "run.operations.get"},
}
WORKER_METHODS = {"get_service", "update_service"}  # rollout/worker.py and fleet/deploy.py


@pytest.fixture(scope="module")
def module() -> Module:
    return Module.from_dir(TF_DIR)


def grants(module: Module, who: str) -> list:
    return [i for i in module.all_instances() if i.type.endswith("_iam_member") and identity_of(i.body.get("member")) == who]


def client_calls(path: Path) -> set[str]:
    """Methods called on `self._client` in one module."""
    calls = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "_client" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            calls.add(node.attr)
    return calls


def fleet_calls(path: Path) -> set[str]:
    """Fleet port methods (`fleet.X(` or `deps.fleet.X(`) a module calls."""
    return set(re.findall(r"\bfleet\.(\w+)\(", path.read_text()))


def published_topics(path: Path) -> set[str]:
    """`topics.X` constants a module sends or publishes to."""
    return set(re.findall(r"(?:send|publish)\([^()]*?topics\.([A-Z_]+)", path.read_text()))


# ------------------------------------------------------------------------------------ the worker


def test_the_worker_role_covers_exactly_the_cloud_run_calls_the_code_makes(module):
    assert client_calls(PACKAGE / "fleet" / "cloudrun.py") <= RUN_METHOD_PERMISSIONS.keys(), \
        "fleet/cloudrun.py calls a Cloud Run method this test does not know the permission of"
    worker_side = fleet_calls(PACKAGE / "rollout" / "worker.py") | fleet_calls(PACKAGE / "fleet" / "deploy.py")
    assert worker_side <= {"get_service", "update_images"}
    needed = set().union(*(RUN_METHOD_PERMISSIONS[m] for m in WORKER_METHODS))
    roles = [r for r in (custom_role(module, g.body["role"]) for g in grants(module, "worker")) if r is not None]
    assert len(roles) == 1
    (role,) = roles
    assert set(role.body["permissions"]) == needed == CUSTOM_ROLE_PERMISSIONS["worker"]
    assert not {"run.services.create", "run.services.delete"} & set(role.body["permissions"])
    assert "roles/run.developer" not in {g.body["role"] for g in grants(module, "worker")}


def test_the_worker_acts_as_every_runtime_account_and_reads_no_app_repository(module):
    roles = {(g.type, g.body["role"]) for g in grants(module, "worker")}
    # An update creates a revision running as the service's identity: actAs on it (Cloud Run docs).
    assert ("google_service_account_iam_member", "roles/iam.serviceAccountUser") in roles
    (act_as,) = [g for g in grants(module, "worker") if g.type == "google_service_account_iam_member"]
    assert act_as.body["for_each"] == "${local.fleet_runtime_service_accounts}"
    # The worker only HEADs the base tag (pipeline.current_digest); Cloud Run's agent pulls app images.
    readers = [g for g in grants(module, "worker") if g.type == "google_artifact_registry_repository_iam_member"]
    assert [g.body["for_each"] for g in readers] == ["${local.base_repositories}"]
    assert "registry" not in (PACKAGE / "fleet" / "deploy.py").read_text()


# ------------------------------------------------------------------------------------ publishing


def test_nothing_in_the_functions_publishes_a_roll_request_and_the_grants_follow(module):
    by_module = {p.relative_to(PACKAGE).as_posix(): published_topics(p) for p in PACKAGE.rglob("*.py")
                 if "cli" not in p.parts}
    assert "REQUESTS" not in set().union(*by_module.values()), by_module
    assert {"TASKS", "RESULTS"} <= by_module["rollout/step.py"] | by_module["rollout/planner.py"]
    assert by_module["rollout/worker.py"] == {"RESULTS"}
    planner_topics = {resolve_topic(module, g.body["topic"]) for g in grants(module, "planner")
                      if g.type == "google_pubsub_topic_iam_member"}
    assert planner_topics == PUBLISH_SCOPE["planner"]
    assert "baseroll-requests" not in planner_topics


# ------------------------------------------------------------------------------------ trigger and Pub/Sub agent


def test_the_trigger_only_invokes_and_the_pubsub_agent_mints_its_tokens(module):
    assert {g.body["role"] for g in grants(module, "trigger")} == {"roles/run.invoker"}
    (tokens,) = [g for g in grants(module, "pubsub-service-agent") if g.type == "google_service_account_iam_member"]
    assert tokens.body["role"] == "roles/iam.serviceAccountTokenCreator"
    assert tokens.body["service_account_id"] == '${google_service_account.baseroll["trigger"].name}'


# ------------------------------------------------------------------------------------ builder


def test_the_builder_gets_run_builder_only_when_asked(module):
    (grant,) = [g for g in grants(module, "builder") if g.body["role"] == "roles/run.builder"]
    assert grant.body["count"] == "${var.builder_run_builder ? 1 : 0}"
    assert module.variables["builder_run_builder"]["default"] is False
    assert grant.body["project"] == "${var.project_id}"


# ------------------------------------------------------------------------------------ source topics


def _created(condition: str, flags: dict[str, bool], key: str) -> bool:
    """Evaluate a source topic's for_each filter (`var.create_source_topics[key]`, maybe negated)."""
    m = re.search(r"\bif (!?)var\.create_source_topics\[key\]\s*\}", condition)
    assert m, condition
    return flags[key] != (m.group(1) == "!")


@pytest.mark.parametrize("gcr, cloud_builds", list(itertools.product([True, False], repeat=2)))
def test_each_source_topic_is_created_or_read_on_its_own(module, gcr, cloud_builds):
    flags = {"gcr": gcr, "cloud_builds": cloud_builds}
    created = module.blocks["resource"]["google_pubsub_topic"]["source"]["for_each"]
    read = module.blocks["data"]["google_pubsub_topic"]["source"]["for_each"]
    for key in ("gcr", "cloud_builds"):
        # Exactly one of the two declares it: created when its flag is set, read otherwise.
        assert (_created(created, flags, key), _created(read, flags, key)) == (flags[key], not flags[key])


def test_the_source_topic_switches_default_to_created():
    text = (TF_DIR / "variables.tf").read_text()
    block = text[text.index('variable "create_source_topics"'):]
    block = block[:block.index("\n}\n")]
    assert "gcr          = optional(bool, true)" in block
    assert "cloud_builds = optional(bool, true)" in block


# ------------------------------------------------------------------------------------ the README


def test_the_readme_cites_a_source_for_every_grant_decision():
    text = (TF_DIR / "README.md").read_text()
    section = text.split("## Identities", 1)[1].split("\n## ", 1)[0]
    for needle in ("eventarc/docs/roles-permissions", "run/docs/reference/iam/roles",
                   "run/docs/reference/iam/permissions", "run/docs/configuring/service-accounts",
                   "run/docs/configuring/services/build-service-account", "April 2021",
                   "baserollWorkerDeployer", "run.builder", "builder_run_builder"):
        assert needle in section, needle


# ------------------------------------------------------------------------------------ verify at zero traffic


def test_the_worker_may_invoke_fleet_services_only_when_verification_is_on(module):
    """roles/run.invoker in each fleet project, for the verification requests (fleet/verify.py), exactly
    when the config's rollout.verify.enabled is on: both follow var.verify_at_zero_traffic."""
    (grant,) = [g for g in grants(module, "worker") if g.body["role"] == "roles/run.invoker"]
    assert grant.type == "google_project_iam_member"
    assert grant.body["for_each"] == "${var.verify_at_zero_traffic ? toset(var.fleet_projects) : toset([])}"
    assert grant.body["project"] == "${each.value}"
    assert module.variables["verify_at_zero_traffic"]["default"] is True
    verify = module.locals["baseroll_config"]["rollout"]["verify"]
    assert verify == {"enabled": "${var.verify_at_zero_traffic}", "path": "${var.verify_path}"}
    # The code sends requests with an ID token (google-auth), which the invoker grant is for.
    assert "fetch_id_token_credentials" in (PACKAGE / "fleet" / "verify.py").read_text()
    assert not [g for g in grants(module, "planner") if g.body["role"] == "roles/run.invoker"]


@pytest.mark.parametrize("path, ok", [("/", True), ("/healthz?deep=1", True), ("healthz", False), ("/a b", False),
                                      ("/a#b", False)])
def test_verify_path_is_validated_as_the_config_does(module, path, ok):
    from baseroll.config.rollout import VERIFY_PATH

    condition = module.variables["verify_path"]["validation"]
    condition = (condition[0] if isinstance(condition, list) else condition)["condition"]
    pattern = re.search(r'regex\("(.+?)", var\.verify_path\)', condition).group(1)
    assert pattern == VERIFY_PATH.pattern
    assert bool(re.fullmatch(pattern, path)) is ok is bool(VERIFY_PATH.fullmatch(path))
