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

import shutil
import time
from pathlib import Path
from typing import Iterable

import httpx

from . import java_emulator
from .java_emulator import JAVA_MISSING, JavaEmulator
from .procs import LOOPBACK

def find_jar() -> Path:
    """The emulator's jar (BASEROLL_PUBSUB_EMULATOR_JAR overrides), or a RuntimeError saying how to get it."""
    return java_emulator.find_jar(what="Pub/Sub emulator", component="pubsub-emulator",
                                  pattern="lib/cloud-pubsub-emulator-*.jar", package="google-cloud-cli-pubsub-emulator",
                                  override_var="BASEROLL_PUBSUB_EMULATOR_JAR")


def missing() -> str | None:
    """Why the emulator cannot start here (no jar, no java), or None when it can."""
    try:
        find_jar()
    except RuntimeError as exc:
        return str(exc)
    if shutil.which("java") is None:
        return JAVA_MISSING
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


class PubSubEmulator(JavaEmulator):
    """`with PubSubEmulator() as ps: ps.host  # "127.0.0.1:PORT"`."""

    what = "Pub/Sub emulator"
    log_name = "pubsub.log"

    def env(self) -> dict[str, str]:
        """What a process needs so the unmodified clients talk to this emulator."""
        return {"PUBSUB_EMULATOR_HOST": self.host}

    def command(self, java: str) -> list[str]:
        # Its flags take `--name=value` only (a separate value is read as an empty string).
        return [java, "-Duser.language=en", "-jar", str(find_jar()), f"--host={LOOPBACK}", f"--port={self.port}"]

    def reset(self) -> None:
        """Delete every topic and subscription (the emulator's own endpoint); message ids keep counting."""
        httpx.post(f"http://{self.host}/reset", timeout=10).raise_for_status()
