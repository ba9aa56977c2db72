"""A Cloud Run Admin API v2 stand-in for the unmodified `google.cloud.run_v2` clients, over REST and gRPC.

    with CloudRunStandin(registry_host=reg.host) as cr:
        rest = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                     client_options=ClientOptions(api_endpoint=cr.url))
        grpc_ = run_v2.ServicesClient(transport=run_v2.services.services.transports.ServicesGrpcTransport(
            channel=grpc.insecure_channel(cr.grpc_target)))

Both fronts share one state (`services`, `deploys`), one set of faults, write quota and statistics
(`faults`). Deploys behave like Cloud Run: each template change makes a revision and a long-running
operation that a bounded worker pool finishes after `deploy_latency_s`. The revision becomes Ready only if
its images resolve in the real registry (`images`); otherwise it fails with a Cloud Run condition reason,
and the previously ready revision keeps serving.

With `run_revisions=True` each revision also really runs: its image is pulled and unpacked, its
entrypoint started chrooted with `PORT` set, and it is ready only once it listens there (Cloud Run's
default startup probe); retired revisions are stopped. In both modes a loopback proxy at `proxy_base`
serves the service and tag URLs (`common.service_uri`, `common.tag_uri`): to the revision's process when
running, else answering for the ready revision itself (docs/GOOGLE_APIS.md#revisions-that-really-run).
"""
from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
from google.longrunning import operations_pb2

from ..bearer_auth import BearerAuth
from .bundles import BundleCache
from .common import LOOPBACK, ServiceRecord
from .deploys import DeploysMixin
from .faults import FaultsMixin
from .grpc_front import GrpcFront
from .images import ImageChecker
from .jobs import JobsMixin
from .proxy import RevisionProxy
from .rest import RestFront
from .runner import RevisionRunner
from .services import ServicesMixin
from .serving import ThreadedWsgi
from .workerpools import WorkerPoolsMixin
from .workloads_grpc import job_handlers
from .workloads_rest import WorkloadsRest

log = logging.getLogger("baseroll.standin.cloudrun")


