"""Images out of the registry onto disk, ready to run: `skopeo copy` into one shared OCI layout (a layer
already there is not fetched again), `umoci unpack` into a root filesystem, and the image config's run
settings (Entrypoint, Cmd, Env, WorkingDir) read from the layout.

`BundleCache` keeps at most `max_bundles` unpacked images, keyed by manifest digest, the least recently
used evicted (its tag removed and the layout garbage-collected). Every skopeo/umoci call has a timeout.
Unpacking as root keeps the image's file ownership; elsewhere `--rootless` is used (docs/GOOGLE_APIS.md#revisions-that-really-run).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

PULL_TAG = "incoming"
MAX_STDERR = 2000


class BundleError(Exception):
    """An image could not be copied out of the registry or unpacked; the message says which tool and why."""


@dataclass(frozen=True)
class Bundle:
    """An unpacked image: its root filesystem and the run settings of its config."""

    digest: str  # the manifest's, as stored in the layout
    rootfs: Path
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]  # "NAME=value"
    workdir: str


def run_tool(argv: list[str], *, timeout: float) -> str:
    """Run skopeo/umoci; its stdout, or BundleError with the tail of its stderr."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BundleError(f"{argv[0]} {argv[1]} did not finish within {timeout:.0f}s") from None
    except FileNotFoundError:
        raise BundleError(f"{argv[0]} is not installed (`make deps` installs it)") from None
    if proc.returncode != 0:
        raise BundleError(f"{argv[0]} {argv[1]} failed ({proc.returncode}): {proc.stderr.strip()[-MAX_STDERR:]}")
    return proc.stdout


def copy_to_layout(image: str, layout: Path, tag: str, *, policy: Path, creds: tuple[str, str] | None,
                   timeout: float) -> None:
    """`skopeo copy docker://IMAGE oci:LAYOUT:TAG` from a plain-HTTP registry, with Basic credentials
    that skopeo trades at the registry's token realm itself."""
    argv = ["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-tls-verify=false"]
    if creds is not None:
        argv += ["--src-creds", f"{creds[0]}:{creds[1]}"]
    run_tool([*argv, f"docker://{image}", f"oci:{layout}:{tag}"], timeout=timeout)


def unpack(layout: Path, tag: str, bundle_dir: Path, *, timeout: float) -> None:
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    run_tool(["umoci", "unpack", *rootless, "--image", f"{layout}:{tag}", str(bundle_dir)], timeout=timeout)


def accept_anything_policy(path: Path) -> Path:
    """A containers-policy.json accepting any image: the registry is our own loopback one."""
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def _blob(layout: Path, digest: str) -> dict:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise BundleError(f"layout names an invalid digest {digest!r}")
    return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())


def manifest_digest(layout: Path, tag: str) -> str:
    for desc in json.loads((layout / "index.json").read_text()).get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(desc["digest"])
    raise BundleError(f"tag {tag!r} is not in the layout {layout}")


def run_settings(layout: Path, digest: str) -> dict:
    """The `config` object of the image config (Entrypoint, Cmd, Env, WorkingDir)."""
    manifest = _blob(layout, digest)
    return _blob(layout, manifest["config"]["digest"]).get("config") or {}


class BundleCache:
    """Unpacked images under `workdir`, at most `max_bundles`, shared by every revision of that digest."""

    def __init__(self, workdir: Path, *, credentials: tuple[str, str] | None = None, max_bundles: int = 16,
                 pull_timeout_s: float = 120.0) -> None:
        self.workdir = workdir
        self.layout = workdir / "layout"
        self.credentials = credentials
        self.max_bundles = max_bundles
        self.pull_timeout_s = pull_timeout_s
        self._bundles: OrderedDict[str, Bundle] = OrderedDict()  # digest -> bundle, least recently used first
        self._by_ref: dict[str, str] = {}  # image pinned by digest -> manifest digest in the layout
        self._lock = threading.Lock()  # one pull at a time into the shared layout
        self.pulls = 0  # skopeo copies made (a cache hit makes none)

    def get(self, image: str, *, busy: frozenset[str] = frozenset()) -> Bundle:
        """The bundle of `image`, pulled and unpacked unless already here; `busy` digests (root
        filesystems of running processes) are never evicted, so the cache may hold more than the cap
        while that many run (their number is capped by the runner)."""
        with self._lock:
            known = self._by_ref.get(image) if "@sha256:" in image else None
            if known in self._bundles:
                self._bundles.move_to_end(known)
                return self._bundles[known]
            self.workdir.mkdir(parents=True, exist_ok=True)
            policy = accept_anything_policy(self.workdir / "policy.json")
            copy_to_layout(image, self.layout, PULL_TAG, policy=policy, creds=self.credentials,
                           timeout=self.pull_timeout_s)
            self.pulls += 1
            digest = manifest_digest(self.layout, PULL_TAG)
            if "@sha256:" in image:
                self._by_ref[image] = digest
            if digest not in self._bundles:
                self._bundles[digest] = self._unpack(digest)
            # Untagged now: skopeo would keep the next pull's predecessor as an untagged entry, out of gc's reach.
            run_tool(["umoci", "rm", "--image", f"{self.layout}:{PULL_TAG}"], timeout=self.pull_timeout_s)
            self._evict(busy | {digest})
            self._bundles.move_to_end(digest)
            return self._bundles[digest]

    def _unpack(self, digest: str) -> Bundle:
        hex_ = digest.split(":", 1)[1]
        target = self.workdir / "bundles" / hex_
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        run_tool(["umoci", "tag", "--image", f"{self.layout}:{PULL_TAG}", f"b-{hex_}"], timeout=self.pull_timeout_s)
        unpack(self.layout, f"b-{hex_}", target, timeout=self.pull_timeout_s)
        cfg = run_settings(self.layout, digest)
        return Bundle(digest, target / "rootfs", tuple(cfg.get("Entrypoint") or ()), tuple(cfg.get("Cmd") or ()),
                      tuple(cfg.get("Env") or ()), cfg.get("WorkingDir") or "/")

    def _evict(self, busy: frozenset[str]) -> None:
        """Drop the least recently used idle bundles beyond the cap, with their tags and unshared blobs."""
        idle = [d for d in self._bundles if d not in busy]
        evicted = False
        for digest in idle[: max(len(self._bundles) - self.max_bundles, 0)]:
            bundle = self._bundles.pop(digest)
            hex_ = digest.split(":", 1)[1]
            run_tool(["umoci", "rm", "--image", f"{self.layout}:b-{hex_}"], timeout=self.pull_timeout_s)
            shutil.rmtree(bundle.rootfs.parent, ignore_errors=True)
            self._by_ref = {ref: d for ref, d in self._by_ref.items() if d != digest}
            evicted = True
        if evicted:
            run_tool(["umoci", "gc", "--layout", str(self.layout)], timeout=self.pull_timeout_s)

    def cached(self) -> list[str]:
        with self._lock:
            return list(self._bundles)
