"""The Cloud Build configs: valid YAML, commands their builders have, files that exist,
substitutions that resolve, and shell scripts that really produce what baseroll accepts.

The scripts are run with bash against fake `gcloud`/`docker` programs that record their
arguments, so quoting and escaping mistakes show up here, not in a failed Cloud Build run.
"""
from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from baseroll.contracts import requests, topics
from baseroll.images.refs import ImageRef

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "cloudbuild.yaml", ROOT / "infra" / "cloudbuild" / "app.cloudbuild.yaml"]

# Builder image (without tag) -> its default entrypoint (None: the image has none, so a step must
# name one) and the programs on its PATH that a step may run.
BUILDERS: dict[str, tuple[str | None, frozenset[str]]] = {
    "gcr.io/cloud-builders/docker": ("docker", frozenset({"docker", "bash", "sh"})),
    "gcr.io/cloud-builders/gcloud": ("gcloud", frozenset({"gcloud", "gsutil", "bq", "bash", "sh"})),
    "gcr.io/google.com/cloudsdktool/cloud-sdk": (None, frozenset({"gcloud", "gsutil", "bq", "bash", "sh"})),
}
# Programs that exist in one builder and not another: a script calling one must run in a builder that has it.
TOOLS = ("docker", "gcloud", "gsutil", "bq", "kubectl", "crane", "skopeo")
# Cloud Build's built-in substitutions (https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values).
BUILTINS = {
    "PROJECT_ID": "example-project",
    "PROJECT_NUMBER": "123456789012",
    "BUILD_ID": "0f6a4b7e-5d1c-4c8e-9a55-2b1f6f0e9c3d",
    "LOCATION": "us-central1",
    "TRIGGER_NAME": "base-nightly",
    "COMMIT_SHA": "0" * 40,
    "SHORT_SHA": "0000000",
    "REVISION_ID": "0" * 40,
    "REPO_NAME": "baseroll",
    "REPO_FULL_NAME": "example/baseroll",
    "BRANCH_NAME": "main",
    "TAG_NAME": "",
    "REF_NAME": "main",
    "TRIGGER_BUILD_CONFIG_PATH": "cloudbuild.yaml",
    "SERVICE_ACCOUNT_EMAIL": "builder@example-project.iam.gserviceaccount.com",
    "SERVICE_ACCOUNT": "projects/example-project/serviceAccounts/builder@example-project.iam.gserviceaccount.com",
}
# `$$` (a literal `$`), `${NAME}` or `$NAME`; any other `$` is a mistake Cloud Build refuses.
SUBST = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
FAKE_DIGEST = "sha256:" + "ab" * 32


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.name}: not a mapping"
    return doc


