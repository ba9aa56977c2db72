"""Seeded apps that are real servers, on a base built from busybox-static, and the bases that break them.

The base (`bases/busybox:1.35`) is what a minimal distro base is: a static busybox with the applet
symlinks its users need, /etc files, and one data file apps read (/etc/baseroll/greeting, standing
for a CA bundle, a locale or a timezone file). Each app adds one layer: busybox `httpd` serving
/app/www, whose `/` runs the CGI /app/www/cgi-bin/index.cgi; it answers 200 with the greeting, or
500 (`Status: 500`) when the file is not there. Its entrypoint is a shell, as `ENTRYPOINT ["/bin/sh",
"-c", ...]` in a Dockerfile, listening on $PORT as Cloud Run asks.

A new patch of the base comes in three flavours: `good`; `startup-broken` (busybox no longer links
`httpd`: the shell starts, `exec httpd` fails, nothing listens, Cloud Run's startup probe fails);
`answers-500` (the greeting moved to /usr/share/baseroll: the server starts and listens, and every
request gets a 500). The track is not one of seed.BASES: a stack follows it through
`LocalStack(extra_tracks=[TRACK])`.
"""
from __future__ import annotations

import functools
from pathlib import Path

from baseroll.images.oci import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient
from google.cloud import run_v2

from . import images
from .images import ImageSpec, Layer
from .seed import APP_TAG_LABEL, COHORT_LABEL, OPT_OUT_LABEL, PROJECTS, REGIONS, SeededFleet, SeededService

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (`make deps` installs it)
BASE = "busybox"
REPOSITORY = "bases/busybox"
TAG = "1.35"
TRACK = {"name": BASE, "image": "{registry}/" + f"{REPOSITORY}:{TAG}", "version_tags": [f"{TAG}-*"]}
GREETING = "etc/baseroll/greeting"
MOVED_GREETING = "usr/share/baseroll/greeting"
GOOD, STARTUP_BROKEN, ANSWERS_500 = "good", "startup-broken", "answers-500"
FLAVOURS = (GOOD, ANSWERS_500, STARTUP_BROKEN)  # the demo pushes them in this order
APPLETS = ("sh", "httpd", "cat", "echo", "env", "ls")
# app → manifest kind: OCI with base annotations (buildx with annotations), OCI without, Docker schema 2
# (`docker build` + `docker push`); baseroll must find the base of each.
APPS = {"hello": "oci-annotated", "catalog": "oci", "checkout": "docker", "search": "oci-annotated"}
# On Cloud Run an app listens on 0.0.0.0:$PORT; here it stays on loopback (the local stack's rule).
ENTRYPOINT = ["/bin/sh", "-c", 'exec httpd -f -p "127.0.0.1:$PORT" -h /app/www']
INDEX_CGI = """#!/bin/sh
# {app}: answers with the greeting the base ships; without it, a 500 as a real app would.
if [ -r /{greeting} ]; then
  printf 'Content-Type: text/plain\\r\\n\\r\\n'
  echo "{app} says: $(cat /{greeting})"
else
  printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\n'
  echo "{app}: cannot read /{greeting}"
fi
"""


@functools.cache
def _busybox_layer(applets: tuple[str, ...]) -> Layer:
    """busybox-static and its applet links; cached, since it is the same ~1 MiB gzip in every version."""
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} missing: apt-get install busybox-static (`make deps` does it)")
    return images.layer({"bin/busybox": BUSYBOX.read_bytes()}, executable=("bin/busybox",),
                        links={f"bin/{a}": "busybox" for a in applets})


