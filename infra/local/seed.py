"""Seed a realistic fleet: real images in the real registry, services in the Cloud Run stand-in.

Two tracked bases (python:3.12, node:22) and one untracked (debian:12); three app images per
tracked base (some carrying OCI base annotations, some recognisable only by layer prefix); tenant
services spread over projects × regions, some opted out, some on the untracked base, a few
deployed by tag rather than digest. The tracked repositories hold a second track each, as real
ones do (python:3.11 beside 3.12, node:20 beside 22, sharing the OS layer of the same patch),
with apps on it, annotated and not: baseroll must leave them alone. Everything is created
through the real clients.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from baseroll.images.oci import ANNOTATION_BASE_DIGEST as ANN_BASE_DIGEST
from baseroll.images.oci import ANNOTATION_BASE_NAME as ANN_BASE_NAME
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient
from google.cloud import run_v2

from . import images
from .images import ImageSpec, Layer

PROJECTS = ("tenants-prod-a", "tenants-prod-b")
REGIONS = ("us-central1", "europe-west1")
OPT_OUT_LABEL = "baseroll-opt-out"
COHORT_LABEL = "baseroll-cohort"
APP_TAG_LABEL = "baseroll-app-tag"  # the app tag a digest-pinned tenant was deployed from


@dataclass(frozen=True)
class BaseDef:
    name: str
    repository: str
    tag: str
    tracked: bool
    version_tags: tuple[str, ...] = ()  # the track's `version_tags` (push_base tags each version `<tag>-pN`)


BASES = (
    BaseDef("python", "bases/python", "3.12", True, ("3.12-*",)),
    BaseDef("node", "bases/node", "22", True, ("22-*",)),
    BaseDef("debian", "bases/debian", "12", False),
    # Another track of each tracked repository, not configured: its tags are evidence of another track.
    BaseDef("python311", "bases/python", "3.11", False, ("3.11-*",)),
    BaseDef("node20", "bases/node", "20", False, ("20-*",)),
)
# app name → (base name, carries OCI base annotations)
APPS = {
    "py-api": ("python", True),
    "py-worker": ("python", True),
    "py-cron": ("python", False),
    "node-web": ("node", True),
    "node-bff": ("node", False),
    "node-jobs": ("node", True),
    "legacy": ("debian", False),
}
# Apps on the other track of a tracked repository: one service each, after the round robin over APPS.
OTHER_TRACK_APPS = {
    "py311-api": ("python311", True),
    "py311-cron": ("python311", False),
    "node20-web": ("node20", False),
    "node20-jobs": ("node20", True),
}
ALL_APPS = {**APPS, **OTHER_TRACK_APPS}


@dataclass
class SeededService:
    name: str
    app: str
    base: str
    image: str
    opted_out: bool

    def eligible_for(self, base: str) -> bool:
        return self.base == base and not self.opted_out


@dataclass
class SeededFleet:
    registry: str
    base_versions: dict[str, list[ImageRef]] = field(default_factory=dict)  # base → versions, oldest first
    apps: dict[str, ImageRef] = field(default_factory=dict)
    services: list[SeededService] = field(default_factory=list)

    def base_track(self, base: str) -> ImageRef:
        b = next(b for b in BASES if b.name == base)
        return ImageRef(self.registry, b.repository, b.tag)


def base_spec(base: BaseDef, version: int) -> ImageSpec:
    """Version n of a base: an OS layer that changes with each security patch (the same for every
    track of the repository, as python:3.11 and 3.12 share Debian's), and the track's runtime layer."""
    family = base.repository.rsplit("/", 1)[-1]
    os_layer = images.layer({
        "etc/os-release": f"NAME={family}-os\nPATCH={version}\n",
        "lib/libc.so.6": f"libc for {family} patch {version}\n" * 64,
    })
    runtime_layer = images.layer({f"usr/local/{family}/VERSION": f"{base.tag}.{version}\n"})
    return ImageSpec(layers=[os_layer, runtime_layer], history=[f"{base.name} os patch {version}", f"{base.name} runtime"])


def push_base(client: RegistryClient, registry: str, base: BaseDef, version: int) -> ImageRef:
    """Push version n with its immutable tag (`<tag>-pN`) and move the track tag to it."""
    repo = ImageRef(registry, base.repository)
    return images.push(client, repo, base_spec(base, version), tags=(f"{base.tag}-p{version}", base.tag))


def app_spec(app: str, base: BaseDef, base_ref: ImageRef, base_layers: list[Layer], annotated: bool,
             revision: int = 1) -> ImageSpec:
    """An app on `base_ref` (whose layers are `base_layers`); `revision` > 1 is a rebuild with a changed app layer."""
    main = f"#!/bin/sh\necho {app}\n" + (f"# build {revision}\n" if revision > 1 else "")
    app_layer = images.layer({f"app/{app}/main": main}, executable=(f"app/{app}/main",))
    deps_layer = images.layer({f"app/{app}/deps.txt": f"dependencies of {app}\n"})
    annotations = {}
    if annotated:
        annotations = {ANN_BASE_NAME: f"{base_ref.registry}/{base.repository}:{base.tag}", ANN_BASE_DIGEST: base_ref.digest or ""}
    return ImageSpec(
        layers=[*base_layers, deps_layer, app_layer],
        history=[f"{base.name} os patch 1", f"{base.name} runtime", "COPY deps", "COPY app"],
        entrypoint=[f"/app/{app}/main"],
        annotations=annotations,
    )


def seed_images(client: RegistryClient, registry: str) -> SeededFleet:
    fleet = SeededFleet(registry)
    for base in BASES:
        fleet.base_versions[base.name] = [push_base(client, registry, base, 1)]
    for app, (base_name, annotated) in ALL_APPS.items():
        base = next(b for b in BASES if b.name == base_name)
        spec = app_spec(app, base, fleet.base_versions[base_name][0], base_spec(base, 1).layers, annotated)
        fleet.apps[app] = images.push(client, ImageRef(registry, f"apps/{app}"), spec, tags=("v1",))
    return fleet


def seed_services(fleet: SeededFleet, run: run_v2.ServicesClient, *, count: int = 40, timeout: float = 120,
                  projects: tuple[str, ...] = PROJECTS, regions: tuple[str, ...] = REGIONS,
                  canaries: int = 4, other_tracks: bool = True) -> None:
    """Create `count` tenant services round-robin over APPS and locations, then (`other_tracks`) one
    per app of OTHER_TRACK_APPS, waiting for each to be ready."""
    app_names = [list(APPS)[i % len(APPS)] for i in range(count)] + (list(OTHER_TRACK_APPS) if other_tracks else [])
    locations = [(p, r) for p in projects for r in regions]
    operations = []
    for i, app in enumerate(app_names):
        base = ALL_APPS[app][0]
        project, region = locations[i % len(locations)]
        pinned = fleet.apps[app]
        # Every seventh service runs a tag, as teams that deploy `:v1` do.
        image = str(pinned.with_tag("v1")) if i % 7 == 3 else str(pinned)
        opted_out = base == "python" and i % 5 == 0
        labels = {"tenant": f"t{i:03d}", APP_TAG_LABEL: "v1"}
        if opted_out:
            labels[OPT_OUT_LABEL] = "true"
        if i < canaries:
            labels[COHORT_LABEL] = "canary"
        service = run_v2.Service(
            labels=labels,
            template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)]),
        )
        operations.append(run.create_service(
            parent=f"projects/{project}/locations/{region}", service=service, service_id=f"tenant-{i:03d}"
        ))
        fleet.services.append(SeededService(
            f"projects/{project}/locations/{region}/services/tenant-{i:03d}", app, base, image, opted_out
        ))
    for op in operations:
        op.result(timeout=timeout)


def push_app(client: RegistryClient, registry: str, app: str, base: BaseDef, base_version: int, base_ref: ImageRef,
             *, annotated: bool = True, revision: int = 1, tags: tuple[str, ...] = ("v1",),
             repository: str | None = None) -> ImageRef:
    """Push build `revision` of `app` on version `base_version` of `base` (pinned as `base_ref`) to
    `apps/<app>` (or `repository`) and move `tags` to it, as an app pipeline would; returns it pinned."""
    spec = app_spec(app, base, base_ref, base_spec(base, base_version).layers, annotated, revision)
    return images.push(client, ImageRef(registry, repository or f"apps/{app}"), spec, tags=tags)


def create_service(run: run_v2.ServicesClient, name: str, image: str, *, labels: dict[str, str] | None = None,
                   base_image_uri: str | None = None, timeout: float = 60) -> run_v2.Service:
    """Create one service (`projects/P/locations/R/services/S`) through the Cloud Run client and wait until
    the operation is done; `base_image_uri` sets Cloud Run's automatic base image updates on its container."""
    project, region, sid = name.split("/")[1], name.split("/")[3], name.split("/")[5]
    container = run_v2.Container(image=image)
    if base_image_uri:
        container.base_image_uri = base_image_uri
    service = run_v2.Service(labels=labels or {}, template=run_v2.RevisionTemplate(containers=[container]))
    op = run.create_service(parent=f"projects/{project}/locations/{region}", service=service, service_id=sid)
    return op.result(timeout=timeout)


def create_job(jobs: run_v2.JobsClient, name: str, image: str, *, labels: dict[str, str] | None = None,
               timeout: float = 60) -> run_v2.Job:
    """Create one job (`projects/P/locations/R/jobs/J`) through the Cloud Run client, as `create_service`."""
    project, region, jid = name.split("/")[1], name.split("/")[3], name.split("/")[5]
    job = run_v2.Job(labels=labels or {}, template=run_v2.ExecutionTemplate(
        template=run_v2.TaskTemplate(containers=[run_v2.Container(image=image)])))
    return jobs.create_job(parent=f"projects/{project}/locations/{region}", job=job, job_id=jid).result(timeout=timeout)


def create_worker_pool(pools: run_v2.WorkerPoolsClient, name: str, image: str, *,
                       labels: dict[str, str] | None = None, timeout: float = 60) -> run_v2.WorkerPool:
    """Create one worker pool (`projects/P/locations/R/workerPools/W`) through the Cloud Run client."""
    project, region, wid = name.split("/")[1], name.split("/")[3], name.split("/")[5]
    pool = run_v2.WorkerPool(labels=labels or {}, template=run_v2.WorkerPoolRevisionTemplate(
        containers=[run_v2.Container(image=image)]))
    return pools.create_worker_pool(parent=f"projects/{project}/locations/{region}", worker_pool=pool,
                                    worker_pool_id=wid).result(timeout=timeout)