def strings(node: Any) -> Iterator[str]:
    """Every string value in a YAML node, recursively."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def render(text: str, subs: dict[str, str]) -> str:
    """Apply Cloud Build substitution the way Cloud Build does (KeyError for an unknown name)."""
    def one(m: re.Match[str]) -> str:
        if m[1]:
            return "$"
        return subs[m[2] or m[3]]

    rest = SUBST.sub("", text)
    assert "$" not in rest, f"unescaped '$' in {text!r} (use $$ for a literal $)"
    return SUBST.sub(one, text)


def dynamic(doc: dict[str, Any]) -> bool:
    """Whether user substitutions may reference others (`options.dynamicSubstitutions`)."""
    return bool((doc.get("options") or {}).get("dynamicSubstitutions"))


def example_subs(doc: dict[str, Any], **overrides: str) -> dict[str, str]:
    """The substitutions a build of `doc` gets: built-ins, the file's defaults, then `overrides`
    (as `--substitutions` gives them). With dynamicSubstitutions, a value that references other
    substitutions is expanded, as Cloud Build does; without it, a `$` in a value stays literal."""
    user = {k: str(v) for k, v in (doc.get("substitutions") or {}).items()}
    user.update(overrides)
    subs = {**BUILTINS, **user}
    if dynamic(doc):
        for _ in range(len(user)):  # enough rounds for any chain of references
            subs = {k: (render(v, subs) if k in user else v) for k, v in subs.items()}
        assert not any("$" in v for k, v in subs.items() if k in user), f"unresolved substitution in {subs}"
    return subs


def builder(step: dict[str, Any]) -> tuple[str | None, frozenset[str]]:
    name = re.sub(r"(@sha256:[0-9a-f]{64}|:[\w.-]+)$", "", step["name"])
    assert name in BUILDERS, f"step {step.get('id')}: unknown builder {step['name']!r}"
    return BUILDERS[name]


def script(step: dict[str, Any]) -> str | None:
    """The bash script of a `bash -c` step, else None."""
    if step.get("entrypoint") in ("bash", "sh") and step.get("args", [None])[0] == "-c":
        return step["args"][1]
    return None


def logical_lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def command_words(text: str) -> set[str]:
    """The TOOLS that a script runs as commands (start of a line, after $(, |, ;, &&, !, then, do)."""
    found = set()
    for tool in TOOLS:
        pattern = rf"(?:^|\$\(|[|;&!]|\bthen\b|\bdo\b)\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*{tool}(?=\s|$)"
        if re.search(pattern, text, re.M):
            found.add(tool)
    return found


def commands(step: dict[str, Any], subs: dict[str, str]) -> list[list[str]]:
    """The argument vectors a step runs (one per script line for bash -c), substitutions applied."""
    body = script(step)
    if body is None:
        entry = step.get("entrypoint") or builder(step)[0]
        return [[entry, *(render(a, subs) for a in step.get("args", []))]]
    return [shlex.split(line, comments=True) for line in logical_lines(render(body, subs))]


@pytest.fixture(params=CONFIGS, ids=lambda p: p.name)
def config(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    return request.param, load(request.param)


# ------------------------------------------------------------------------------------------ structure


def test_parses_with_steps_and_images(config) -> None:
    path, doc = config
    assert set(doc) <= {"steps", "substitutions", "images", "tags", "options", "timeout"}, path.name
    assert doc["steps"] and all(isinstance(s, dict) for s in doc["steps"])
    # Only images under `images:` reach results.images of the build notification (docs/GOOGLE_APIS.md#cloud-build).
    assert doc["images"], f"{path.name}: no images: the digest would not appear in results.images"
    ids = [s.get("id") for s in doc["steps"]]
    assert all(ids) and len(set(ids)) == len(ids), "every step has a unique id"


def test_every_step_runs_a_command_its_builder_has(config) -> None:
    _, doc = config
    for step in doc["steps"]:
        assert isinstance(step.get("name"), str), f"step {step.get('id')}: no builder image"
        default, available = builder(step)
        entry = step.get("entrypoint", default)
        assert entry is not None, f"step {step['id']}: {step['name']} has no default entrypoint; name one"
        assert entry in available, f"step {step['id']}: {entry!r} is not in {step['name']}"
        body = script(step)
        if step.get("entrypoint") in ("bash", "sh"):
            assert body is not None, f"step {step['id']}: a shell entrypoint runs `-c SCRIPT` here"
            missing = command_words(body) - available
            assert not missing, f"step {step['id']}: script runs {sorted(missing)}, absent from {step['name']}"


def test_substitutions_are_declared_used_and_escaped(config) -> None:
    path, doc = config
    declared = set(doc.get("substitutions") or {})
    assert all(re.match(r"^_[A-Z0-9_]+$", k) for k in declared), "user substitutions start with _"
    used = set()
    for text in strings({k: v for k, v in doc.items() if k != "substitutions"}):
        for m in SUBST.finditer(text):
            if not m[1]:
                used.add(m[2] or m[3])
        render(text, example_subs(doc))  # raises on an unknown name or a stray '$'
    for name, value in (doc.get("substitutions") or {}).items():
        refs_in_value = {m[2] or m[3] for m in SUBST.finditer(str(value)) if not m[1]}
        if refs_in_value:
            # Without dynamicSubstitutions Cloud Build would leave `${...}` in the value literally.
            assert dynamic(doc), f"{path.name}: {name} references {sorted(refs_in_value)}: needs dynamicSubstitutions"
            assert name in used, f"{path.name}: {name} is only used by other substitutions"
            used |= refs_in_value
    assert used - set(BUILTINS) <= declared, f"{path.name}: undeclared {sorted(used - set(BUILTINS) - declared)}"
    # Cloud Build refuses a build whose declared substitutions are not all used.
    assert declared <= used, f"{path.name}: declared but unused {sorted(declared - used)}"


def test_referenced_files_exist(config) -> None:
    path, doc = config
    subs = example_subs(doc)
    dockerfiles = 0
    for step in doc["steps"]:
        for argv in commands(step, subs):
            for tok in argv:
                # Repository-relative paths (first component is not a registry host, not absolute).
                if re.match(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(/[A-Za-z0-9_.-]+)+/?$", tok):
                    assert (ROOT / tok).exists(), f"{path.name} step {step['id']}: {tok} does not exist"
            if argv[:2] == ["docker", "build"] or (argv[:1] == ["docker"] and "build" in argv[1:2]):
                dockerfile, context = docker_build_files(argv)
                assert (ROOT / dockerfile).is_file(), f"{dockerfile} does not exist"
                assert (ROOT / context).is_dir(), f"build context {context} does not exist"
                check_dockerfile_sources(ROOT / dockerfile, ROOT / context)
                dockerfiles += 1
    assert dockerfiles == 1, f"{path.name}: expected one docker build with -f"


def docker_build_files(argv: list[str]) -> tuple[str, str]:
    args = argv[2:]
    flags = {"-f", "--file"}
    dockerfile = next(args[i + 1] for i, a in enumerate(args) if a in flags)
    return dockerfile, args[-1]


def check_dockerfile_sources(dockerfile: Path, context: Path) -> None:
    """COPY/ADD sources (other than from a stage) must exist in the build context."""
    lines = logical_lines(dockerfile.read_text())
    for line in lines:
        words = shlex.split(line, comments=True) if not line.startswith("#") else []
        if words and words[0].upper() in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            for src in [w for w in words[1:-1] if not w.startswith("--")]:
                assert (context / src).exists(), f"{dockerfile.name}: COPY source {src} not in {context}"


# ------------------------------------------------------------------------------------------ running the scripts


FAKE_TOOL = """#!{python}
# Records its argv; answers `artifacts docker images describe` with a fixed digest.
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1:5] == ["artifacts", "docker", "images", "describe"]:
    print("{digest}")
