"""What gcloud's Java emulators (Firestore, Pub/Sub) share: a jar started with Java on a free loopback
port, ready when its root answers, stopped by its PID, with a work folder for its log."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from .procs import LOOPBACK, free_port, stop, wait_until

JAVA_MISSING = "java not found: gcloud's emulators need a Java 11+ runtime (apt-get install default-jre-headless)"
# Where gcloud keeps its components (Debian's google-cloud-cli-* packages, or a user's own SDK).
SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "~/google-cloud-sdk")


def find_jar(*, what: str, component: str, pattern: str, package: str, override_var: str) -> Path:
    """The jar of gcloud's `component` (`pattern` under its platform folder; the newest if several),
    or `override_var`'s file; else a RuntimeError naming what was looked for and how to get it."""
    override = os.environ.get(override_var)
    if override:
        path = Path(override).expanduser()
        if path.is_file():
            return path
        raise RuntimeError(f"the {what} is missing: {override_var}={override} is not a file")
    for root in SDK_ROOTS:
        jars = sorted((Path(root).expanduser() / "platform" / component).glob(pattern))
        if jars:
            return jars[-1]
    raise RuntimeError(
        f"the {what} is missing: no {pattern} under {SDK_ROOTS[0]}/platform/{component} (apt-get install "
        f"{package}, or gcloud components install {component}, or set {override_var} to its jar)")


class JavaEmulator:
    """A subclass names itself (`what`), its log and its command line (`command`)."""

    what = "emulator"
    log_name = "emulator.log"

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"baseroll-{self.log_name.split('.')[0]}-"))
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def command(self, java: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> "JavaEmulator":
        java = shutil.which("java")
        if java is None:
            raise RuntimeError(JAVA_MISSING)
        command = self.command(java)  # finds the jar first: a missing one is named before anything starts
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / self.log_name, "wb")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # gcloud's emulators answer "Ok" on their root once they serve requests.
        wait_until(lambda: httpx.get(f"http://{self.host}/", timeout=1.0).status_code == 200,
                   timeout=60, what=self.what, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
