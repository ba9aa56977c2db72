"""infra/terraform checked against the code it deploys.

Terraform itself is not run here: every `*.tf` file is parsed with python-hcl2 and the
checkers below read the parsed blocks. `for_each` over a local object literal is expanded
(`each.key` / `each.value` substituted), so per-function facts are checked per function.
Each checker returns a list of problems; the last tests feed them small bad snippets to prove
they can fail.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import hcl2
import pytest
import yaml
from baseroll import config as config_mod

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
MAIN_PY = ROOT / "functions" / "main.py"
PACKAGE_DIR = ROOT / "functions" / "baseroll"
TFVARS_EXAMPLE = TF_DIR / "terraform.tfvars.example"

# Entry points the deployment is designed around. Terraform may declare these before
# functions/main.py defines them; any other Terraform-only entry point is an error.
PLANNED = frozenset({"on_artifact_push", "on_build_complete", "on_roll_request", "roll_service", "on_roll_result",
                     "notify_chat"})
# The topic that triggers each planned entry point, and the identity it runs as.
TRIGGER_TOPIC = {
    "on_artifact_push": "gcr",
    "on_build_complete": "cloud-builds",
    "on_roll_request": "baseroll-requests",
    "roll_service": "baseroll-tasks",
    "on_roll_result": "baseroll-results",
    "notify_chat": "baseroll-events",
}
RUNS_AS = {"roll_service": "worker", "notify_chat": "notifier"}  # every other entry point runs as the planner
CONFIGLESS = {"notify_chat"}  # reads only its own environment (the Chat webhook), not BASEROLL_CONFIG_YAML
EVENTS_TOPIC = "baseroll-events"  # rollout events: no baseroll function reads it (docs/EVENTS.md)
PLANNED_TOPICS = frozenset({"baseroll-requests", "baseroll-tasks", "baseroll-results"})

PUBSUB_EVENT = "google.cloud.pubsub.topic.v1.messagePublished"
MAX_TIMEOUT_S = 540  # event-driven gen2 functions

# The code's config schema (functions/baseroll/config.py), as rendered into BASEROLL_CONFIG_YAML.
CONFIG_KEYS = {"projects", "regions", "allowed_registries", "base_tracks", "labels", "rollout",
               "pubsub_project",  # else the code looks for its topics in the first fleet project
               "store"}  # the Firestore database of rollout records (store.tf)
LABEL_KEYS = {"opt_out", "cohort"}
ROLLOUT_KEYS = {"ready_timeout_s", "concurrency", "drift_policy", "waves", "failure_budget", "write_quota_per_min"}

# A grant of a google_project_iam_custom_role: its permissions are checked instead of its name.
CUSTOM_ROLE = "custom-role"
# The worker's Cloud Run calls (fleet/cloudrun.py): GetService, UpdateService and its operation.
CUSTOM_ROLE_PERMISSIONS = {"worker": {"run.services.get", "run.services.update", "run.operations.get"}}
# Identity => the (IAM resource type, role) pairs it may be granted. Adding a role, or granting
# one at a broader level (e.g. pubsub.publisher on the project), fails the test.
PUBSUB_AGENT = "pubsub-service-agent"
ALLOWED_GRANTS = {
    # No eventarc.eventReceiver: Eventarc needs none for direct Pub/Sub events.
    "trigger": {
        ("google_cloud_run_service_iam_member", "roles/run.invoker"),
    },
    "planner": {
        ("google_project_iam_member", "roles/run.viewer"),
        ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.reader"),
        ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.writer"),
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ("google_project_iam_member", "roles/datastore.user"),  # writes rollout records and lineage
    },
    "worker": {
        ("google_project_iam_member", CUSTOM_ROLE),  # its permissions: CUSTOM_ROLE_PERMISSIONS
        ("google_service_account_iam_member", "roles/iam.serviceAccountUser"),
        ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.reader"),
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ("google_project_iam_member", "roles/datastore.viewer"),  # only reads a rollout's status
        ("google_project_iam_member", "roles/run.invoker"),  # verify at zero traffic (var.verify_at_zero_traffic)
    },
    # The optional notify_chat function (notify.tf): the webhook secret, nothing else.
    "notifier": {
        ("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor"),
    },
    "builder": {
        ("google_project_iam_member", "roles/logging.logWriter"),
        ("google_project_iam_member", "roles/storage.objectViewer"),
        ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.writer"),
        ("google_project_iam_member", "roles/run.builder"),  # only with var.builder_run_builder
    },
    PUBSUB_AGENT: {
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber"),
        # Mints the trigger account's push tokens (projects that enabled Pub/Sub before 2021-04-08).
        ("google_service_account_iam_member", "roles/iam.serviceAccountTokenCreator"),
    },
}
# Topics each identity may publish to.
# The operator's signing-step topic (signatures.policy = require) is named by a variable.
SIGN_TOPIC_VAR = "${var.sign_request_topic}"
PUBLISH_SCOPE = {
    # Tasks and results only: the planner never publishes a roll request (test below).
    "planner": {"baseroll-tasks", "baseroll-results", EVENTS_TOPIC, SIGN_TOPIC_VAR},
    "worker": {"baseroll-results"},
    PUBSUB_AGENT: {f"{t}-dead-letter" for t in PLANNED_TOPICS | {"gcr", "cloud-builds"}},  # every trigger's
}
# Project-level roles that belong in the fleet projects (everything else stays in the host project).
FLEET_ROLES = {"roles/run.viewer", CUSTOM_ROLE, "roles/run.invoker"}
# Fleet-project roles granted only when a variable turns their feature on: role -> the for_each.
OPTIONAL_FLEET_GRANTS = {"roles/run.invoker": "${var.verify_at_zero_traffic ? toset(var.fleet_projects) : toset([])}"}
# Firestore roles can only be granted on the project: each must be conditioned on baseroll's database.
STORE_ROLES = {"roles/datastore.user", "roles/datastore.viewer"}
STORE_CONDITION = 'resource.name == "projects/${var.project_id}/databases/${local.firestore_database}"'
REQUIRED_APIS = {
    "run.googleapis.com", "cloudfunctions.googleapis.com", "cloudbuild.googleapis.com", "eventarc.googleapis.com",
    "pubsub.googleapis.com", "artifactregistry.googleapis.com", "cloudscheduler.googleapis.com", "iam.googleapis.com",
    "firestore.googleapis.com",
}
SWEEP_MESSAGE = {"schema": "baseroll.dev/roll-request/v1", "action": "sweep"}

_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)


# ------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Instance:
    kind: str  # resource | data
    type: str
    name: str
    key: str | None  # for_each key; None without for_each; "*" when for_each is not a local literal
    body: dict[str, Any]

    @property
    def address(self) -> str:
        prefix = "data." if self.kind == "data" else ""
        suffix = "" if self.key is None else f"[{self.key!r}]"
        return f"{prefix}{self.type}.{self.name}{suffix}"


class Module:
    """All `*.tf` files of one directory, merged."""

    def __init__(self, texts: dict[str, str]):
        self.blocks: dict[str, dict[str, dict[str, Any]]] = {"resource": {}, "data": {}}
        self.locals: dict[str, Any] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.raw: list[dict[str, Any]] = []
        for filename, text in sorted(texts.items()):
            doc = hcl2.loads(text, serialization_options=_OPTIONS)
            self.raw.append(doc)
            for kind in ("resource", "data"):
                for entry in doc.get(kind, []):
                    for type_, named in entry.items():
                        for name, body in named.items():
                            seen = self.blocks[kind].setdefault(type_, {})
                            assert name not in seen, f"{filename}: {kind} {type_}.{name} declared twice"
                            seen[name] = body
            for entry in doc.get("locals", []):
                for name, value in entry.items():
                    assert name not in self.locals, f"{filename}: local.{name} declared twice"
                    self.locals[name] = value
            for entry in doc.get("variable", []):
                self.variables.update(entry)
            for entry in doc.get("output", []):
                self.outputs.update(entry)

    @classmethod
    def from_dir(cls, path: Path) -> "Module":
        return cls({p.name: p.read_text() for p in sorted(path.glob("*.tf"))})

    def instances(self, type_: str, kind: str = "resource") -> Iterator[Instance]:
        for name, body in self.blocks[kind].get(type_, {}).items():
            for_each = body.get("for_each")
            if for_each is None:
                yield Instance(kind, type_, name, None, body)
                continue
            source = self.for_each_source(for_each) or literal_set(for_each)
            if source is None:
                yield Instance(kind, type_, name, "*", body)
                continue
            for key, value in source.items():
                yield Instance(kind, type_, name, key, substitute(body, key, value))

    def for_each_source(self, expr: Any) -> dict[str, Any] | None:
        """The local object a for_each iterates, when it names exactly one (a trailing `if` only narrows it)."""
        if not isinstance(expr, str):
            return None
        names = set(re.findall(r"\blocal\.(\w+)", expr))
        if len(names) == 1:
            value = self.locals.get(names.pop())
            if isinstance(value, dict):
                return value
            return self.for_each_source(value)  # a local that is itself one local, or a merge of locals
        m = re.fullmatch(r"\$\{merge\(((?:local\.\w+,\s*)*local\.\w+)\)\}", expr)
        if m:
            parts = [self.locals.get(name) for name in re.findall(r"local\.(\w+)", m.group(1))]
            return {k: v for part in parts if isinstance(part, dict) for k, v in part.items()} or None
        return None

    def all_instances(self) -> Iterator[Instance]:
        for kind in ("resource", "data"):
            for type_ in self.blocks[kind]:
                yield from self.instances(type_, kind)

    def dump(self) -> str:
        return json.dumps(self.raw)


def literal_set(expr: Any) -> dict[str, str] | None:
    """A for_each over a literal set of strings, `toset(["a", "b"])`: each element is key and value."""
    m = re.fullmatch(r"\$\{toset\((\[[^\]]*\])\)\}", expr) if isinstance(expr, str) else None
    if not m:
        return None
    try:
        items = json.loads(m.group(1))
    except ValueError:
        return None
    return {i: i for i in items} if all(isinstance(i, str) for i in items) else None


def substitute(value: Any, key: str, each_value: Any) -> Any:
    """Replace each.key / each.value(.attr) by their literal values for one for_each instance."""
    if isinstance(value, dict):
        return {k: substitute(v, key, each_value) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, key, each_value) for v in value]
    if not isinstance(value, str) or "each." not in value:
        return value

    def literal(attr: str | None) -> str | None:
        v = each_value if attr is None else (each_value.get(attr) if isinstance(each_value, dict) else None)
        return v if isinstance(v, str) and "${" not in v else None

    def interpolation(m: re.Match[str]) -> str:
        attr = m.group(2)
        if m.group(1) == "key":
            return key
        v = literal(attr)
        return v if v is not None else m.group(0)

    text = re.sub(r"\$\{each\.(key|value)(?:\.(\w+))?\}", interpolation, value)

    def reference(m: re.Match[str]) -> str:
        if m.group(1) == "key":
            return json.dumps(key)
        v = literal(m.group(2))
        return json.dumps(v) if v is not None else m.group(0)

    return re.sub(r"\beach\.(key|value)(?:\.(\w+))?\b", reference, text)


def first(block: Any) -> dict[str, Any]:
    """A nested block as parsed (a one-element list), or {} when absent."""
    if isinstance(block, list) and block and isinstance(block[0], dict):
        return block[0]
    return block if isinstance(block, dict) else {}


def is_literal(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and "${" not in str(value)


# ------------------------------------------------------------------------------------ resolution


def identity_of(expr: Any) -> str | None:
    """Which service account an expression (an email, an IAM member) names."""
    if not isinstance(expr, str):
        return None
    m = re.search(r"google_service_account\.\w+\[\"([\w-]+)\"\]", expr)
    if m:
        return m.group(1)
    m = re.search(r"google_service_account\.(\w+)(?:\[0\])?\.(?:email|id|name|member)\b", expr)
    if m:
        return m.group(1)
    if "local.pubsub_service_agent" in expr or "@gcp-sa-pubsub.iam.gserviceaccount.com" in expr:
        return PUBSUB_AGENT
    return None


def topic_names(module: Module) -> dict[tuple[str, str, str | None], str]:
    """(kind, name, key) of every google_pubsub_topic resource or data source => its resolved name."""
    out = {}
    for kind in ("resource", "data"):
        for inst in module.instances("google_pubsub_topic", kind):
            name = inst.body.get("name")
            if is_literal(name):
                out[(kind, inst.name, inst.key)] = name
    return out


def declared_topics(module: Module) -> set[str]:
    return set(topic_names(module).values())


def resolve_topic(module: Module, expr: Any) -> str | None:
    """The topic name an expression refers to: a literal id/name, a topic resource or data
    source attribute, or an entry of a local map keyed by topic name."""
    if not isinstance(expr, str):
        return None
    if "${" not in expr:
        return expr.rsplit("/", 1)[-1]
    if expr == SIGN_TOPIC_VAR:
        return SIGN_TOPIC_VAR
    m = re.fullmatch(r"\$\{(data\.)?google_pubsub_topic\.(\w+)(?:\[\"([^\"]+)\"\]|\[0\])?\.(?:id|name)\}", expr)
    if m:
        return topic_names(module).get(("data" if m.group(1) else "resource", m.group(2), m.group(3)))
    m = re.fullmatch(r"\$\{local\.(\w*topic\w*)\[\"([^\"]+)\"\]\}", expr)
    if m:
        return m.group(2)
    return None


def config_object(module: Module, expr: Any) -> dict[str, Any] | None:
    """The local object literal behind BASEROLL_CONFIG_YAML (= yamlencode(local.X), directly or via a local)."""
    for _ in range(3):
        if not isinstance(expr, str):
            return None
        m = re.fullmatch(r"\$\{yamlencode\(local\.(\w+)\)\}", expr)
        if m:
            value = module.locals.get(m.group(1))
            return value if isinstance(value, dict) else None
        m = re.fullmatch(r"\$\{local\.(\w+)\}", expr)
        if not m:
            return None
        expr = module.locals.get(m.group(1))
    return None


# ------------------------------------------------------------------------------------ the code side


def cloud_event_entry_points(source: str) -> set[str]:
    """Top-level functions decorated with functions_framework.cloud_event (however it was imported)."""
    tree = ast.parse(source)
    module_aliases = {"functions_framework"}
    decorator_aliases: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            module_aliases |= {a.asname or a.name for a in node.names if a.name == "functions_framework"}
        elif isinstance(node, ast.ImportFrom) and node.module == "functions_framework":
            decorator_aliases |= {a.asname or a.name for a in node.names if a.name == "cloud_event"}
    found = set()
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if (isinstance(target, ast.Attribute) and target.attr == "cloud_event"
                    and isinstance(target.value, ast.Name) and target.value.id in module_aliases):
                found.add(node.name)
            elif isinstance(target, ast.Name) and target.id in decorator_aliases:
                found.add(node.name)
    return found


_TOPIC_VALUE = re.compile(r"^baseroll-[a-z-]+$")


def code_topics(package_dir: Path) -> set[str] | None:
    """Topic names the code uses: every module-level string constant of topics.py, plus
    module-level `baseroll-*` constants whose name contains TOPIC anywhere in the package.
    None when the code declares no topic names yet."""
    found: set[str] = set()
    topics_py = package_dir / "contracts" / "topics.py"
    if topics_py.exists():
        for node in ast.parse(topics_py.read_text()).body:
            if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                found.add(node.value.value)
    for path in sorted(package_dir.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str) and _TOPIC_VALUE.match(value.value)):
                continue
            if any(isinstance(t, ast.Name) and "TOPIC" in t.id.upper() for t in targets):
                found.add(value.value)
    return found if (found or topics_py.exists()) else None


# ------------------------------------------------------------------------------------ checkers


def functions(module: Module) -> list[Instance]:
    return list(module.instances("google_cloudfunctions2_function"))


def entry_point(inst: Instance) -> str | None:
    ep = first(inst.body.get("build_config")).get("entry_point")
    return ep if is_literal(ep) else None


def check_entry_points(module: Module, in_main: set[str]) -> list[str]:
    problems = []
    declared: dict[str, Instance] = {}
    for inst in functions(module):
        ep = entry_point(inst)
        if ep is None:
            problems.append(f"{inst.address}: entry_point is not resolvable to a name")
        else:
            declared[ep] = inst
    for missing in sorted(in_main - declared.keys()):
        problems.append(f"functions/main.py defines {missing} but no google_cloudfunctions2_function deploys it")
    # Terraform may run ahead of main.py only for the planned entry points.
    for extra in sorted(declared.keys() - in_main - PLANNED):
        problems.append(f"terraform deploys entry point {extra}, which is neither in functions/main.py nor planned")
    return problems


def check_functions(module: Module) -> list[str]:
    problems = []
    topics = declared_topics(module)
    fns = functions(module)
    if not fns:
        problems.append("no google_cloudfunctions2_function declared")
    for inst in fns:
        where = inst.address
        ep = entry_point(inst)
        build = first(inst.body.get("build_config"))
        service = first(inst.body.get("service_config"))
        trigger = first(inst.body.get("event_trigger"))
        if build.get("runtime") != "python311":
            problems.append(f"{where}: runtime must be python311, got {build.get('runtime')!r}")
        if (build.get("environment_variables") or {}).get("GOOGLE_FUNCTION_SOURCE") != "functions/main.py":
            problems.append(f"{where}: build_config.environment_variables.GOOGLE_FUNCTION_SOURCE must be functions/main.py")
        if not first(first(build.get("source")).get("storage_source")).get("object"):
            problems.append(f"{where}: build_config.source.storage_source.object is missing")
        timeout = service.get("timeout_seconds")
        if not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT_S:
            problems.append(f"{where}: timeout_seconds must be a literal <= {MAX_TIMEOUT_S}, got {timeout!r}")
        if service.get("ingress_settings") != "ALLOW_INTERNAL_ONLY":
            problems.append(f"{where}: ingress_settings must be ALLOW_INTERNAL_ONLY, got {service.get('ingress_settings')!r}")
        if "max_instance_count" not in service:
            problems.append(f"{where}: max_instance_count must be set")
        runs_as = identity_of(service.get("service_account_email"))
        if runs_as is None:
            problems.append(f"{where}: service_config.service_account_email must name a google_service_account "
                            f"(not the default compute account), got {service.get('service_account_email')!r}")
        elif ep in PLANNED and runs_as != RUNS_AS.get(ep, "planner"):
            problems.append(f"{where}: runs as {runs_as}, expected {RUNS_AS.get(ep, 'planner')}")
        if ep not in CONFIGLESS and config_object(
                module, (service.get("environment_variables") or {}).get("BASEROLL_CONFIG_YAML")) is None:
            problems.append(f"{where}: BASEROLL_CONFIG_YAML must be yamlencode(local.<object literal>)")
        if not trigger:
            problems.append(f"{where}: no event_trigger")
            continue
        if trigger.get("event_type") != PUBSUB_EVENT:
            problems.append(f"{where}: event_type must be {PUBSUB_EVENT}, got {trigger.get('event_type')!r}")
        if trigger.get("retry_policy") != "RETRY_POLICY_RETRY":
            problems.append(f"{where}: retry_policy must be RETRY_POLICY_RETRY, got {trigger.get('retry_policy')!r}")
        topic = resolve_topic(module, trigger.get("pubsub_topic"))
        if topic is None or topic not in topics:
            problems.append(f"{where}: pubsub_topic {trigger.get('pubsub_topic')!r} is not a declared topic")
        elif ep in TRIGGER_TOPIC and topic != TRIGGER_TOPIC[ep]:
            problems.append(f"{where}: {ep} must be triggered by {TRIGGER_TOPIC[ep]}, got {topic}")
        fires_as = identity_of(trigger.get("service_account_email"))
        if fires_as != "trigger":
            problems.append(f"{where}: event_trigger.service_account_email must be the trigger account, got {fires_as!r}")
    return problems


def check_topics(module: Module, from_code: set[str] | None) -> list[str]:
    declared = declared_topics(module)
    wanted = set(PLANNED_TOPICS) | {f"{t}-dead-letter" for t in PLANNED_TOPICS} | {"gcr", "cloud-builds", EVENTS_TOPIC}
    problems = [f"topic {t} is not declared in terraform" for t in sorted(wanted - declared)]
    for topic in sorted((from_code or set()) - declared):
        problems.append(f"the code publishes to {topic}, which terraform does not declare")
    return problems


def check_nothing_public(module: Module) -> list[str]:
    text = module.dump()
    problems = [f"{who} appears in the terraform" for who in ("allUsers", "allAuthenticatedUsers") if who in text]
    problems += [f"primitive role {r} appears in the terraform"
                 for r in sorted(set(re.findall(r"\broles/(?:owner|editor|viewer)\b", text)))]
    for inst in module.all_instances():
        if inst.type.endswith(("_iam_binding", "_iam_policy")):
            problems.append(f"{inst.address}: authoritative IAM ({inst.type}) could strip others' access; use _iam_member")
    return problems


def check_iam(module: Module) -> list[str]:
    problems = []
    for inst in module.all_instances():
        if not inst.type.endswith("_iam_member"):
            continue
        where, role, member = inst.address, inst.body.get("role"), inst.body.get("member")
        custom = custom_role(module, role)
        if custom is not None:
            problems += _check_custom_role(where, identity_of(member), custom)
            role = CUSTOM_ROLE
        elif not is_literal(role):
            problems.append(f"{where}: role must be a literal so it can be checked, got {role!r}")
            continue
        who = identity_of(member)
        if who is None:
            problems.append(f"{where}: member {member!r} is not one of baseroll's identities")
            continue
        if (inst.type, role) not in ALLOWED_GRANTS.get(who, set()):
            problems.append(f"{where}: {who} may not hold {role} via {inst.type}")
            continue
        if inst.type == "google_pubsub_topic_iam_member":
            topic = resolve_topic(module, inst.body.get("topic"))
            if topic not in PUBLISH_SCOPE.get(who, set()):
                problems.append(f"{where}: {who} may not publish to {topic or inst.body.get('topic')!r}")
        if inst.type == "google_project_iam_member":
            project, for_each = inst.body.get("project"), inst.body.get("for_each")
            if role in FLEET_ROLES:
                # Each fleet project, or (an optional grant) each of them when its switch is on.
                fleet_sets = {"${toset(var.fleet_projects)}", OPTIONAL_FLEET_GRANTS.get(role)}
                if for_each not in fleet_sets or project != "${each.value}":
                    problems.append(f"{where}: {role} belongs in each fleet project (for_each over var.fleet_projects)")
            elif project != "${var.project_id}":
                problems.append(f"{where}: {role} must stay in the host project (var.project_id), got {project!r}")
            if role in STORE_ROLES and _condition(inst).get("expression") != STORE_CONDITION:
                problems.append(f"{where}: {role} must be conditioned on baseroll's database only ({STORE_CONDITION})")
        if inst.type == "google_cloud_run_service_iam_member":
            if "google_cloudfunctions2_function." not in str(inst.body.get("service")):
                problems.append(f"{where}: run.invoker must be granted on a function's own service")
    return problems


def custom_role(module: Module, role: Any) -> Instance | None:
    """The google_project_iam_custom_role a grant's role refers to (`...custom_role.X[...].name`)."""
    m = re.fullmatch(r"\$\{google_project_iam_custom_role\.(\w+)(?:\[[^\]]+\])?\.(?:name|id)\}", role) \
        if isinstance(role, str) else None
    if not m:
        return None
    return next((i for i in module.instances("google_project_iam_custom_role") if i.name == m.group(1)), None)