"""


@pytest.fixture
def fake_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH has fake gcloud and docker first; returns (env, log path)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "docker"):
        exe = bin_dir / tool
        exe.write_text(FAKE_TOOL.format(python=sys.executable, digest=FAKE_DIGEST))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "HOME": str(tmp_path)}
    return env, log


def run_step(step: dict[str, Any], subs: dict[str, str], env: dict[str, str], workspace: Path) -> None:
    """Run a bash -c step as Cloud Build would: cwd = the source root, /workspace = `workspace`."""
    body = script(step)
    assert body is not None
    rendered = render(body, subs).replace("/workspace", str(workspace))
    proc = subprocess.run(["bash", "-c", rendered], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"step {step['id']} failed:\n{proc.stdout}\n{proc.stderr}"


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def flag_value(argv: list[str], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(flag + "="))


def test_publish_step_sends_a_request_baseroll_accepts(fake_tools, tmp_path: Path) -> None:
    env, log = fake_tools
    doc = load(ROOT / "cloudbuild.yaml")
    subs = example_subs(doc)
    step = next(s for s in doc["steps"] if s["id"] == "publish-roll-request")
    run_step(step, subs, env, tmp_path)

    tag_ref = render("${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPO}/${_BASE_NAME}:${_BASE_TAG}", subs)
    assert render(doc["images"][0], subs) == tag_ref  # the request names the image the build pushes
    describe = [c for c in calls(log) if c[1:5] == ["artifacts", "docker", "images", "describe"]]
    assert describe and describe[0][5] == tag_ref
    publish = [c for c in calls(log) if c[1:4] == ["pubsub", "topics", "publish"]]
    assert len(publish) == 1 and publish[0][4] == topics.REQUESTS
    attrs = dict(kv.split("=", 1) for kv in flag_value(publish[0], "--attribute").split(","))
    data = flag_value(publish[0], "--message").encode()

    req = requests.parse_request(requests.message(data, attrs))
    assert (req.action, req.kind, req.digest, req.dry_run) == ("roll", "base", FAKE_DIGEST, False)
    assert req.image == ImageRef("us-central1-docker.pkg.dev", "example-project/bases/debian", "bookworm")
    assert req.reason == f"cloud build {BUILTINS['BUILD_ID']}"


def test_publish_step_refuses_to_publish_without_a_digest(fake_tools, tmp_path: Path) -> None:
    env, log = fake_tools
    gcloud = Path(env["PATH"].split(":")[0]) / "gcloud"
    gcloud.write_text(gcloud.read_text().replace(FAKE_DIGEST, ""))  # describe prints an empty line
    doc = load(ROOT / "cloudbuild.yaml")
    step = next(s for s in doc["steps"] if s["id"] == "publish-roll-request")
    rendered = render(script(step), example_subs(doc))
    proc = subprocess.run(["bash", "-c", rendered], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "no digest" in proc.stderr
    assert not [c for c in calls(log) if c[1:3] == ["pubsub", "topics"]]


def test_app_build_pins_the_base_and_labels_it(fake_tools, tmp_path: Path) -> None:
    env, log = fake_tools
    doc = load(ROOT / "infra" / "cloudbuild" / "app.cloudbuild.yaml")
    subs = example_subs(doc)
    for step in doc["steps"]:
        run_step(step, subs, env, tmp_path)

    assert (tmp_path / "base.digest").read_text().strip() == FAKE_DIGEST
    build = next(c for c in calls(log) if c[:2] == ["docker", "build"])
    build_args = dict(build[i + 1].split("=", 1) for i, a in enumerate(build) if a == "--build-arg")
    base_tag = render("${_REGION}-docker.pkg.dev/$PROJECT_ID/${_BASE_REPO}/${_BASE_NAME}:${_BASE_TAG}", subs)
    assert build_args == {"BASE": base_tag, "BASE_DIGEST": FAKE_DIGEST}
    image = build[build.index("-t") + 1]
    assert image == render(doc["images"][0], subs)  # the image built is the image `images:` pushes
    dockerfile = (ROOT / build[build.index("-f") + 1]).read_text()
    # The Dockerfile turns the build args into the OCI base labels baseroll matches on.
    assert "FROM ${BASE}@${BASE_DIGEST}" in dockerfile
    assert 'org.opencontainers.image.base.name="${BASE}"' in dockerfile
    assert 'org.opencontainers.image.base.digest="${BASE_DIGEST}"' in dockerfile


def test_example_substitutions_render_to_valid_refs(config) -> None:
    _, doc = config
    from baseroll.images import refs

    for image in doc["images"]:
        ref = refs.parse(render(image, example_subs(doc)))
        assert ref.tag and ref.digest is None



def test_registry_host_is_a_substitution_defaulting_to_artifact_registry() -> None:
    """`_REGISTRY` moves every image reference of cloudbuild.yaml (build, push, the roll request and
    `images:`) to another registry host; by default it is `${_REGION}-docker.pkg.dev`."""
    doc = load(ROOT / "cloudbuild.yaml")
    assert dynamic(doc)
    assert example_subs(doc)["_REGISTRY"] == "us-central1-docker.pkg.dev"
    assert example_subs(doc, _REGION="europe-west4")["_REGISTRY"] == "europe-west4-docker.pkg.dev"
    subs = example_subs(doc, _REGISTRY="127.0.0.1:5000")
    tag_ref = "127.0.0.1:5000/example-project/bases/debian:bookworm"
    assert render(doc["images"][0], subs) == tag_ref
    rendered = [" ".join(argv) for step in doc["steps"] for argv in commands(step, subs)]
    assert all("docker.pkg.dev" not in line for line in rendered), rendered
    assert sum(tag_ref in line for line in rendered) == 3  # docker build -t, docker push, TAG_REF


def test_publish_step_names_the_overridden_registry(fake_tools, tmp_path: Path) -> None:
    env, log = fake_tools
    doc = load(ROOT / "cloudbuild.yaml")
    subs = example_subs(doc, _REGISTRY="registry.example.com:5000")
    step = next(s for s in doc["steps"] if s["id"] == "publish-roll-request")
    run_step(step, subs, env, tmp_path)
    describe = [c for c in calls(log) if c[1:5] == ["artifacts", "docker", "images", "describe"]]
    assert describe[0][5] == "registry.example.com:5000/example-project/bases/debian:bookworm"
    publish = [c for c in calls(log) if c[1:4] == ["pubsub", "topics", "publish"]]
    req = requests.parse_request(requests.message(flag_value(publish[0], "--message").encode()))
    assert req.image == ImageRef("registry.example.com:5000", "example-project/bases/debian", "bookworm")


def test_logs_go_to_cloud_logging_so_a_user_specified_service_account_can_run_the_build(config) -> None:
    """A build running as a user-specified service account must keep its logs in Cloud Logging or a
    user-created bucket (Cloud Build, "Configure user-specified service accounts"); the account then
    needs roles/logging.logWriter, which each config's header names with the other roles."""
    path, doc = config
    assert (doc.get("options") or {}).get("logging") == "CLOUD_LOGGING_ONLY", path.name
    comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "roles/logging.logWriter" in comments and "roles/artifactregistry.writer" in comments, path.name
