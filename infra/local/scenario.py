"""Steps shared by `make demo` and the e2e tests: seed, push a new base, deliver its event, read the outcome."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
from baseroll import config as config_mod
from baseroll.contracts import ledger
from baseroll.contracts.records import TERMINAL
from baseroll.images.refs import ImageRef, parse
from baseroll.rollout.firestore_store import FirestoreStore
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from . import eventarc, seed, server_apps
from .cloudrun.common import parts, service_uri
from .cloudrun.proxy import REVISION_HEADER
from .seed import SeededFleet, SeededService
from .users import SimulatedUsers, id_token_minter
from .stack import LocalStack

GCR_PROJECT = "baseroll-registry"


def seed_fleet(stack: LocalStack, services: int = 40, canaries: int = 4) -> SeededFleet:
    fleet = seed.seed_images(stack.registry_client(), stack.registry.host)
    seed.seed_services(fleet, stack.run_client(), count=services, projects=stack.projects, regions=stack.regions,
                       canaries=canaries)
    return fleet


def seed_server_fleet(stack: LocalStack, services: int = 8, *, opted_out: int = 0, canaries: int = 0) -> SeededFleet:
    """The real-server apps (infra/local/server_apps.py) on patch 1 of their base, and `services` services
    running them, the first `canaries` in the canary cohort, the last `opted_out` labelled out of
    baseroll; the stack must follow `server_apps.TRACK` (`extra_tracks`)."""
    fleet = SeededFleet(stack.registry.host)
    server_apps.seed_images(stack.registry_client(), fleet)
    server_apps.seed_services(fleet, stack.run_client(), count=services, projects=stack.projects,
                              regions=stack.regions, opted_out=opted_out, canaries=canaries)
    return fleet


def push_server_base(stack: LocalStack, fleet: SeededFleet, flavour: str) -> ImageRef:
    """The next patch of the real-server base in `flavour` (server_apps.FLAVOURS), moving its track tag."""
    return server_apps.push_next_base(stack.registry_client(), fleet, flavour)


def service_url(stack: LocalStack, service: str) -> str:
    """Where the stand-in's proxy serves `service` (projects/P/locations/R/services/S) to its users."""
    assert stack.cloudrun is not None
    return service_uri(stack.cloudrun.proxy_base, *parts(service))


def simulated_users(stack: LocalStack, services: list[SeededService], **bounds: float) -> SimulatedUsers:
    """Users of every service in `services`, each request with an ID token for its URL (infra/local/users.py);
    `bounds`: SimulatedUsers' threads, max_requests, max_seconds, pause_s."""
    return SimulatedUsers({s.name: service_url(stack, s.name) for s in services}, id_token_minter(), REVISION_HEADER,
                          **bounds)


@dataclass(frozen=True)
class Answer:
    """What one user request to a service's URL got."""

    status: int
    revision: str  # the revision that answered (the proxy's header), "" if none did
    body: str


def ask(stack: LocalStack, service: str) -> Answer:
    """One user request (`GET /` with an ID token for the service URL) to `service`."""
    url = service_url(stack, service)
    r = httpx.get(url, headers={"Authorization": f"Bearer {id_token_minter()(url)}"}, timeout=10)
    return Answer(r.status_code, r.headers.get(REVISION_HEADER, ""), r.text)


def revision_images(stack: LocalStack, service: str) -> dict[str, str]:
    """Every revision of `service` the stand-in lists (short name → its first container's image)."""
    assert stack.cloudrun is not None
    client = run_v2.RevisionsClient(credentials=AnonymousCredentials(), transport="rest",
                                    client_options=ClientOptions(api_endpoint=stack.cloudrun.url))
    return {r.name.rsplit("/", 1)[1]: r.containers[0].image for r in client.list_revisions(parent=service)}


def revisions_on(stack: LocalStack, services: list[SeededService], base: ImageRef) -> set[str]:
    """The revisions of `services` whose image really starts with `base`'s layers (read from the registry)."""
    return {short for s in services for short, image in revision_images(stack, s.name).items()
            if on_base(stack, image, base)}


