"""Revisions of the Cloud Run stand-in as real processes: the ingress container's entrypoint, chrooted into
its unpacked image, with `PORT` set to a loopback port reserved for it alone (outside the kernel's ephemeral
range), ready when Cloud Run's default startup probe (a TCP connect on $PORT) succeeds within the startup
timeout and the listener is the revision's own; an app that could not bind its port is started once more on
another (docs/GOOGLE_APIS.md#revisions-that-really-run).

Each process leads its own session, so stopping a revision (SIGTERM, then SIGKILL) ends everything it
started. At most `max_processes` run at once; `stop_all()` leaves none behind.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..procs import LOOPBACK, SERVER_PORTS, PortReservations, group_listens_on
from .bundles import Bundle, BundleCache, BundleError
from .images import DeployFailure

log = logging.getLogger("baseroll.standin.cloudrun")
PROBE_PERIOD_S = 0.05
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"  # util-linux, on every Debian system
STOP_GRACE_S = 3.0
# A stand-in's own failure, not the app's: the port was taken between its reservation and the app's bind (by a
# process outside this stand-in). glibc says "Address already in use", musl "Address in use".
PORT_TAKEN = re.compile(rb"address (?:already )?in use", re.IGNORECASE)
PORT_ATTEMPTS = 2
# Cloud Run's message for a revision whose container did not listen on $PORT in time.
NOT_LISTENING = (
    "The user-provided container failed to start and listen on the port defined provided by the PORT={port} "
    "environment variable within the allocated timeout. This can happen when the container port is misconfigured "
    "or if the timeout is too short. The health check timeout can be extended. Logs for this revision might "
    "contain more information. Logs URL: file://{log}"
)


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for one revision: the image and the container's own overrides and variables."""

    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # the container's env, then the variables Cloud Run sets
    working_dir: str = ""  # the container's; empty: the image's WorkingDir


@dataclass
class RunningRevision:
    key: str
    port: int
    digest: str
    proc: subprocess.Popen = field(repr=False)
    idle_since: float | None = None  # when it stopped being wanted (monotonic), for the drain period

    @property
    def pid(self) -> int:
        return self.proc.pid


def argv_of(bundle: Bundle, command: tuple[str, ...], args: tuple[str, ...]) -> list[str]:
    """Cloud Run's (Kubernetes') rule: `command` replaces the image's Entrypoint and drops its Cmd; `args`
    replaces Cmd."""
    if command:
        return [*command, *args]
    return [*bundle.entrypoint, *(args or bundle.cmd)]


