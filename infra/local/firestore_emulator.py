"""The real Firestore emulator (the `cloud-firestore-emulator` component gcloud ships) on 127.0.0.1.

Started from its jar on a free port, in native mode, and stopped by its PID. The unmodified
`google-cloud-firestore` client reaches it through FIRESTORE_EMULATOR_HOST (`env()`).

    with FirestoreEmulator() as fs:
        os.environ.update(fs.env())
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from .procs import LOOPBACK, free_port, stop, wait_until

# Where gcloud keeps the component (Debian's google-cloud-cli-firestore-emulator package, or
# `gcloud components install cloud-firestore-emulator`); BASEROLL_FIRESTORE_EMULATOR_JAR overrides.
JAR_CANDIDATES = (
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    "/usr/share/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    "~/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
)
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
PROJECT = "baseroll-host"  # the project the local stack's records live in


def find_jar() -> Path:
    """The emulator's jar, or a RuntimeError saying what is missing and how to get it."""
    override = os.environ.get("BASEROLL_FIRESTORE_EMULATOR_JAR")
    for candidate in ([override] if override else []) + list(JAR_CANDIDATES):
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    raise RuntimeError(
        "the Firestore emulator is missing: install gcloud's cloud-firestore-emulator component "
        "(apt-get install google-cloud-cli-firestore-emulator, or gcloud components install "
        "cloud-firestore-emulator) or set BASEROLL_FIRESTORE_EMULATOR_JAR to its jar")


class FirestoreEmulator:
    """`with FirestoreEmulator() as fs: fs.host  # "127.0.0.1:PORT"`."""

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="baseroll-firestore-"))
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs so the unmodified client talks to this emulator."""
        return {"FIRESTORE_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": PROJECT}

    def start(self) -> "FirestoreEmulator":
        jar = find_jar()
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java not found: the Firestore emulator needs a Java 11+ runtime (apt-get install "
                               "openjdk-17-jre-headless)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "firestore.log", "wb")
        self.proc = subprocess.Popen(
            [java, "-Duser.language=en", "-cp", str(jar), MAIN_CLASS, "start", "--host", LOOPBACK,
             "--port", str(self.port), "--database-mode", "firestore-native"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # The emulator answers "Ok" on its root once it serves requests.
        wait_until(lambda: httpx.get(f"http://{self.host}/", timeout=1.0).status_code == 200,
                   timeout=60, what="Firestore emulator", proc=self.proc)
        return self

    def reset(self) -> None:
        """Delete every document of every database (the emulator's own endpoint)."""
        httpx.delete(f"http://{self.host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents",
                     timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "FirestoreEmulator":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