def push_new_base(stack: LocalStack, fleet: SeededFleet, base: str) -> ImageRef:
    """Push the next patch of `base` and move its track tag, as a base image pipeline would."""
    b = next(b for b in seed.BASES if b.name == base)
    version = len(fleet.base_versions[base]) + 1
    ref = seed.push_base(stack.registry_client(), stack.registry.host, b, version)
    fleet.base_versions[base].append(ref)
    return ref


def push_event_data(new_base: ImageRef, tag: str | None) -> bytes:
    return eventarc.artifact_push_data(str(new_base), str(new_base.with_tag(tag)) if tag else None)


def deliver_push(stack: LocalStack, new_base: ImageRef, tag: str | None, *, message_id: str | None = None,
                 target: str = "on_artifact_push") -> httpx.Response:
    """The Artifact Registry INSERT notification for that push, posted straight to the function as Eventarc would."""
    event = eventarc.message_event(GCR_PROJECT, "gcr", push_event_data(new_base, tag), message_id=message_id)
    return eventarc.deliver(stack.function_url(target), event)


def publish_push(stack: LocalStack, new_base: ImageRef, tag: str | None) -> str:
    """The same notification published on topic `gcr`, as Artifact Registry does; Pub/Sub pushes it on."""
    return stack.publish("gcr", push_event_data(new_base, tag))


def record_store(stack: LocalStack) -> FirestoreStore:
    """The stack's rollout store (the Firestore emulator, reached through FIRESTORE_EMULATOR_HOST)."""
    cfg = config_mod.parse(stack.config())
    return FirestoreStore.connect(cfg.record_project, cfg.store_database)


def wait_rollout(stack: LocalStack, rollout_id: str, *, timeout: float = 120.0) -> dict:
    """Until the rollout record is terminal and Pub/Sub is idle (bounded); returns the record."""
    store = record_store(stack)
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = store.get(rollout_id)
        if record is not None and record.status in TERMINAL and stack.wait_idle(1.0):
            return record.__dict__
        time.sleep(0.2)
    raise TimeoutError(f"rollout {rollout_id} not finished within {timeout:.0f}s: {record}")


@dataclass
class ServiceResult:
    seeded: SeededService
    image: str
    state: str  # baseroll ledger state, "" when untouched
    reason: str
    updates: int

    @property
    def changed(self) -> bool:
        return self.image != self.seeded.image


def rollout_id(track: str, new_base: ImageRef) -> str:
    return ledger.rollout_id(track, new_base.digest or "")


def results(stack: LocalStack, fleet: SeededFleet) -> list[ServiceResult]:
    client = stack.run_client()
    updates = stack.update_counts()
    out = []
    for s in fleet.services:
        svc = client.get_service(name=s.name)
        out.append(ServiceResult(
            seeded=s,
            image=svc.template.containers[0].image,
            state=svc.annotations.get(ledger.STATE, ""),
            reason=svc.annotations.get(ledger.REASON, ""),
            updates=updates.get(s.name, 0),
        ))
    return out


def planned_reasons(stack: LocalStack) -> dict[str, str]:
    """Per service, why the planner's first plan skipped it (its `service.planned` log lines; a later
    plan overrides an earlier one)."""
    return {r["service"]: r.get("reason", "") for r in stack.log_records("service.planned")
            if r.get("action") == "skip" and r.get("service")}


def other_track(seeded: SeededService, base: str) -> bool:
    """Is the service on another track of the repository that `base` (a seeded base's name) follows?"""
    of = {b.name: b for b in seed.BASES}
    mine, theirs = of[base], of[seeded.base]
    return theirs.repository == mine.repository and theirs.name != mine.name


def on_base(stack: LocalStack, image: str, base: ImageRef) -> bool:
    """Does `image` really start with `base`'s layers? Read from the registry, not from our own ledger."""
    client = stack.registry_client()
    app = client.get_manifest(parse(image)).data.get("layers", [])
    new = client.get_manifest(base).data.get("layers", [])
    return [l["digest"] for l in app[: len(new)]] == [l["digest"] for l in new]


