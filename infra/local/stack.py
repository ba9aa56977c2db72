"""The local stack, started and stopped as one: the real registry, the real Firestore emulator (the
rollout store), the Cloud Run stand-in, and each entry point as its own functions-framework process.

The registry requires auth as Artifact Registry does (infra/local/token_server.py): the functions,
the CLI, the seeding and the Cloud Run stand-in all authenticate with the stack's secret, which the
configuration names as a `registry_credentials` password file (a mounted Secret Manager secret in
production); `tokens.issued` and `tokens.counts` show the exchanges.

    with LocalStack(targets=("on_artifact_push",)) as stack:
        stack.function_url("on_artifact_push")

`make up` (`python -m infra.local.playground up`) starts it with a seeded fleet and keeps it up
until Ctrl-C, printing the exports and commands to try (infra/local/playground.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import yaml
from baseroll.contracts import topics
from baseroll.config import CLOUD_RUN_TRANSPORTS
from baseroll.images.registry import RegistryClient, StaticCredentials
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, run_v2

from .bearer_auth import BearerAuth
from .cloudrun_standin import CloudRunStandin
from .firestore_emulator import FirestoreEmulator
from .procs import LOOPBACK, free_port, stop, wait_until
from .pubsub_emulator import PubSubEmulator, push_endpoint, wait_quiet
from .pubsub_standin import PubSubStandin
from .registry_server import RegistryServer
from .seed import BASES, COHORT_LABEL, OPT_OUT_LABEL, PROJECTS, REGIONS
from .token_server import TokenServer

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "functions" / "main.py"
TOPIC_PROJECT = "baseroll-host"  # the project holding the topics, as in a real deployment
WORKER_SERVICE_ACCOUNT = f"baseroll-worker@{TOPIC_PROJECT}.iam.gserviceaccount.com"
# Each entry point and the topic whose push subscription delivers to it (infra/terraform mirrors this).
TRIGGERS = {
    "on_artifact_push": topics.ARTIFACT_PUSHES,
    "roll_service": topics.TASKS,
    "on_roll_result": topics.RESULTS,
    "on_roll_request": topics.REQUESTS,
    "on_build_complete": topics.BUILDS,
}


class LocalStack:
    def __init__(self, *, targets: Iterable[str] = tuple(TRIGGERS), deploy_latency_s: float = 0.05,
                 ready_timeout_s: float = 30.0, concurrency: int = 8, workdir: Path | None = None,
                 rollout: dict | None = None, write_quota_per_min: int | None = None,
                 pubsub_faults: dict | None = None, projects: tuple[str, ...] = PROJECTS,
                 regions: tuple[str, ...] = REGIONS, cloudrun_workers: int = 8, push_concurrency: int = 24,
                 function_threads: int = 32, extra_tracks: Iterable[dict] = (),
                 signatures: dict | None = None, pubsub_emulator: bool = False, run_revisions: bool = False,
                 cloud_run_transport: str | None = None) -> None:
        self.signatures = signatures
        # The Cloud Run stand-in's running mode: revisions run as processes behind its loopback proxy
        # (docs/GOOGLE_APIS.md#revisions-that-really-run); the simulated mode otherwise.
        self.run_revisions = run_revisions
        # The functions' and the CLI's transport to the Cloud Run stand-in: gRPC, production's, unless
        # given or BASEROLL_CLOUD_RUN_TRANSPORT says `rest` (the stand-in serves both over one state).
        self.cloud_run_transport = cloud_run_transport or os.environ.get("BASEROLL_CLOUD_RUN_TRANSPORT") or "grpc"
        if self.cloud_run_transport not in CLOUD_RUN_TRANSPORTS:
            raise ValueError(f"cloud_run_transport: one of {CLOUD_RUN_TRANSPORTS}, got {self.cloud_run_transport!r}")
        self.projects, self.regions = projects, regions
        # More base tracks after the seeded ones: {"name": ..., "image": "{registry}/repo:tag"}, where
        # `{registry}` stands for the local registry's host:port (not known before the stack exists).
        self.extra_tracks = [dict(t) for t in extra_tracks]
        self.cloudrun_workers = cloudrun_workers  # the stand-in's deploy workers (each holds a deploy for its latency)
        self.function_threads = function_threads  # functions-framework (gunicorn gthread) threads per function
        self.targets = tuple(targets)
        self.rollout_overrides = rollout or {}
        self.write_quota_per_min = write_quota_per_min
        self.pubsub_faults = pubsub_faults or {}
        # Eventarc retries for days with up to 600 s between attempts; scaled down, but long enough
        # to outlast a crashed coordinator step's lease.
        self.pubsub: PubSubStandin | PubSubEmulator = PubSubStandin(
            min_backoff_s=0.2, max_backoff_s=5.0, push_concurrency=push_concurrency, push_timeout_s=120,
            max_delivery_attempts=100)
        if pubsub_emulator:  # gcloud's emulator instead (no faults): docs/GOOGLE_APIS.md#pubsub-emulator
            if self.pubsub_faults:
                raise ValueError("pubsub_faults need the Pub/Sub stand-in, not the emulator")
            self.pubsub = PubSubEmulator()
        self._saved_emulator_env: dict[str, str | None] = {}
        self.publisher: pubsub_v1.PublisherClient | None = None
        self.deploy_latency_s = deploy_latency_s
        self.ready_timeout_s = ready_timeout_s
        self.concurrency = concurrency
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="baseroll-stack-"))
        # Logs are kept for a look after a failure: set `keep`, or BASEROLL_KEEP_STACK=1.
        self.keep = workdir is not None or os.environ.get("BASEROLL_KEEP_STACK") == "1"
        self.tokens = TokenServer()
        self._tokens_started = False
        self.registry = RegistryServer(workdir=self.workdir / "registry", token_server=self.tokens)
        self.password_file = self.workdir / "registry-password"  # as a Secret Manager secret is mounted
        # The worker's service-account key: google-auth trades it at the token server for the ID
        # tokens of verification requests (docs/GOOGLE_APIS.md#verify-at-zero-traffic).
        self.worker_key_file = self.workdir / "worker-key.json"
        self.firestore = FirestoreEmulator(workdir=self.workdir / "firestore")
        self.cloudrun: CloudRunStandin | None = None
        self.functions: dict[str, tuple[subprocess.Popen, int]] = {}
        self.config_path = self.workdir / "baseroll.yaml"

    # --- clients, as baseroll and the seeder use them
    def run_client(self) -> run_v2.ServicesClient:
        """The seeder's and the tests' own client (the "people" racing baseroll): REST, so with the
        functions on gRPC both fronts of the stand-in serve one fleet at once."""
        assert self.cloudrun is not None
        return run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                     client_options=ClientOptions(api_endpoint=self.cloudrun.url))

    def cloud_run_endpoint(self) -> str | None:
        """The stand-in's front for the configured transport (`http://`: plaintext)."""
        if self.cloudrun is None:
            return None
        return self.cloudrun.grpc_url if self.cloud_run_transport == "grpc" else self.cloudrun.url

    def registry_client(self) -> RegistryClient:
        """A client that authenticates as the functions do (the seeder's and the tests' own)."""
        host = self.registry.host
        return RegistryClient(plain_http_hosts=[host], allowed_hosts=[host, self.tokens.host],
                              credentials=StaticCredentials({host: (self.tokens.username, self.tokens.secret)}),
                              token_hosts={host: [self.tokens.host]})

    def function_url(self, target: str) -> str:
        return f"http://{LOOPBACK}:{self.functions[target][1]}/"

    def function_log(self, target: str) -> Path:
        return self.workdir / f"{target}.log"

    def log_records(self, message: str | None = None, *, target: str | None = None) -> list[dict]:
        """The structured log lines the functions wrote (all of them, or one function's), optionally
        only those with `message`. Tracebacks and a line cut by a crash are passed over."""
        out = []
        for t in (target,) if target else self.targets:
            path = self.function_log(t)
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if message is None or record.get("message") == message:
                    out.append(record)
        return out

    def update_counts(self) -> dict[str, int]:
        """Per service, how many updates the Cloud Run stand-in has applied."""
        assert self.cloudrun is not None
        return {name: int(v.get("updates", 0)) for name, v in self.cloudrun.stats()["services"].items()}

    def config(self) -> dict:
        host = self.registry.host
        return {
            "projects": list(self.projects),
            "regions": list(self.regions),
            # The token server is allow-listed and named as the registry's token host: credentials go there.
            "allowed_registries": [host, self.tokens.host],
            "plain_http_registries": [host],
            "registry_credentials": [{"host": host, "username": self.tokens.username,
                                      "password_file": str(self.password_file), "token_hosts": [self.tokens.host]}],
            "base_tracks": [{"name": b.name, "image": f"{host}/{b.repository}:{b.tag}",
                             "version_tags": list(b.version_tags)} for b in BASES if b.tracked]
            + [{**t, "image": str(t["image"]).replace("{registry}", host)} for t in self.extra_tracks],
            "labels": {"opt_out": OPT_OUT_LABEL, "cohort": COHORT_LABEL},
            "rollout": {"ready_timeout_s": self.ready_timeout_s, "concurrency": self.concurrency,
                        "waves": [0.1, 0.5, 1.0], "failure_budget": 1, "write_quota_per_min": 600,
                        "invocation_budget_s": 60, "poll_interval_s": 0.3,
                        # Verify at zero traffic where revisions really run; a test turns it on in the
                        # simulated mode (the proxy answers 200 for a ready revision) with `rollout`.
                        "verify": {"enabled": self.run_revisions}, **self.rollout_overrides},
            "cloud_run_endpoint": self.cloud_run_endpoint(),
            "cloud_run_transport": self.cloud_run_transport,
            "pubsub_project": TOPIC_PROJECT,
            **({"signatures": self.signatures} if self.signatures else {}),
        }

    # --- lifecycle
    def start(self) -> "LocalStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(self.tokens.secret)
        self.tokens.start()
        self.worker_key_file.touch(mode=0o600)
        self.worker_key_file.write_text(json.dumps(self.tokens.service_account_key(WORKER_SERVICE_ACCOUNT)))
        self._tokens_started = True
        self.registry.start()
        self.cloudrun = CloudRunStandin(registry_host=self.registry.host, deploy_latency_s=self.deploy_latency_s,
                                        write_quota_per_min=self.write_quota_per_min,
                                        workers=self.cloudrun_workers,
                                        registry_auth=BearerAuth(self.tokens.username, self.tokens.secret),
                                        run_revisions=self.run_revisions,
                                        registry_credentials=(self.tokens.username, self.tokens.secret),
                                        workdir=self.workdir / "cloudrun")
        self.cloudrun.start()
        self.pubsub.start()
        self.firestore.start()
        # The unmodified Pub/Sub and Firestore clients here and in every function process reach
        # the stand-in and the emulator.
        emulators = {"PUBSUB_EMULATOR_HOST": self.pubsub.host, "FIRESTORE_EMULATOR_HOST": self.firestore.host}
        self._saved_emulator_env = {name: os.environ.get(name) for name in emulators}
        os.environ.update(emulators)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.publisher = pubsub_v1.PublisherClient()
        sign_topic = (self.signatures or {}).get("request_topic")
        for topic in {*TRIGGERS.values(), *topics.PUBLISHED, *([sign_topic] if sign_topic else [])}:
            self.publisher.create_topic(name=self.publisher.topic_path(self.topic_project(topic), topic))
        subscriber = pubsub_v1.SubscriberClient()
        for target in self.targets:
            self.start_function(target)
            topic = self.publisher.topic_path(self.topic_project(TRIGGERS[target]), TRIGGERS[target])
            emulated = isinstance(self.pubsub, PubSubEmulator)
            subscriber.create_subscription(request={
                "name": subscriber.subscription_path(TOPIC_PROJECT, f"eventarc-{target.replace('_', '-')}"),
                "topic": topic,
                # The emulator pushes the plain push body and cuts a push at the ack deadline.
                "push_config": {"push_endpoint": push_endpoint(self.function_url(target), topic) if emulated
                                else self.function_url(target)},
                **({"ack_deadline_seconds": 600} if emulated else {}),
            })
        if self.pubsub_faults:
            self.pubsub.set_faults(**self.pubsub_faults)
        return self

    @staticmethod
    def topic_project(topic: str) -> str:
        # Artifact Registry and Cloud Build publish in the registry's / build's project.
        return "baseroll-registry" if topic in (topics.ARTIFACT_PUSHES, topics.BUILDS) else TOPIC_PROJECT

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        path = self.publisher.topic_path(self.topic_project(topic), topic)
        return self.publisher.publish(path, data, **attributes).result(timeout=30)

    def wait_idle(self, timeout: float) -> bool:
        """Until no message is queued or in flight in the Pub/Sub stand-in (bounded). The emulator has no
        such signal: there, until no function has written a log line for a second (its redelivery tick)."""
        if isinstance(self.pubsub, PubSubEmulator):
            return wait_quiet([self.function_log(t) for t in self.targets], quiet_s=1.0, timeout=timeout)
        return self.pubsub.wait_idle(timeout)

    def start_function(self, target: str) -> None:
        self._spawn_function(target, free_port(), timeout=30)

    def _spawn_function(self, target: str, port: int, *, timeout: float) -> None:
        """Run one entry point under functions-framework on `port`, in its own process group."""
        env = {**os.environ, "BASEROLL_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1",
               "GOOGLE_APPLICATION_CREDENTIALS": str(self.worker_key_file),
               "THREADS": str(self.function_threads)}
        # The configuration names the stand-in's front and its transport, as a pair.
        for name in ("BASEROLL_CONFIG_YAML", "BASEROLL_CLOUD_RUN_ENDPOINT", "BASEROLL_CLOUD_RUN_TRANSPORT"):
            env.pop(name, None)
        binary = shutil.which("functions-framework", path=str(Path(sys.executable).parent)) or "functions-framework"
        log = open(self.function_log(target), "ab")
        proc = subprocess.Popen(
            [binary, "--source", str(MAIN), "--target", target, "--signature-type", "cloudevent",
             "--host", LOOPBACK, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), start_new_session=True,
        )
        self.functions[target] = (proc, port)

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, port)) == 0

        wait_until(listening, timeout=timeout, what=f"function {target}", proc=proc)

    def stop_function(self, target: str) -> None:
        proc, _ = self.functions.pop(target)
        stop(proc)

    def stop(self) -> None:
        # Deliveries first, so no function is pushed to while it stops.
        self.pubsub.stop()
        for target in list(self.functions):
            self.stop_function(target)
        for name, saved in self._saved_emulator_env.items():
            if saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved
        self._saved_emulator_env = {}
        self.firestore.stop()
        if self.cloudrun is not None:
            self.cloudrun.stop()
            self.cloudrun = None
        self.registry.stop()
        if self._tokens_started:
            self.tokens.stop()
            self._tokens_started = False
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- crash injection (tests/e2e/test_reliability.py)
    def kill_function(self, target: str) -> int:
        """SIGKILL a function by its PID, with its gunicorn workers (its own process group, as
        started): a crash, no cleanup, requests in flight cut. Pub/Sub pushes to it fail (and are
        redelivered) until `restart_function`. Returns the PID killed."""
        proc, _ = self.functions[target]
        if proc.poll() is None:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        return proc.pid

    def restart_function(self, target: str, *, timeout: float = 30.0) -> None:
        """Start a killed function again on the same port, so its push subscription reaches it again."""
        proc, port = self.functions[target]
        if proc.poll() is None:
            raise RuntimeError(f"{target} is still running (pid {proc.pid}): kill_function it first")
        self._spawn_function(target, port, timeout=timeout)