def base_spec(version: int, flavour: str = GOOD) -> ImageSpec:
    """Patch `version` of the base in `flavour`: busybox layer, then /etc (its patch level and the greeting)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
    applets = tuple(a for a in APPLETS if not (flavour == STARTUP_BROKEN and a == "httpd"))
    greeting = MOVED_GREETING if flavour == ANSWERS_500 else GREETING
    etc = images.layer({
        "etc/os-release": f"NAME=baseroll-busybox\nVERSION_ID={TAG}\nPATCH={version}\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n",
        "etc/group": "root:x:0:\nwww-data:x:33:\n",
        greeting: f"hello from busybox {TAG} patch {version}\n",
    })
    return ImageSpec(
        layers=[_busybox_layer(applets), etc],
        history=[f"ADD busybox-static {TAG} /bin/ (applets: {' '.join(applets)})", f"COPY etc/ / (patch {version})",
                 {"created_by": 'CMD ["sh"]', "empty_layer": True}],
        env=["PATH=/bin"], cmd=["sh"],
    )


def push_base(client: RegistryClient, registry: str, version: int, flavour: str = GOOD) -> ImageRef:
    """Push patch `version` with its immutable tag (`1.35-pN`) and move the track tag to it."""
    spec = base_spec(version, flavour)
    return images.push(client, ImageRef(registry, REPOSITORY), spec, tags=(f"{TAG}-p{version}", TAG))


def app_spec(app: str, base_ref: ImageRef, base: ImageSpec) -> ImageSpec:
    """`app` built FROM `base` (pushed as `base_ref`): its www layer, entrypoint and port."""
    kind = APPS[app]
    www = images.layer({"app/www/cgi-bin/index.cgi": INDEX_CGI.format(app=app, greeting=GREETING),
                        "app/www/robots.txt": "User-agent: *\nDisallow: /\n"},
                       executable=("app/www/cgi-bin/index.cgi",))
    annotations = {}
    if kind == "oci-annotated":
        annotations = {ANNOTATION_BASE_NAME: f"{base_ref.registry}/{REPOSITORY}:{TAG}",
                       ANNOTATION_BASE_DIGEST: base_ref.digest or ""}
    return ImageSpec(
        layers=[*base.layers, www],
        history=[*base.history, {"created_by": "ENV PORT=8080", "empty_layer": True}, "COPY www/ /app/www/",
                 {"created_by": "WORKDIR /app", "empty_layer": True},
                 {"created_by": f"ENTRYPOINT {ENTRYPOINT}", "empty_layer": True}],
        env=["PATH=/bin", "PORT=8080"], entrypoint=ENTRYPOINT, working_dir="/app", exposed_ports=("8080/tcp",),
        labels={"org.opencontainers.image.title": app}, annotations=annotations,
        media="docker" if kind == "docker" else "oci",
    )


def seed_images(client: RegistryClient, fleet: SeededFleet) -> None:
    """Patch 1 of the base (good) and every app on it, each app tagged `v1`, into `fleet`'s registry."""
    base_ref = push_base(client, fleet.registry, 1)
    fleet.base_versions[BASE] = [base_ref]
    for app in APPS:
        spec = app_spec(app, base_ref, base_spec(1))
        fleet.apps[app] = images.push(client, ImageRef(fleet.registry, f"apps/{app}"), spec, tags=("v1",))


def push_next_base(client: RegistryClient, fleet: SeededFleet, flavour: str) -> ImageRef:
    """The next patch of the base in `flavour`, as the base's pipeline would push it; recorded in `fleet`."""
    versions = fleet.base_versions[BASE]
    ref = push_base(client, fleet.registry, len(versions) + 1, flavour)
    versions.append(ref)
    return ref


def seed_services(fleet: SeededFleet, run: run_v2.ServicesClient, *, count: int = 8, timeout: float = 120,
                  projects: tuple[str, ...] = PROJECTS, regions: tuple[str, ...] = REGIONS,
                  opted_out: int = 0, canaries: int = 0) -> list[SeededService]:
    """Create `count` services `www-NNN` round-robin over APPS and locations, deployed by digest, the first
    `canaries` in the canary cohort, the last `opted_out` labelled out of baseroll, and wait until each is ready (its revision really serving,
    where the stand-in runs revisions)."""
    locations = [(p, r) for p in projects for r in regions]
    operations, seeded = [], []
    for i in range(count):
        app = list(APPS)[i % len(APPS)]
        project, region = locations[i % len(locations)]
        image = str(fleet.apps[app])
        labels = {"tenant": f"w{i:03d}", APP_TAG_LABEL: "v1"}
        if i >= count - opted_out:
            labels[OPT_OUT_LABEL] = "true"
        elif i < canaries:
            labels[COHORT_LABEL] = "canary"
        service = run_v2.Service(labels=labels,
                                 template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)]))
        operations.append(run.create_service(parent=f"projects/{project}/locations/{region}", service=service,
                                             service_id=f"www-{i:03d}"))
        seeded.append(SeededService(f"projects/{project}/locations/{region}/services/www-{i:03d}", app, BASE,
                                    image, opted_out=OPT_OUT_LABEL in labels))
    for op in operations:
        op.result(timeout=timeout)
    fleet.services.extend(seeded)
    return seeded