def _check_custom_role(where: str, who: str | None, role: Instance) -> list[str]:
    permissions = set(role.body.get("permissions") or [])
    extra = permissions - CUSTOM_ROLE_PERMISSIONS.get(who or "", set())
    problems = [f"{where}: {who} may not hold {sorted(extra)} via {role.address}"] if extra else []
    if role.body.get("for_each") != "${toset(var.fleet_projects)}" or role.body.get("project") != "${each.value}":
        problems.append(f"{where}: {role.address} must be defined in each fleet project")
    return problems


def _condition(inst: Instance) -> dict[str, Any]:
    block = inst.body.get("condition")
    return first(block) if block else {}


def check_config_keys(obj: dict[str, Any] | None) -> list[str]:
    if obj is None:
        return ["no config object found behind BASEROLL_CONFIG_YAML"]
    problems = [f"config lacks key {k}" for k in sorted(CONFIG_KEYS - obj.keys())]
    problems += [f"config.labels lacks {k}" for k in sorted(LABEL_KEYS - (obj.get("labels") or {}).keys())]
    problems += [f"config.rollout lacks {k}" for k in sorted(ROLLOUT_KEYS - (obj.get("rollout") or {}).keys())]
    return problems


def variable_values(module: Module, tfvars: dict[str, Any]) -> dict[str, Any]:
    values = {name: body["default"] for name, body in module.variables.items() if "default" in body}
    values.update(tfvars)
    return values


