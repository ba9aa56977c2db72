"""The Cloud Run stand-in's running mode: revisions pulled from the real registry (token auth), unpacked,
started chrooted with $PORT, ready by the TCP startup probe, served through the loopback proxy's service and
tag URLs by the traffic split, and stopped by PID when retired or when the stand-in stops.

The app is busybox's `httpd` serving a page that names its version, started by `/bin/busybox sh -c`.
Running needs root (chroot); the simulated-mode proxy test does not.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, StaticCredentials
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from infra.local.bearer_auth import BearerAuth
from infra.local.cloudrun.bundles import Bundle, BundleCache
from infra.local.cloudrun.common import service_uri, tag_uri
from infra.local.cloudrun.proxy import REVISION_HEADER, invoker_check
from infra.local.cloudrun.runner import LaunchSpec, argv_of, env_of
from infra.local.cloudrun_standin import CloudRunStandin
from infra.local.images import ImageSpec, layer, push
from infra.local.procs import free_port, stop, wait_http
from infra.local.registry_server import RegistryServer
from infra.local.token_server import TokenServer

pytestmark = pytest.mark.integration

PROJECT, REGION = "demo-project", "us-central1"
FAST_POLL = polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2, multiplier=1.5)
OP_TIMEOUT = 60.0
BUSYBOX = Path("/bin/busybox")
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="NOT RUN: running revisions chrooted needs root")


def _app(version: str, script: str | None = None, entrypoint: tuple[str, ...] = ("/bin/busybox", "sh", "-c")) -> ImageSpec:
    """busybox + a page; the entrypoint serves it with httpd on $PORT unless `script` says otherwise."""
    run = script or "exec /bin/busybox httpd -f -p $PORT -h /www"
    return ImageSpec(
        layers=[layer({"bin/busybox": BUSYBOX.read_bytes()}, executable=("bin/busybox",)),
                layer({"www/index.html": f"app {version}\n", "etc/app-version": version})],
        env=["PATH=/bin", f"APP_VERSION={version}"],
        entrypoint=list(entrypoint), cmd=[run],
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A token-auth registry (as the local stack's) holding the apps, pinned by digest."""
    tokens = TokenServer()
    tokens.start()
    reg = RegistryServer(workdir=tmp_path_factory.mktemp("registry"), token_server=tokens)
    reg.start()
    try:
        creds = (tokens.username, tokens.secret)
        client = RegistryClient(plain_http_hosts=[reg.host], allowed_hosts=[reg.host, tokens.host],
                                credentials=StaticCredentials({reg.host: creds}), token_hosts={reg.host: [tokens.host]})
        repo = ImageRef(reg.host, "apps/web")
        with client:
            refs = {
                "v1": push(client, repo, _app("v1")),
                "v2": push(client, repo, _app("v2")),
                "no-entrypoint": push(client, repo, _app("broken", entrypoint=("/app/server",))),
                "exits": push(client, repo, _app("exits", "echo starting; exit 3")),
            }
        yield {"host": reg.host, "creds": creds, **{k: str(v) for k, v in refs.items()}}
    finally:
        reg.stop()
        tokens.stop()


@pytest.fixture
def standin(images: dict, tmp_path: Path) -> Iterator[CloudRunStandin]:
    cr = CloudRunStandin(registry_host=images["host"], deploy_latency_s=0.0, seed=7,
                         registry_auth=BearerAuth(*images["creds"]), registry_credentials=images["creds"],
                         run_revisions=True, startup_timeout_s=5.0, workdir=tmp_path / "cloudrun")
    with cr:
        yield cr


def _client(cr: CloudRunStandin) -> run_v2.ServicesClient:
    return run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                 client_options=ClientOptions(api_endpoint=cr.url))


def _token(aud: str, exp_in: float = 300) -> str:
    """An ID token's shape (header.claims.signature); the stand-in reads only the claims."""
    def b64(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    claims = {"aud": aud, "iss": "https://accounts.google.com", "exp": int(time.time() + exp_in),
              "email": "worker@demo-project.iam.gserviceaccount.com"}
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2ln"


def _deploy(client: run_v2.ServicesClient, sid: str, image: str, *, create: bool = False, **service: object) -> run_v2.Service:
    svc = run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)]), **service)
    if create:
        op = client.create_service(parent=f"projects/{PROJECT}/locations/{REGION}", service=svc, service_id=sid)
    else:
        svc.name = f"projects/{PROJECT}/locations/{REGION}/services/{sid}"
        op = client.update_service(service=svc)
    return op.result(timeout=OP_TIMEOUT, polling=FAST_POLL)


