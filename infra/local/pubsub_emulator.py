"""gcloud's own Pub/Sub emulator (the `pubsub-emulator` component, Java) on 127.0.0.1: the fidelity
oracle for the Pub/Sub stand-in (docs/GOOGLE_APIS.md#pubsub, "Pub/Sub emulator").

Started from its jar on a free port and stopped by its PID. The unmodified google-cloud-pubsub clients
reach it through PUBSUB_EMULATOR_HOST (`env()`). It pushes the plain Pub/Sub push body
({"message": {...}, "subscription": ...}, no `ce-*` headers); functions-framework turns that into a
CloudEvent for a cloudevent function, taking the topic from the request path, hence `push_endpoint()`.
It has no fault injection and no idle signal: the stand-in stays for those.

    with PubSubEmulator() as ps:
        os.environ.update(ps.env())
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

import httpx

from .procs import LOOPBACK, free_port, stop, wait_until

# Where gcloud keeps the component (Debian's google-cloud-cli-pubsub-emulator package, or
# `gcloud components install pubsub-emulator`); BASEROLL_PUBSUB_EMULATOR_JAR overrides.
EMULATOR_DIRS = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator",
    "~/google-cloud-sdk/platform/pubsub-emulator",
)


def find_jar() -> Path:
    """The emulator's jar, or a RuntimeError naming the paths looked at and how to get it."""
    override = os.environ.get("BASEROLL_PUBSUB_EMULATOR_JAR")
    if override:
        if Path(override).expanduser().is_file():
            return Path(override).expanduser()
        raise RuntimeError(f"the Pub/Sub emulator is missing: BASEROLL_PUBSUB_EMULATOR_JAR={override} is not a file")
    for directory in EMULATOR_DIRS:
        jars = sorted(Path(directory).expanduser().glob("lib/cloud-pubsub-emulator-*.jar"))
        if jars:
            return jars[-1]
    raise RuntimeError(
        f"the Pub/Sub emulator is missing: no lib/cloud-pubsub-emulator-*.jar under {EMULATOR_DIRS[0]} "
        "(apt-get install google-cloud-cli-pubsub-emulator, or gcloud components install pubsub-emulator, "
        "or set BASEROLL_PUBSUB_EMULATOR_JAR to its jar)")


def missing() -> str | None:
    """Why the emulator cannot start here (no jar, no java), or None when it can."""
    try:
        find_jar()
    except RuntimeError as exc:
        return str(exc)
    if shutil.which("java") is None:
        return "java not found: the Pub/Sub emulator needs a Java 11+ runtime (apt-get install openjdk-17-jre-headless)"
    return None


def push_endpoint(function_url: str, topic: str) -> str:
    """The push endpoint for `topic` on a functions-framework function: the topic path in the URL is
    where functions-framework takes the CloudEvent's `source` from for a plain push body
    (`event_conversion._parse_pubsub_topic`); without it the source has no topic."""
    return f"{function_url.rstrip('/')}/{topic}"


def wait_quiet(paths: Iterable[Path], *, quiet_s: float, timeout: float) -> bool:
    """Until none of `paths` (the push endpoints' logs) has changed for `quiet_s` seconds, at most
    `timeout`: the emulator exposes no backlog, so quiet endpoints are the nearest thing to idle."""
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while True:
        newest = max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)
        if time.time() - newest >= quiet_s:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class PubSubEmulator:
    """`with PubSubEmulator() as ps: ps.host  # "127.0.0.1:PORT"`."""

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="baseroll-pubsub-"))
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs so the unmodified clients talk to this emulator."""
        return {"PUBSUB_EMULATOR_HOST": self.host}

    def start(self) -> "PubSubEmulator":
        jar = find_jar()
        java = shutil.which("java")
        if java is None:
            raise RuntimeError(missing() or "java not found")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "pubsub.log", "wb")
        # Its flags take `--name=value` only (a separate value is read as an empty string).
        self.proc = subprocess.Popen(
            [java, "-Duser.language=en", "-jar", str(jar), f"--host={LOOPBACK}", f"--port={self.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # The emulator answers "Ok" on its root once it serves requests.
        wait_until(lambda: httpx.get(f"http://{self.host}/", timeout=1.0).status_code == 200,
                   timeout=60, what="Pub/Sub emulator", proc=self.proc)
        return self

    def reset(self) -> None:
        """Delete every topic and subscription (the emulator's own endpoint); message ids keep counting."""
        httpx.post(f"http://{self.host}/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PubSubEmulator":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