def render(obj: Any, values: dict[str, Any], locals_: dict[str, Any] | None = None) -> Any:
    """Evaluate a config object made of literals, `var.X` and `local.X` references, and string
    templates of those; anything else is refused so the test never guesses what Terraform does."""
    locals_ = locals_ or {}
    if isinstance(obj, dict):
        return {k: render(v, values, locals_) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render(v, values, locals_) for v in obj]
    if not (isinstance(obj, str) and "${" in obj):
        return obj

    def lookup(ref: str) -> Any:
        kind, name = ref.split(".", 1)
        if kind == "var":
            if name not in values:
                raise ValueError(f"var.{name} has no default and no value in terraform.tfvars.example")
            return values[name]
        if name not in locals_:
            raise ValueError(f"local.{name} is not declared")
        return render(locals_[name], values, locals_)

    m = re.fullmatch(r"\$\{((?:var|local)\.\w+)\}", obj)
    if m:
        return lookup(m.group(1))
    pieces = re.split(r"\$\{([^}]*)\}", obj)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            out.append(piece)
        elif re.fullmatch(r"(?:var|local)\.\w+", piece) and isinstance(lookup(piece), (str, int, float)):
            out.append(str(lookup(piece)))
        else:
            raise ValueError(f"config value {obj!r} is not a plain var/local reference or template of them")
    return "".join(out)