def _revisions(cr: CloudRunStandin) -> run_v2.RevisionsClient:
    return run_v2.RevisionsClient(credentials=AnonymousCredentials(), transport="rest",
                                  client_options=ClientOptions(api_endpoint=cr.url))


def _get(cr: CloudRunStandin, sid: str, tag: str | None = None, **kw: object) -> httpx.Response:
    url = tag_uri(cr.proxy_base, PROJECT, REGION, sid, tag) if tag else service_uri(cr.proxy_base, PROJECT, REGION, sid)
    headers = {"Authorization": f"Bearer {_token(service_uri(cr.proxy_base, PROJECT, REGION, sid))}"}
    return httpx.get(url + "/index.html", headers=headers, timeout=10, trust_env=False, **kw)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _rooted_under(prefix: Path | str) -> list[int]:
    """PIDs of every process whose root directory's path starts with `prefix` (revisions and all they
    started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "root").startswith(str(prefix)):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _eventually(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@needs_root
def test_revision_runs_chrooted_and_serves_through_the_service_url(standin: CloudRunStandin, images: dict) -> None:
    svc = _deploy(_client(standin), "web", images["v1"], create=True)
    short = svc.latest_ready_revision.rsplit("/", 1)[1]
    r = _get(standin, "web")
    assert (r.status_code, r.text, r.headers[REVISION_HEADER]) == (200, "app v1\n", short)
    (pid,) = standin.running_revisions.values()
    # The process is the image's entrypoint, in the unpacked image's root, with Cloud Run's variables.
    root = Path(os.readlink(f"/proc/{pid}/root"))
    assert (root / "etc/app-version").read_text() == "v1" and root != Path("/")
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    assert env["APP_VERSION"] == "v1" and env["K_REVISION"] == short and env["K_SERVICE"] == "web"
    assert int(env["PORT"]) > 0
    assert os.readlink(f"/proc/{pid}/cwd") == f"{root}/www"  # httpd -h /www moved there from "/"


@needs_root
@pytest.mark.parametrize("broken", ["no-entrypoint", "exits"])
def test_a_revision_that_does_not_listen_fails_and_the_old_one_keeps_serving(
        standin: CloudRunStandin, images: dict, broken: str) -> None:
    client = _client(standin)
    good = _deploy(client, "web", images["v1"], create=True).latest_ready_revision
    with pytest.raises(gexc.FailedPrecondition) as failed:
        _deploy(client, "web", images[broken])
    assert "failed to start and listen on the port defined provided by the PORT=" in str(failed.value)
    svc = client.get_service(name=f"projects/{PROJECT}/locations/{REGION}/services/web")
    revisions = _revisions(standin)
    bad = revisions.get_revision(name=svc.latest_created_revision)
    cond = bad.conditions[0]
    assert cond.state == run_v2.Condition.State.CONDITION_FAILED
    assert cond.revision_reason == run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR
    assert svc.latest_ready_revision == good
    r = _get(standin, "web")
    assert (r.status_code, r.text) == (200, "app v1\n")
    assert list(standin.running_revisions) == [revisions.get_revision(name=good).uid]  # nothing left of the bad one


@needs_root
def test_traffic_split_and_tag_url_route_to_their_revisions(standin: CloudRunStandin, images: dict) -> None:
    client = _client(standin)
    v1 = _deploy(client, "web", images["v1"], create=True).latest_ready_revision.rsplit("/", 1)[1]
    # v2 deployed at zero traffic under a tag: the service URL keeps answering from v1.
    v2_svc = _deploy(client, "web", images["v2"], traffic=[
        run_v2.TrafficTarget(type_=BY_REVISION, revision=v1, percent=100),
        run_v2.TrafficTarget(type_=LATEST, percent=0, tag="candidate")])
    v2 = v2_svc.latest_ready_revision.rsplit("/", 1)[1]
    assert {_get(standin, "web").text for _ in range(20)} == {"app v1\n"}
    tagged = [_get(standin, "web", "candidate") for _ in range(5)]
    assert {(r.text, r.headers[REVISION_HEADER]) for r in tagged} == {("app v2\n", v2)}
    assert _get(standin, "web", "nope").status_code == 404

    _deploy(client, "web", images["v2"], traffic=[
        run_v2.TrafficTarget(type_=BY_REVISION, revision=v1, percent=30),
        run_v2.TrafficTarget(type_=BY_REVISION, revision=v2, percent=70)])
    answers = [_get(standin, "web") for _ in range(200)]
    by_revision = {rev: sum(r.headers[REVISION_HEADER] == rev for r in answers) for rev in (v1, v2)}
    print(f"30/70 split over 200 requests: {by_revision}")
    assert all(r.text == ("app v1\n" if r.headers[REVISION_HEADER] == v1 else "app v2\n") for r in answers)
    assert 35 <= by_revision[v1] <= 85 and by_revision[v1] + by_revision[v2] == 200
    assert standin.proxy.served[v2] == by_revision[v2] + 5  # the proxy's own count: the tagged requests too


@needs_root
def test_the_invoker_check_wants_an_id_token_for_the_service(standin: CloudRunStandin, images: dict) -> None:
    client = _client(standin)
    _deploy(client, "web", images["v1"], create=True)
    url = service_uri(standin.proxy_base, PROJECT, REGION, "web") + "/"
    assert httpx.get(url, trust_env=False).status_code == 403
    for wrong in (_token("https://other.run.app"), _token(url.rstrip("/"), exp_in=-60), "not-a-jwt"):
        assert httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, trust_env=False).status_code == 401
    assert _get(standin, "web").status_code == 200
    _deploy(client, "open", images["v1"], create=True, invoker_iam_disabled=True)
    assert httpx.get(service_uri(standin.proxy_base, PROJECT, REGION, "open") + "/", trust_env=False).status_code == 200


@needs_root
def test_processes_stop_when_retired_deleted_and_on_stop(images: dict, tmp_path: Path) -> None:
    cr = CloudRunStandin(registry_host=images["host"], deploy_latency_s=0.0, registry_auth=BearerAuth(*images["creds"]),
                         registry_credentials=images["creds"], run_revisions=True, startup_timeout_s=5.0,
                         workdir=tmp_path / "cloudrun")
    with cr:
        client = _client(cr)
        _deploy(client, "web", images["v1"], create=True)
        (v1_pid,) = cr.running_revisions.values()
        _deploy(client, "web", images["v2"])  # LATEST moves to v2: v1 serves nothing any more
        assert _eventually(lambda: not _alive(v1_pid)), "a retired revision kept running past its drain period"
        assert len(cr.running_revisions) == 1
        assert _get(cr, "web").text == "app v2\n"
        _deploy(client, "other", images["v1"], create=True)
        other_pid = cr.running_revisions[_revisions(cr).get_revision(
            name=client.get_service(name=f"projects/{PROJECT}/locations/{REGION}/services/other").latest_ready_revision).uid]
        client.delete_service(name=f"projects/{PROJECT}/locations/{REGION}/services/other").result(timeout=OP_TIMEOUT)
        assert _eventually(lambda: not _alive(other_pid)), "a deleted service's revision kept running"
        pids = list(cr.running_revisions.values())
        assert pids and all(_alive(p) for p in pids) and set(pids) <= set(_rooted_under(f"{tmp_path}/"))
    assert not any(_alive(p) for p in pids), "stop() left revision processes behind"
    assert _rooted_under(f"{tmp_path}/") == [], "a process a revision started outlived stop()"
    assert cr.running_revisions == {}


@needs_root
def test_at_most_max_revision_processes_run(images: dict, tmp_path: Path) -> None:
    cr = CloudRunStandin(registry_host=images["host"], deploy_latency_s=0.0, registry_auth=BearerAuth(*images["creds"]),
                         registry_credentials=images["creds"], run_revisions=True, startup_timeout_s=5.0,
                         max_revision_processes=1, workdir=tmp_path / "cloudrun")
    with cr:
        client = _client(cr)
        _deploy(client, "one", images["v1"], create=True)
        with pytest.raises(gexc.FailedPrecondition, match="at most 1 revisions"):
            _deploy(client, "two", images["v2"], create=True)
        assert len(cr.running_revisions) == 1 and _get(cr, "one").text == "app v1\n"


def test_simulated_mode_proxy_answers_for_the_ready_revision(tmp_path: Path) -> None:
    """No processes: a ready revision answers 200 naming itself, so URL checks work on every stand-in."""
    reg = RegistryServer(workdir=tmp_path / "registry")
    with reg, CloudRunStandin(registry_host=reg.host, deploy_latency_s=0.0) as cr:
        client = RegistryClient(plain_http_hosts=[reg.host], allowed_hosts=[reg.host])
        with client:
            image = str(push(client, ImageRef(reg.host, "apps/sim"), _app("sim")))
        svc = _deploy(_client(cr), "sim", image, create=True)
        r = _get(cr, "sim")
        short = svc.latest_ready_revision.rsplit("/", 1)[1]
        assert (r.status_code, r.headers[REVISION_HEADER]) == (200, short) and short in r.text
        assert cr.running_revisions == {}


@needs_root
def test_the_cli_runs_revisions_with_registry_credentials_and_leaves_none_on_sigterm(images: dict, tmp_path: Path) -> None:
    port, password = free_port(), tmp_path / "password"
    password.write_text(images["creds"][1])
    out = open(tmp_path / "standin.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.local.cloudrun_standin", "--port", str(port), "--registry-host", images["host"],
         "--registry-username", images["creds"][0], "--registry-password-file", str(password), "--run-revisions",
         "--allow-unauthenticated", "--deploy-latency-s", "0"],
        cwd=Path(__file__).resolve().parents[2], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_standin/healthz", proc=proc, timeout=20)
        cr_url = f"http://127.0.0.1:{port}"
        client = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                       client_options=ClientOptions(api_endpoint=cr_url))
        svc = _deploy(client, "cli", images["v1"], create=True)
        assert httpx.get(svc.uri + "/", trust_env=False, timeout=10).text == "app v1\n"  # no token: allowed
        started = _rooted_under(Path(tempfile.gettempdir()) / "cloudrun-standin-")  # the CLI's own workdir
        assert started
    finally:
        stop(proc)
        out.close()
    assert proc.returncode == 0, (tmp_path / "standin.log").read_text()
    assert not any(_alive(p) for p in started)


def test_bundle_cache_shares_pulls_and_evicts_idle_bundles_beyond_its_cap(images: dict, tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "images", credentials=images["creds"], max_bundles=2)
    v1 = cache.get(images["v1"])
    assert (v1.rootfs / "etc/app-version").read_text() == "v1" and v1.cmd[0].startswith("exec /bin/busybox httpd")
    assert cache.get(images["v1"]) == v1 and cache.pulls == 1  # pinned by digest: no second pull
    cache.get(images["v2"])
    cache.get(images["exits"], busy=frozenset({v1.digest}))  # v1 runs somewhere: v2 goes instead
    assert v1.digest in cache.cached() and len(cache.cached()) == 2 and v1.rootfs.is_dir()
    cache.get(images["no-entrypoint"])  # now v1 is idle and the least recently used
    assert v1.digest not in cache.cached() and not v1.rootfs.exists()
    layers = {p.name for p in (tmp_path / "images/layout/blobs/sha256").iterdir()}
    print(f"4 images, 2 cached: {len(layers)} blobs kept in the shared layout")
    assert v1.digest.split(":")[1] not in layers  # garbage-collected with its tag


def test_command_and_args_override_entrypoint_and_cmd_as_in_kubernetes() -> None:
    image = Bundle("sha256:" + "0" * 64, Path("/nonexistent"), ("/bin/server",), ("--port", "8080"),
                   ("PATH=/bin", "MODE=image", "EMPTY"), "/app")
    assert argv_of(image, (), ()) == ["/bin/server", "--port", "8080"]
    assert argv_of(image, (), ("--debug",)) == ["/bin/server", "--debug"]
    assert argv_of(image, ("/bin/other",), ()) == ["/bin/other"]  # the image's Cmd goes with its Entrypoint
    assert argv_of(image, ("/bin/other",), ("-v",)) == ["/bin/other", "-v"]
    env = env_of(image, LaunchSpec("img", env=(("MODE", "container"), ("K_REVISION", "web-00001-abc"))))
    assert env == {"PATH": "/bin", "MODE": "container", "EMPTY": "", "K_REVISION": "web-00001-abc"}


def test_invoker_check_statuses() -> None:
    aud = "http://127.0.0.1:1/s/p/r/web"
    now = time.time()
    assert invoker_check(None, {aud}, "/", now)[0] == 403  # type: ignore[index]
    assert invoker_check(f"Basic {_token(aud)}", {aud}, "/", now)[0] == 401  # type: ignore[index]
    assert invoker_check(f"Bearer {_token(aud + '/x')}", {aud}, "/", now)[0] == 401  # type: ignore[index]
    assert invoker_check(f"Bearer {_token(aud, exp_in=-1)}", {aud}, "/", now)[0] == 401  # type: ignore[index]
    assert invoker_check(f"Bearer {_token(aud)}", {aud}, "/", now) is None
    listed = _token(aud).split(".")
    claims = base64.urlsafe_b64encode(json.dumps({"aud": ["other", aud]}).encode()).rstrip(b"=").decode()
    assert invoker_check(f"bearer {listed[0]}.{claims}.{listed[2]}", {aud}, "/", now) is None