class CloudRunStandin(RestFront, ServicesMixin, DeploysMixin, FaultsMixin, JobsMixin, WorkerPoolsMixin):
    """Cloud Run Admin API v2 on loopback: REST on `url`, gRPC on `grpc_target`; `start()`/`stop()` or use
    as a context manager."""

    def __init__(
        self,
        *,
        registry_host: str,
        host: str = LOOPBACK,
        port: int = 0,
        grpc_port: int = 0,
        deploy_latency_s: float = 0.05,
        write_quota_per_min: int | None = None,
        workers: int = 4,
        grpc_workers: int = 16,
        max_pending_deploys: int = 2048,
        seed: int | None = None,
        registry_auth: httpx.Auth | None = None,
        run_revisions: bool = False,
        registry_credentials: tuple[str, str] | None = None,
        startup_timeout_s: float = 20.0,
        max_revision_processes: int = 32,
        allow_unauthenticated: bool = False,
        workdir: Path | None = None,
        proxy_port: int = 0,
    ) -> None:
        self.registry_host = registry_host
        self.registry_auth = registry_auth  # how the image checks authenticate to the registry, if it asks
        self.host = host
        self.port = port
        self.grpc_port = grpc_port
        self.deploy_latency_s = deploy_latency_s
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._services: dict[str, ServiceRecord] = {}
        self._operations: OrderedDict[str, operations_pb2.Operation] = OrderedDict()
        self._init_faults(write_quota_per_min)
        self._init_jobs()
        self._init_worker_pools()
        self._workers = workers
        self._grpc_workers = grpc_workers
        self._max_pending = max_pending_deploys
        self._slots = threading.BoundedSemaphore(max_pending_deploys)  # bounds queued + running deploys
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._checker: ImageChecker | None = None
        self._rest = ThreadedWsgi(self._wsgi, host, port, "cloudrun-standin")
        self._grpc: grpc.Server | None = None
        self._routes = self._build_routes(WorkloadsRest(self).routes())
        # The running mode: revisions as processes (registry_credentials: skopeo's, as registry_auth's).
        self.run_revisions = run_revisions
        self.registry_credentials = registry_credentials
        self.startup_timeout_s = startup_timeout_s  # Cloud Run's default is 240 s; a stand-in needs less
        self.max_revision_processes = max_revision_processes
        self.allow_unauthenticated = allow_unauthenticated  # as if every service's invoker check were off
        self.workdir = workdir
        self.proxy = RevisionProxy(self, host, proxy_port, seed=seed)
        self._runner: RevisionRunner | None = None
        self._own_workdir: Path | None = None
        self._sweeper: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The REST front."""
        return f"http://{self.host}:{self.port}"

    @property
    def proxy_base(self) -> str:
        """Where service and tag URLs are served (`common.service_uri`, `common.tag_uri`)."""
        return self.proxy.base

    @property
    def grpc_target(self) -> str:
        """The gRPC front (plaintext), as `grpc.insecure_channel` takes it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def grpc_url(self) -> str:
        """The gRPC front as an endpoint URL (`http://`: plaintext), as baseroll's config names it."""
        return f"http://{self.grpc_target}"

    def start(self) -> "CloudRunStandin":
        self._stopping.clear()
        self._slots = threading.BoundedSemaphore(self._max_pending)
        self._checker = ImageChecker(self.registry_host, self._registry_client)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="cloudrun-deploy")
        self.proxy.start()
        if self.run_revisions:
            self._start_runner()
        # gRPC first: once REST answers (what callers wait for), both fronts serve.
        self._start_grpc()
        self.port = self._rest.start()
        return self

    def _registry_client(self) -> httpx.Client:
        # trust_env=False: a proxy from the environment must not sit between the stand-in and the registry.
        return httpx.Client(timeout=5.0, trust_env=False, follow_redirects=False, auth=self.registry_auth)

    def _start_grpc(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._grpc_workers, thread_name_prefix="cloudrun-grpc"),
            options=[
                ("grpc.max_send_message_length", -1),  # as the run_v2 client's channel: a page may exceed 4 MB
                ("grpc.max_receive_message_length", -1),
                ("grpc.so_reuseport", 0),  # a taken port must fail loudly, not be shared
            ],
        )
        server.add_generic_rpc_handlers(GrpcFront(self).handlers())
        server.add_generic_rpc_handlers(job_handlers(GrpcFront(self)))  # jobs, executions, worker pools
        bound = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if not bound:
            raise RuntimeError(f"cannot bind the Cloud Run stand-in's gRPC front to {self.host}:{self.grpc_port}")
        self.grpc_port = bound
        server.start()
        self._grpc = server

    def _start_runner(self) -> None:
        if self.workdir is None:
            self._own_workdir = Path(tempfile.mkdtemp(prefix="cloudrun-standin-"))
        workdir = self.workdir or self._own_workdir
        assert workdir is not None
        bundles = BundleCache(workdir / "images", credentials=self.registry_credentials)
        self._runner = RevisionRunner(bundles, workdir / "logs", max_processes=self.max_revision_processes,
                                      startup_timeout_s=self.startup_timeout_s)
        self._sweeper = threading.Thread(target=self._sweep_forever, name="cloudrun-sweeper", daemon=True)
        self._sweeper.start()

    def _stop_runner(self) -> None:
        """After the deploy pool: no revision starts any more; then every process is stopped."""
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
            self._sweeper = None
        if self._runner is not None:
            self._runner.stop_all()
            self._runner = None
        if self._own_workdir is not None:
            shutil.rmtree(self._own_workdir, ignore_errors=True)
            self._own_workdir = None

    def stop(self) -> None:
        self._stopping.set()  # wakes deploys sleeping out their latency
        if self._runner is not None:
            self._runner.close()  # ends startup probes in progress, so the deploy pool drains at once
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait(2.0)
            self._grpc = None
        self._rest.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.proxy.stop()
        self._stop_runner()
        if self._checker is not None:
            self._checker.close()
            self._checker = None

    def __enter__(self) -> "CloudRunStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.local.cloudrun_standin", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0, help="REST; 0 picks a free port (printed on start)")
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC; 0 picks a free port (printed on start)")
    parser.add_argument("--registry-host", required=True, help="host:port of the OCI registry images must come from")
    parser.add_argument("--deploy-latency-s", type=float, default=0.05)
    parser.add_argument("--write-quota-per-min", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--registry-username", help="with --registry-password-file: for a registry that wants auth")
    parser.add_argument("--registry-password-file", type=argparse.FileType("r"))
    parser.add_argument("--run-revisions", action="store_true", help="run each revision chrooted (needs root)")
    parser.add_argument("--startup-timeout-s", type=float, default=20.0, help="the TCP startup probe's time limit")
    parser.add_argument("--allow-unauthenticated", action="store_true", help="no invoker check on service URLs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.registry_username is None) != (args.registry_password_file is None):
        parser.error("--registry-username and --registry-password-file go together")
    creds = (args.registry_username, args.registry_password_file.read().strip()) if args.registry_username else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    standin = CloudRunStandin(
        registry_host=args.registry_host, host=args.host, port=args.port, grpc_port=args.grpc_port,
        deploy_latency_s=args.deploy_latency_s, write_quota_per_min=args.write_quota_per_min, seed=args.seed,
        registry_auth=BearerAuth(*creds) if creds else None, registry_credentials=creds,
        run_revisions=args.run_revisions, startup_timeout_s=args.startup_timeout_s,
        allow_unauthenticated=args.allow_unauthenticated,
    )
    with standin:
        print(f"cloudrun-standin listening on {standin.url} (REST) and {standin.grpc_target} (gRPC)", flush=True)
        mode = "revisions run" if args.run_revisions else "revisions simulated"
        print(f"service URLs under {standin.proxy_base}/s/<project>/<region>/<service> ({mode})", flush=True)
        done.wait()  # until SIGTERM/SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