def references(module: Module) -> list[str]:
    """Undeclared var./local./resource/data references (what `terraform validate` would reject)."""
    text = module.dump()
    problems = []
    for name in sorted(set(re.findall(r"\bvar\.(\w+)", text)) - module.variables.keys()):
        problems.append(f"var.{name} is used but not declared")
    for name in sorted(set(re.findall(r"\blocal\.(\w+)", text)) - module.locals.keys()):
        problems.append(f"local.{name} is used but not declared")
    for type_, name in sorted(set(re.findall(r"(?<![\w.])((?:google|terraform)_[a-z0-9_]+)\.([a-z0-9_]+)", text))):
        if name not in module.blocks["resource"].get(type_, {}):
            problems.append(f"{type_}.{name} is referenced but not declared")
    for type_, name in sorted(set(re.findall(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)", text))):
        if name not in module.blocks["data"].get(type_, {}):
            problems.append(f"data.{type_}.{name} is referenced but not declared")
    return problems


def glob_regex(pattern: str) -> re.Pattern[str]:
    """archive_file's excludes: doublestar globs relative to source_dir."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def archived(files: list[str], excludes: list[str]) -> set[str]:
    """The files archive_file keeps: a file goes when it or one of its parent directories matches."""
    patterns = [glob_regex(p) for p in excludes]
    kept = set()
    for f in files:
        parts = f.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if not any(p.fullmatch(x) for p in patterns for x in prefixes):
            kept.add(f)
    return kept


# ------------------------------------------------------------------------------------ tests: the real module


@pytest.fixture(scope="module")
def module() -> Module:
    return Module.from_dir(TF_DIR)


@pytest.fixture(scope="module")
def tfvars() -> dict[str, Any]:
    return hcl2.loads(TFVARS_EXAMPLE.read_text(), serialization_options=_OPTIONS)


def test_every_tf_file_parses(module):
    assert list(TF_DIR.glob("*.tf")), "no terraform files"
    assert functions(module)


def test_entry_points_match_functions_main_py(module):
    in_main = cloud_event_entry_points(MAIN_PY.read_text())
    assert in_main, "functions/main.py defines no cloud_event entry point"
    assert check_entry_points(module, in_main) == []


def test_planned_entry_points_are_all_deployed(module):
    assert {entry_point(f) for f in functions(module)} == PLANNED


def test_functions_load_and_run_like_local_functions_framework(module):
    assert check_functions(module) == []


def test_topics_the_code_publishes_to_are_declared(module):
    from_code = code_topics(PACKAGE_DIR)
    # Until the code names its topics (functions/baseroll/topics.py), the planned names must exist.
    assert PLANNED_TOPICS <= declared_topics(module)
    assert check_topics(module, from_code) == []


def test_nothing_is_public_and_no_primitive_roles(module):
    assert check_nothing_public(module) == []


def test_every_grant_is_on_its_identity_allow_list(module):
    assert check_iam(module) == []
    granted = {identity_of(i.body.get("member")) for i in module.all_instances() if i.type.endswith("_iam_member")}
    assert {"trigger", "planner", "worker", "builder", PUBSUB_AGENT} <= granted


def test_invoker_is_granted_on_every_function(module):
    invokers = [i for i in module.instances("google_cloud_run_service_iam_member") if i.body.get("role") == "roles/run.invoker"]
    assert {i.key for i in invokers} == {f.key for f in functions(module)}


def test_config_yaml_has_the_code_schema_keys(module):
    for fn in functions(module):
        if entry_point(fn) in CONFIGLESS:
            continue
        env = first(fn.body["service_config"]).get("environment_variables") or {}
        assert check_config_keys(config_object(module, env.get("BASEROLL_CONFIG_YAML"))) == []


def test_config_rendered_from_example_tfvars_passes_the_code_validator(module, tfvars):
    fn = next(f for f in functions(module) if entry_point(f) not in CONFIGLESS)
    env = first(fn.body["service_config"])["environment_variables"]
    doc = render(config_object(module, env["BASEROLL_CONFIG_YAML"]), variable_values(module, tfvars), module.locals)
    cfg = config_mod.load({"BASEROLL_CONFIG_YAML": yaml.safe_dump(doc)})
    assert cfg.projects == tuple(tfvars["fleet_projects"])
    assert doc["pubsub_project"] == tfvars["project_id"]  # the topics live in the host project
    assert {t.name for t in cfg.base_tracks} == {t["name"] for t in tfvars["base_tracks"]}
    assert doc["rollout"]["waves"] == [0.01, 0.1, 0.5, 1.0]
    assert doc["rollout"]["write_quota_per_min"] == 60
    # Records live in the host project's own Firestore database, the one store.tf creates.
    assert (cfg.record_project, cfg.store_database) == (tfvars["project_id"], module.locals["firestore_database"])


def test_the_rollout_store_is_a_native_firestore_database_kept_on_destroy(module):
    (db,) = module.instances("google_firestore_database")
    assert db.body["type"] == "FIRESTORE_NATIVE"
    assert db.body["name"] == "${local.firestore_database}" and db.body["project"] == "${var.project_id}"
    assert (db.body["delete_protection_state"], db.body["deletion_policy"]) == ("DELETE_PROTECTION_ENABLED", "ABANDON")


def test_store_grants_planner_writes_and_worker_reads_only(module):
    grants = {(identity_of(i.body["member"]), i.body["role"]) for i in module.instances("google_project_iam_member")
              if i.body["role"] in STORE_ROLES}
    assert grants == {("planner", "roles/datastore.user"), ("worker", "roles/datastore.viewer")}
    assert not [i.address for i in module.all_instances() if "artifact_registry_repository" in i.type
                and "state" in i.address], "the registry no longer holds rollout records"


def test_example_tfvars_sets_only_declared_variables_and_every_required_one(module, tfvars):
    assert set(tfvars) <= module.variables.keys()
    required = {n for n, body in module.variables.items() if "default" not in body}
    assert required <= set(tfvars)


def test_variable_defaults(module):
    defaults = {n: b.get("default") for n, b in module.variables.items()}
    assert defaults["waves"] == [0.01, 0.1, 0.5, 1.0]
    assert defaults["failure_budget"] == 1
    assert defaults["write_quota_per_minute"] == 60
    assert defaults["create_source_topics"] == {}  # each source topic defaults to created (next test)
    assert defaults["builder_run_builder"] is False
    assert defaults["sweep_schedule"] == "0 */6 * * *"
    for name in ("project_id", "region", "fleet_projects", "fleet_regions", "base_tracks", "base_repositories",
                 "app_repositories", "allowed_registries", "canary_label", "opt_out_label", "max_instances",
                 "fleet_runtime_service_accounts"):
        assert name in module.variables, name


def test_every_reference_is_declared(module):
    assert references(module) == []


def test_source_archive_ships_the_functions_and_top_level_requirements(module):
    (archive,) = module.instances("archive_file", "data")
    assert archive.body["source_dir"].endswith("/../..")
    files = [".git/HEAD", ".venv/lib/python3.11/site-packages/x.py"]  # stand-ins: these trees are not walked
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
        files += [Path(dirpath, f).relative_to(ROOT).as_posix() for f in filenames]
    kept = archived(files, archive.body["excludes"])
    assert {"requirements.txt", "functions/main.py", "functions/baseroll/config/__init__.py"} <= kept
    for prefix in (".venv/", ".git/", "tests/", "infra/", ".ci/"):
        assert not [f for f in kept if f.startswith(prefix)], prefix
    assert not [f for f in kept if "__pycache__" in f]
    (obj,) = module.instances("google_storage_bucket_object")
    assert "output_md5" in obj.body["name"], "object must be named by content so changes redeploy"


def test_scheduler_publishes_a_sweep_to_the_request_topic(module):
    (job,) = module.instances("google_cloud_scheduler_job")
    target = first(job.body["pubsub_target"])
    assert resolve_topic(module, target["topic_name"]) == "baseroll-requests"
    m = re.fullmatch(r"\$\{base64encode\(jsonencode\(local\.(\w+)\)\)\}", target["data"])
    assert m and module.locals[m.group(1)] == SWEEP_MESSAGE
    attributes = render(target.get("attributes") or {}, {}, module.locals)
    requests = importlib.import_module("baseroll.contracts.requests")
    # The code's own request parser accepts the message exactly as the scheduler publishes it.
    message = requests.message(json.dumps(SWEEP_MESSAGE).encode(), attributes, "sweep-1")
    assert requests.parse_request(message).action == "sweep"
    assert job.body["schedule"] == "${var.sweep_schedule}"


def test_required_apis_are_enabled(module):
    # One instance per API of its literal set.
    assert REQUIRED_APIS <= {i.body["service"] for i in module.instances("google_project_service")}


def test_outputs(module):
    text = json.dumps(module.outputs)
    for needle in ("google_pubsub_topic.baseroll", "google_pubsub_topic.dead_letter", "google_cloudfunctions2_function",
                   "google_service_account", "uri"):
        assert needle in text, needle


# ------------------------------------------------------------------------------------ tests: the checkers can fail

GOOD = """
locals {
  functions = {
    on_artifact_push = { topic = "gcr", identity = "planner" }
  }
  cfg = {
    projects = var.p
    regions = var.r
    allowed_registries = var.a
    base_tracks = var.b
    pubsub_project = var.h
    store = { project = var.h, database = "baseroll" }
    labels = { opt_out = "x", cohort = "y" }
    rollout = { ready_timeout_s = 1, concurrency = 1, drift_policy = "ignore", waves = [1], failure_budget = 1, write_quota_per_min = 60 }
  }
  topic_ids = {}
}
resource "google_service_account" "baseroll" {
  for_each = toset(["planner", "trigger"])
  account_id = "baseroll-${each.key}"
}
resource "google_pubsub_topic" "gcr" { name = "gcr" }
resource "google_cloudfunctions2_function" "baseroll" {
  for_each = local.functions
  name = "baseroll-${each.key}"
  build_config {
    runtime = "python311"
    entry_point = each.key
    environment_variables = { GOOGLE_FUNCTION_SOURCE = "functions/main.py" }
    source {
      storage_source {
        bucket = "b"
        object = "o"
      }
    }
  }
  service_config {
    timeout_seconds = 540
    max_instance_count = 1
    ingress_settings = "ALLOW_INTERNAL_ONLY"
    service_account_email = google_service_account.baseroll[each.value.identity].email
    environment_variables = { BASEROLL_CONFIG_YAML = yamlencode(local.cfg) }
  }
  event_trigger {
    event_type = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic = local.topic_ids[each.value.topic]
    retry_policy = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.baseroll["trigger"].email
  }
}
"""


def snippet(text: str) -> Module:
    return Module({"main.tf": text})


def test_the_good_snippet_passes():
    m = snippet(GOOD)
    assert check_functions(m) == []
    assert check_entry_points(m, {"on_artifact_push"}) == []
    assert check_config_keys(config_object(m, "${yamlencode(local.cfg)}")) == []


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ('GOOGLE_FUNCTION_SOURCE = "functions/main.py"', 'GOOGLE_FUNCTION_SOURCE = "main.py"', "GOOGLE_FUNCTION_SOURCE"),
        ("timeout_seconds = 540", "timeout_seconds = 3600", "timeout_seconds"),
        ('"ALLOW_INTERNAL_ONLY"', '"ALLOW_ALL"', "ingress_settings"),
        ('"RETRY_POLICY_RETRY"', '"RETRY_POLICY_DO_NOT_RETRY"', "retry_policy"),
        ("service_account_email = google_service_account.baseroll[each.value.identity].email",
         'service_account_email = "123-compute@developer.gserviceaccount.com"', "default compute"),
        ('{ topic = "gcr", identity = "planner" }', '{ topic = "gcr", identity = "worker" }', "expected planner"),
        ('{ topic = "gcr", identity = "planner" }', '{ topic = "nope", identity = "planner" }', "not a declared topic"),
        ('runtime = "python311"', 'runtime = "python39"', "python311"),
        ("yamlencode(local.cfg)", 'yamlencode({ projects = "x" })', "BASEROLL_CONFIG_YAML"),
    ],
)
def test_check_functions_flags(old, new, needle):
    assert old in GOOD
    problems = check_functions(snippet(GOOD.replace(old, new)))
    assert any(needle in p for p in problems), problems


def test_check_functions_flags_a_function_without_trigger():
    start = GOOD.index("  event_trigger {")
    problems = check_functions(snippet(GOOD[:start] + "}\n"))
    assert any("no event_trigger" in p for p in problems), problems


def test_check_entry_points_flags_both_directions():
    m = snippet(GOOD)
    assert any("roll_service" in p for p in check_entry_points(m, {"on_artifact_push", "roll_service"}))
    rogue = snippet(GOOD.replace("on_artifact_push = {", "debug_shell = {"))
    problems = check_entry_points(rogue, {"on_artifact_push"})
    assert any("debug_shell" in p and "neither" in p for p in problems), problems
    assert any("on_artifact_push" in p for p in problems), problems
    # A planned entry point may be deployed before main.py defines it.
    planned = snippet(GOOD.replace("on_artifact_push = {", "on_roll_result = {"))
    assert [p for p in check_entry_points(planned, set()) if "on_roll_result" in p] == []


def test_check_topics_flags_missing_and_code_only_topics():
    problems = check_topics(snippet(GOOD), {"baseroll-audit"})
    assert any("baseroll-requests is not declared" in p for p in problems), problems
    assert any("baseroll-audit" in p for p in problems), problems


@pytest.mark.parametrize(
    "hcl, needle",
    [
        ('resource "google_cloud_run_service_iam_member" "x" {\n  role = "roles/run.invoker"\n  member = "allUsers"\n}', "allUsers"),
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/editor"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "roles/editor"),
        ('resource "google_project_iam_binding" "x" {\n  role = "roles/run.viewer"\n  members = []\n}', "authoritative"),
    ],
)
def test_check_nothing_public_flags(hcl, needle):
    problems = check_nothing_public(snippet(hcl))
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    "hcl, needle",
    [
        # A broad role for the worker.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/run.admin"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "may not hold roles/run.admin"),
        # The right role at the wrong level: publisher on the whole project.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/pubsub.publisher"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["planner"].email}"\n}', "may not hold roles/pubsub.publisher"),
        # The worker publishing to the task topic.
        ('resource "google_pubsub_topic" "t" {\n  name = "baseroll-tasks"\n}\n'
         'resource "google_pubsub_topic_iam_member" "x" {\n  topic = google_pubsub_topic.t.name\n  role = "roles/pubsub.publisher"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "may not publish to 'baseroll-tasks'"),
        # Fleet role granted in the host project only.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/run.viewer"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["planner"].email}"\n}', "fleet project"),
        # Cloud Run Developer for the worker: it could create and delete services.
        ('resource "google_project_iam_member" "x" {\n  for_each = toset(var.fleet_projects)\n  project = each.value\n'
         '  role = "roles/run.developer"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "may not hold roles/run.developer"),
        # The worker's custom role with a permission no call of the code needs.
        ('resource "google_project_iam_custom_role" "r" {\n  for_each = toset(var.fleet_projects)\n  project = each.value\n'
         '  role_id = "r"\n  permissions = ["run.services.get", "run.services.delete"]\n}\n'
         'resource "google_project_iam_member" "x" {\n  for_each = toset(var.fleet_projects)\n  project = each.value\n'
         '  role = google_project_iam_custom_role.r[each.value].name\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "run.services.delete"),
        # The worker's custom role defined in the host project only.
        ('resource "google_project_iam_custom_role" "r" {\n  project = var.project_id\n'
         '  role_id = "r"\n  permissions = ["run.services.get"]\n}\n'
         'resource "google_project_iam_member" "x" {\n  for_each = toset(var.fleet_projects)\n  project = each.value\n'
         '  role = google_project_iam_custom_role.r.name\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "defined in each fleet project"),
        # The planner publishing roll requests, which it never does.
        ('resource "google_pubsub_topic" "t" {\n  for_each = toset(["baseroll-requests"])\n  name = each.value\n}\n'
         'resource "google_pubsub_topic_iam_member" "x" {\n  for_each = toset(["baseroll-requests"])\n'
         '  topic = google_pubsub_topic.t[each.key].name\n  role = "roles/pubsub.publisher"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["planner"].email}"\n}', "may not publish to 'baseroll-requests'"),
        # Event Receiver for the trigger: not needed for direct Pub/Sub events.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/eventarc.eventReceiver"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["trigger"].email}"\n}', "may not hold roles/eventarc.eventReceiver"),
        # A role that cannot be read.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = var.role\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "must be a literal"),
        # Someone else.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/run.viewer"\n'
         '  member = "user:someone@example.com"\n}', "not one of baseroll's identities"),
        # The store role on every Firestore database of the project.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/datastore.user"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["planner"].email}"\n}', "conditioned on baseroll's database"),
        # The worker may only read records.
        ('resource "google_project_iam_member" "x" {\n  project = var.project_id\n  role = "roles/datastore.user"\n'
         '  member = "serviceAccount:${google_service_account.baseroll["worker"].email}"\n}', "may not hold roles/datastore.user"),
    ],
)
def test_check_iam_flags(hcl, needle):
    problems = check_iam(snippet(hcl))
    assert any(needle in p for p in problems), problems


def test_check_config_keys_flags_missing_keys():
    problems = check_config_keys({"projects": [], "labels": {"opt_out": "x"}, "rollout": {"waves": []}})
    for needle in ("regions", "base_tracks", "labels lacks cohort", "rollout lacks failure_budget"):
        assert any(needle in p for p in problems), (needle, problems)


def test_render_evaluates_references_and_refuses_expressions():
    locals_ = {"host": "${var.region}-docker.pkg.dev", "repo": "${local.host}/${var.p}/state"}
    assert render({"r": "${local.repo}", "n": "${var.n}"}, {"region": "eu-west1", "p": "proj", "n": [1]}, locals_) == {
        "r": "eu-west1-docker.pkg.dev/proj/state", "n": [1]}
    with pytest.raises(ValueError, match="plain var/local reference"):
        render({"projects": "${split(\",\", var.x)}"}, {"x": "a"})
    with pytest.raises(ValueError, match="var.missing"):
        render({"projects": "${var.missing}"}, {})


def test_references_flags_undeclared_names():
    problems = references(snippet(GOOD + '\noutput "x" {\n  value = google_pubsub_topic.missing.id\n}\n'))
    assert any("var.p is used" in p for p in problems), problems
    assert any("google_pubsub_topic.missing" in p for p in problems), problems


def test_archive_excludes_semantics():
    files = ["functions/main.py", "tests/unit/x.py", "functions/baseroll/__pycache__/a.pyc", "requirements.txt"]
    assert archived(files, ["tests", "**/__pycache__"]) == {"functions/main.py", "requirements.txt"}


def test_entry_point_parser():
    source = (
        "import functions_framework\nfrom functions_framework import cloud_event as ce\n"
        "@functions_framework.cloud_event\ndef a(e): pass\n"
        "@ce\ndef b(e): pass\n"
        "@functions_framework.http\ndef c(r): pass\n"
        "def d(e): pass\n"
        "class K:\n    @functions_framework.cloud_event\n    def nested(self, e): pass\n"
    )
    assert cloud_event_entry_points(source) == {"a", "b"}


def test_code_topics(tmp_path):
    assert code_topics(tmp_path) is None
    (tmp_path / "bus.py").write_text('TASKS_TOPIC = "baseroll-tasks"\nLABEL = "baseroll-opt-out"\n')
    assert code_topics(tmp_path) == {"baseroll-tasks"}
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "topics.py").write_text('"""doc"""\nREQUESTS = "baseroll-requests"\nPUSHES = "gcr"\nALL = (REQUESTS,)\n')
    assert code_topics(tmp_path) == {"baseroll-tasks", "baseroll-requests", "gcr"}


# ------------------------------------------------------------------------------------ dead letters on every trigger


def test_every_trigger_topic_has_a_dead_letter_topic_kept_seven_days(module):
    trigger_topics = {fn["topic"] for fn in module.locals["functions"].values()}
    assert trigger_topics == set(PLANNED_TOPICS) | {"gcr", "cloud-builds"}
    dead = {i.key: i.body["name"] for i in module.instances("google_pubsub_topic") if i.name == "dead_letter"}
    assert set(dead.values()) == {f"{t}-dead-letter" for t in trigger_topics}
    subs = [i for i in module.instances("google_pubsub_subscription") if i.name == "dead_letter"]
    assert {s.key for s in subs} == set(dead)
    assert all(s.body["message_retention_duration"] == "604800s" for s in subs)
    grants = {i.key for i in module.instances("google_pubsub_topic_iam_member") if i.name.endswith("dead_letter_publisher")}
    assert grants == set(dead), "the Pub/Sub service agent publishes to every dead-letter topic"


def test_every_function_gets_its_dead_letter_policy_by_default(module):
    # Every entry point is mapped to its trigger topic's dead-letter topic, with no entry left out.
    expr = module.locals["dead_lettered_functions"]
    assert re.fullmatch(r"\$\{\{for name, fn in local\.functions : name => local\.trigger_topic_keys\[fn\.topic\]\}\}",
                        expr), expr
    assert module.variables["attach_dead_letter_policies"]["default"] is True
    attempts = module.variables["max_delivery_attempts"]["default"]
    assert 5 <= attempts <= 100
    (policy,) = module.instances("terraform_data")
    assert "var.attach_dead_letter_policies" in policy.body["for_each"]
    commands = module.locals["dead_letter_commands"]
    assert "--dead-letter-topic" in commands and "--max-delivery-attempts=${var.max_delivery_attempts}" in commands
    assert "roles/pubsub.subscriber" in commands


def test_the_readme_documents_how_to_replay_dead_letters():
    text = (TF_DIR / "README.md").read_text()
    section = text.split("## Dead-letter topics", 1)[1]
    for needle in ("gcloud pubsub subscriptions pull", "gcloud pubsub topics publish", "--attribute", "ack"):
        assert needle in section, needle


# ------------------------------------------------------------------------------------ rollout events and notify_chat


def test_the_events_topic_exists_and_only_the_planner_publishes_to_it(module):
    assert EVENTS_TOPIC in declared_topics(module)
    assert "baseroll-events" in code_topics(PACKAGE_DIR)  # contracts/topics.py names it
    publishers = {identity_of(i.body["member"]) for i in module.instances("google_pubsub_topic_iam_member")
                  if resolve_topic(module, i.body.get("topic")) == EVENTS_TOPIC}
    assert publishers == {"planner"}
    assert "google_pubsub_topic.events" in json.dumps(module.outputs["topics"])


def notify_chat_instances(module: Module) -> list[Instance]:
    """Every resource of notify.tf: each must exist only when chat_webhook_secret is set."""
    return [i for i in module.all_instances() if "notif" in i.name or i.name == "secretmanager"]


def test_notify_chat_is_deployed_only_when_a_webhook_secret_is_named(module):
    assert module.variables["chat_webhook_secret"]["default"] is None
    assert module.locals["notify_chat"] == "${var.chat_webhook_secret != null}"
    found = {i.address for i in notify_chat_instances(module)}
    assert {"google_cloudfunctions2_function.notify_chat", "google_service_account.notifier",
            "google_secret_manager_secret_iam_member.notifier_webhook_reader",
            "google_cloud_run_service_iam_member.notify_chat_invoker"} <= found
    for inst in notify_chat_instances(module):
        assert inst.body.get("count") == "${local.notify_chat ? 1 : 0}", inst.address


def test_notify_chat_reads_the_webhook_from_the_secret_and_runs_alone(module):
    (fn,) = [f for f in functions(module) if entry_point(f) == "notify_chat"]
    service = first(fn.body["service_config"])
    secret = first(service["secret_environment_variables"])
    # The env var edge/notify_chat.py reads, from the secret the variable names: never the URL in plain config.
    from baseroll.edge import notify_chat as chat
    assert (secret["key"], secret["secret"], secret["version"]) == (chat.WEBHOOK_ENV, "${var.chat_webhook_secret}",
                                                                    "latest")
    assert set(service["environment_variables"]) == {chat.KINDS_ENV}
    assert service["max_instance_count"] == 1  # a space takes 60 writes a minute (docs/EVENTS.md)
    assert resolve_topic(module, first(fn.body["event_trigger"])["pubsub_topic"]) == EVENTS_TOPIC
    (grant,) = grants_of(module, "notifier")
    assert grant.body["secret_id"] == "${var.chat_webhook_secret}"


def grants_of(module: Module, who: str) -> list[Instance]:
    return [i for i in module.all_instances()
            if i.type.endswith("_iam_member") and identity_of(i.body.get("member")) == who]


def test_chat_event_kinds_default_and_validation_match_the_code(module):
    from baseroll.contracts import events
    variable = module.variables["chat_event_kinds"]
    assert set(variable["default"]) <= set(events.KINDS) and "halted" in variable["default"]
    listed = re.findall(r'"([a-z-]+)"', json.dumps(variable["validation"]).replace('\\"', '"'))
    assert set(events.KINDS) <= set(listed)


def test_approval_and_windows_variables_reach_the_config_as_terraform_renders_them(module, tfvars):
    """Optional object attributes left out are rendered as nulls by yamlencode; the code reads them as absent."""
    fn = next(f for f in functions(module) if entry_point(f) not in CONFIGLESS)
    expr = first(fn.body["service_config"])["environment_variables"]["BASEROLL_CONFIG_YAML"]
    windows = [{"match": {"project": None, "region": "europe-west1", "label": None}, "days": ["sat", "sun"],
                "start": "00:00", "end": "24:00", "time_zone": "Europe/Berlin"},
               {"match": None, "days": ["mon"], "start": "22:00", "end": "02:00", "time_zone": "UTC"}]
    values = variable_values(module, {**tfvars, "rollout_approval": "after-canary", "maintenance_windows": windows})
    doc = render(config_object(module, expr), values, module.locals)
    cfg = config_mod.load({"BASEROLL_CONFIG_YAML": yaml.safe_dump(doc)})
    assert cfg.rollout.approval == "after-canary"
    assert [(w.region, w.days, w.end) for w in cfg.rollout.windows] == [("europe-west1", frozenset({5, 6}), 1440),
                                                                       (None, frozenset({0}), 120)]
    defaults = render(config_object(module, expr), variable_values(module, tfvars), module.locals)
    assert (defaults["rollout"]["approval"], defaults["rollout"]["windows"]) == ("none", [])
