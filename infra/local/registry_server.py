"""The real OCI registry server (Debian's `docker-registry`, distribution 2.8) on 127.0.0.1.

Started on a free port with temporary storage and stopped by its PID. Never a dict. With a
``token_server`` it requires auth as Artifact Registry does: 401 with a Bearer realm on that server.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .procs import LOOPBACK, free_port, stop, wait_http

if TYPE_CHECKING:
    from .token_server import TokenServer

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory  # as Debian's packaged config has it
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
"""
AUTH = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""


class RegistryServer:
    """`with RegistryServer() as reg: reg.host  # "127.0.0.1:PORT"`."""

    def __init__(self, *, port: int | None = None, workdir: Path | None = None, binary: str = "docker-registry",
                 token_server: "TokenServer | None" = None) -> None:
        self.token_server = token_server
        self.port = port or free_port()
        self.binary = shutil.which(binary) or binary
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="baseroll-registry-"))
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def start(self) -> "RegistryServer":
        if not shutil.which(self.binary):
            raise RuntimeError("docker-registry not found: run `make deps` (installs Debian's docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.yml"
        cfg.write_text(CONFIG.format(root=self.storage, addr=self.host) + self._auth_config())
        log = open(self.workdir / "registry.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_http(f"{self.url}/v2/", proc=self.proc, timeout=20, ok=(200, 401))
        return self

    def _auth_config(self) -> str:
        ts = self.token_server
        if ts is None:
            return ""
        from .token_server import ISSUER, SERVICE

        bundle = ts.write_certificate(self.workdir / "token-signer.pem")
        return AUTH.format(realm=ts.realm, service=SERVICE, issuer=ISSUER, bundle=bundle)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "RegistryServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
