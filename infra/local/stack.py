"""The local stack, started and stopped as one: the real registry, the Cloud Run stand-in, and
each entry point as its own functions-framework process.

    with LocalStack(targets=("on_artifact_push",)) as stack:
        stack.function_url("on_artifact_push")

CLI: `python -m infra.local.stack up` starts it and prints its endpoints until Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import yaml
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from baseroll.registry import RegistryClient

from .cloudrun_standin import CloudRunStandin
from .procs import LOOPBACK, free_port, stop, wait_until
from .registry_server import RegistryServer
from .seed import BASES, COHORT_LABEL, OPT_OUT_LABEL, PROJECTS, REGIONS

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "functions" / "main.py"


class LocalStack:
    def __init__(self, *, targets: Iterable[str] = ("on_artifact_push",), deploy_latency_s: float = 0.05,
                 ready_timeout_s: float = 30.0, concurrency: int = 8, workdir: Path | None = None) -> None:
        self.targets = tuple(targets)
        self.deploy_latency_s = deploy_latency_s
        self.ready_timeout_s = ready_timeout_s
        self.concurrency = concurrency
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="baseroll-stack-"))
        self.registry = RegistryServer(workdir=self.workdir / "registry")
        self.cloudrun: CloudRunStandin | None = None
        self.functions: dict[str, tuple[subprocess.Popen, int]] = {}
        self.config_path = self.workdir / "baseroll.yaml"

    # --- clients, as baseroll and the seeder use them
    def run_client(self) -> run_v2.ServicesClient:
        assert self.cloudrun is not None
        return run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                     client_options=ClientOptions(api_endpoint=self.cloudrun.url))

    def registry_client(self) -> RegistryClient:
        return RegistryClient(plain_http_hosts=[self.registry.host], allowed_hosts=[self.registry.host])

    def function_url(self, target: str) -> str:
        return f"http://{LOOPBACK}:{self.functions[target][1]}/"

    def function_log(self, target: str) -> Path:
        return self.workdir / f"{target}.log"

    def config(self) -> dict:
        host = self.registry.host
        return {
            "projects": list(PROJECTS),
            "regions": list(REGIONS),
            "allowed_registries": [host],
            "plain_http_registries": [host],
            "base_tracks": [{"name": b.name, "image": f"{host}/{b.repository}:{b.tag}"} for b in BASES if b.tracked],
            "labels": {"opt_out": OPT_OUT_LABEL, "cohort": COHORT_LABEL},
            "rollout": {"ready_timeout_s": self.ready_timeout_s, "concurrency": self.concurrency},
            "cloud_run_endpoint": self.cloudrun.url if self.cloudrun else None,
        }

    # --- lifecycle
    def start(self) -> "LocalStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry.start()
        self.cloudrun = CloudRunStandin(registry_host=self.registry.host, deploy_latency_s=self.deploy_latency_s)
        self.cloudrun.start()
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        for target in self.targets:
            self.start_function(target)
        return self

    def start_function(self, target: str) -> None:
        port = free_port()
        env = {**os.environ, "BASEROLL_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        env.pop("BASEROLL_CONFIG_YAML", None)
        binary = shutil.which("functions-framework", path=str(Path(sys.executable).parent)) or "functions-framework"
        log = open(self.function_log(target), "ab")
        proc = subprocess.Popen(
            [binary, "--source", str(MAIN), "--target", target, "--signature-type", "cloudevent",
             "--host", LOOPBACK, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), start_new_session=True,
        )
        self.functions[target] = (proc, port)
        import socket

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, port)) == 0

        wait_until(listening, timeout=30, what=f"function {target}", proc=proc)

    def stop_function(self, target: str) -> None:
        proc, _ = self.functions.pop(target)
        stop(proc)

    def stop(self) -> None:
        for target in list(self.functions):
            self.stop_function(target)
        if self.cloudrun is not None:
            self.cloudrun.stop()
            self.cloudrun = None
        self.registry.stop()

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--seconds", type=float, default=3600, help="stop after this long")
    args = parser.parse_args(argv)
    with LocalStack() as stack:
        print(f"registry:   {stack.registry.url}")
        print(f"cloud run:  {stack.cloudrun.url if stack.cloudrun else '-'}")
        for target in stack.targets:
            print(f"{target}: {stack.function_url(target)}  (log {stack.function_log(target)})")
        print(f"config:     {stack.config_path}")
        try:
            time.sleep(args.seconds)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