BUILD_PROJECT = "baseroll-ci"  # the project Cloud Build runs in (and publishes `cloud-builds` from)


def rebuild_app(stack: LocalStack, fleet: SeededFleet, app: str, revision: int, *, tag: str = "v1") -> ImageRef:
    """Push build `revision` of a seeded app (a changed app layer) on the newest version of its base
    and move `tag` to it, as the app's pipeline would; returns the new build pinned by digest."""
    base_name, annotated = seed.ALL_APPS[app]
    base = next(b for b in seed.BASES if b.name == base_name)
    versions = fleet.base_versions[base_name]
    return seed.push_app(stack.registry_client(), stack.registry.host, app, base, len(versions), versions[-1],
                         annotated=annotated, revision=revision, tags=(tag,))


def cloud_build_message(build_id: str, status: str, built: list[tuple[str, str]] = (), *,
                        project: str = BUILD_PROJECT, substitutions: dict[str, str] | None = None,
                        trigger_id: str | None = "0b1d6c4e-7a53-4f0e-9a57-6f2c1c9b7d10",
                        with_results: bool | None = None) -> tuple[bytes, dict[str, str]]:
    """A Cloud Build notification (topic `cloud-builds`, docs/GOOGLE_APIS.md#cloud-build) as Cloud Build publishes it:
    attributes `buildId` and `status`, data the Build resource as camelCase JSON. `built` lists
    (name as under `images:`, digest) for what the build pushed; it reaches `results.images` only
    once the build has pushed: by default on SUCCESS only (`with_results` forces it either way,
    e.g. a FAILURE in a step after the push)."""
    created = "2026-01-01T10:00:00.000000Z"
    build: dict = {
        "id": build_id,
        "name": f"projects/{project}/locations/global/builds/{build_id}",
        "projectId": project,
        "status": status,
        "source": {"storageSource": {"bucket": f"{project}_cloudbuild", "object": f"source/{build_id}.tgz"}},
        "steps": [
            {"name": "gcr.io/cloud-builders/docker", "args": ["build", "-t", name, "."], "id": f"build-{i}"}
            for i, (name, _) in enumerate(built)
        ],
        "createTime": created,
        "timeout": "600s",
        "images": [name for name, _ in built],
        "projectNumber": "123456789012",
        "logsBucket": f"gs://{project}_cloudbuild/logs",
        "options": {"logging": "LEGACY", "pool": {}},
        "logUrl": f"https://console.cloud.google.com/cloud-build/builds/{build_id}?project=123456789012",
        "substitutions": substitutions or {},
        "tags": ["baseroll-e2e"],
        "queueTtl": "3600s",
        "serviceAccount": f"projects/{project}/serviceAccounts/123456789012@cloudbuild.gserviceaccount.com",
    }
    if trigger_id:
        build["buildTriggerId"] = trigger_id
    if status != "QUEUED":
        build["startTime"] = "2026-01-01T10:00:01.000000Z"
    if status in ("SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED"):
        build["finishTime"] = "2026-01-01T10:02:00.000000Z"
    if (status == "SUCCESS") if with_results is None else with_results:
        build["results"] = {
            "images": [{"name": name, "digest": digest,
                        "pushTiming": {"startTime": "2026-01-01T10:01:50.000000Z",
                                       "endTime": "2026-01-01T10:01:59.000000Z"}}
                       for name, digest in built],
            "buildStepImages": ["sha256:" + "0" * 64 for _ in built],
        }
    return json.dumps(build).encode(), {"buildId": build_id, "status": status}


def publish_build(stack: LocalStack, build_id: str, status: str, built: list[tuple[str, str]] = (), **kw) -> str:
    """Publish that notification on `cloud-builds`, as Cloud Build does; Pub/Sub pushes it on."""
    data, attributes = cloud_build_message(build_id, status, built, **kw)
    return stack.publish("cloud-builds", data, **attributes)