def env_of(bundle: Bundle, spec: LaunchSpec) -> dict[str, str]:
    """The image's Env, overridden by the container's and then by what Cloud Run sets (PORT, K_*)."""
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in bundle.env)
    env.update(dict(spec.env))
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def _port_was_taken(log_path: Path, offset: int) -> bool:
    """Whether the app's output since `offset` says its bind failed because the port was in use."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        return PORT_TAKEN.search(f.read(1 << 16)) is not None


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


class RevisionRunner:
    """Starts, probes and stops revision processes; `port(key)` tells the proxy where one listens."""

    def __init__(self, bundles: BundleCache, logs: Path, *, max_processes: int = 32,
                 startup_timeout_s: float = 20.0, drain_s: float = 1.0,
                 ports: PortReservations = SERVER_PORTS) -> None:
        self.bundles = bundles
        self.ports = ports  # each running revision's port is reserved there until its process is stopped
        self.logs = logs
        self.max_processes = max_processes
        self.startup_timeout_s = startup_timeout_s
        self.drain_s = drain_s  # so a request routed to a revision just before it retired still finishes
        self._running: dict[str, RunningRevision] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._starting = 0  # starts under way (pulling, unpacking)

    def start(self, key: str, spec: LaunchSpec) -> DeployFailure | None:
        """Pull, unpack and run the revision `key`; None once it listens, else why it failed (stopped)."""
        if os.geteuid() != 0:
            return DeployFailure("REVISION_FAILED", "the stand-in runs revisions chrooted, which needs root")
        with self._lock:
            if len(self._running) + self._starting >= self.max_processes:
                return DeployFailure("ACTIVE_REVISION_LIMIT_REACHED",
                                     f"The stand-in runs at most {self.max_processes} revisions at once.")
            self._starting += 1  # holds a place for it while it is pulled, so the cap holds
            busy = frozenset(r.digest for r in self._running.values())
        try:
            return self._start(key, spec, busy)
        finally:
            with self._lock:
                self._starting -= 1

    def _start(self, key: str, spec: LaunchSpec, busy: frozenset[str]) -> DeployFailure | None:
        try:
            bundle = self.bundles.get(spec.image, busy=busy)
        except BundleError as e:
            return DeployFailure("CONTAINER_MISSING", f"Image '{spec.image}' could not be pulled: {e}")
        log_path = self.logs / f"{key.replace('/', '_')}.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        for _ in range(PORT_ATTEMPTS - 1):
            logged = log_path.stat().st_size if log_path.exists() else 0
            failure = self._run(key, bundle, spec, log_path)
            if failure is None or not _port_was_taken(log_path, logged):
                return failure
            log.warning("cloudrun stand-in: %s could not bind its port; starting it on another", key)
            with open(log_path, "a") as out:
                out.write("cloudrun stand-in: the port was taken by another process; starting again on another port\n")
        return self._run(key, bundle, spec, log_path)

    def _run(self, key: str, bundle: Bundle, spec: LaunchSpec, log_path: Path) -> DeployFailure | None:
        """One start of the revision on a newly reserved port: None once it listens, else why (stopped)."""
        try:
            port = self.ports.reserve()
        except OSError as e:
            return DeployFailure("REVISION_FAILED", f"the stand-in has no port for the revision: {e}")
        try:
            proc = self._spawn(bundle, spec, port, log_path)
        except OSError as e:  # e.g. the executable is not in the image: Cloud Run fails the same way
            self.ports.release(port)
            return self._not_listening(port, log_path, f"cannot start the entrypoint: {e}")
        running = RunningRevision(key, port, bundle.digest, proc)
        with self._lock:
            if self._closed:
                self._stop(running)
                return DeployFailure("REVISION_FAILED", "the stand-in is stopping")
            self._running[key] = running
        return self._probe(running, log_path)

    def _spawn(self, bundle: Bundle, spec: LaunchSpec, port: int, log_path: Path) -> subprocess.Popen:
        """Exec the entrypoint through util-linux `unshare --root --wd` (a chroot and a chdir, no new
        namespaces): a Python `preexec_fn` would fork this multi-threaded process, whose gRPC fork handlers
        then abort the child (seen as exit -6); without one, subprocess spawns without fork handlers."""
        argv = argv_of(bundle, spec.command, spec.args)
        if not argv:
            raise OSError("the image sets no Entrypoint or Cmd and the container no command")
        env = {**env_of(bundle, spec), "PORT": str(port)}
        workdir = spec.working_dir or bundle.workdir
        with open(log_path, "ab") as out:
            # argv[0] is looked up after the chroot, on the container's PATH, as in the container.
            return subprocess.Popen([UNSHARE, f"--root={bundle.rootfs}", f"--wd={workdir}", "--", *argv], env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)

    def _probe(self, running: RunningRevision, log_path: Path) -> DeployFailure | None:
        """Cloud Run's default startup probe, TCP on $PORT, polled until the startup timeout. The listener
        must also be a socket of the revision's own process group: the port is reserved for this revision
        in this stand-in, but a process outside it could still hold it."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._closed:
                self.stop(running.key)
                return DeployFailure("REVISION_FAILED", "the stand-in is stopping")
            if running.proc.poll() is not None:
                self.stop(running.key)
                return self._not_listening(running.port, log_path, f"container exited with {running.proc.returncode}")
            if listening(running.port) and group_listens_on(running.pid, running.port):
                return None
            time.sleep(PROBE_PERIOD_S)
        self.stop(running.key)
        return self._not_listening(running.port, log_path, f"no listener after {self.startup_timeout_s:.0f}s")

    @staticmethod
    def _not_listening(port: int, log_path: Path, why: str) -> DeployFailure:
        log.warning("cloudrun stand-in: revision did not start: %s (log %s)", why, log_path)
        with open(log_path, "a") as out:  # the Logs URL shows why, after whatever the container wrote
            out.write(f"cloudrun stand-in: {why}\n")
        return DeployFailure("HEALTH_CHECK_CONTAINER_ERROR", NOT_LISTENING.format(port=port, log=log_path))

    def port(self, key: str) -> int | None:
        with self._lock:
            running = self._running.get(key)
        return running.port if running is not None and running.proc.poll() is None else None

    def running(self) -> dict[str, int]:
        """Key → PID of every process started and not stopped."""
        with self._lock:
            return {k: r.pid for k, r in self._running.items()}

    def keep_only(self, keys: set[str]) -> list[str]:
        """Stop every revision not in `keys` (retired, pruned, its service deleted) once it has been out
        of them for `drain_s`, so requests routed to it just before finish; the keys stopped."""
        now = time.monotonic()
        with self._lock:
            for key, running in self._running.items():
                running.idle_since = None if key in keys else (running.idle_since or now)
            retired = [k for k, r in self._running.items() if r.idle_since is not None and now - r.idle_since >= self.drain_s]
        for key in retired:
            self.stop(key)
        return retired

    def stop(self, key: str) -> None:
        with self._lock:
            running = self._running.pop(key, None)
        if running is not None:
            self._stop(running)

    def _stop(self, running: RunningRevision) -> None:
        """SIGTERM the process group (Cloud Run's shutdown signal), then SIGKILL whatever is left of it."""
        proc = running.proc
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # its own session: the group id is its PID
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
        self.ports.release(running.port)

    def close(self) -> None:
        """Start no more processes and end probes in progress; `stop_all` then stops what runs."""
        with self._lock:
            self._closed = True

    def stop_all(self) -> None:
        with self._lock:
            self._closed = True
            running = list(self._running.values())
            self._running.clear()
        for r in running:
            self._stop(r)
