"""Proof that a rebased image runs: a busybox base v1/v2, an app on v1, rebase onto v2 through the real
registry server, then skopeo copy → umoci unpack → chroot and run the entrypoint.

Needs root (chroot, and umoci unpack without --rootless), skopeo, umoci and a static busybox; without
them the test is skipped with the reason spelled out, never silently passed.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from baseroll.images.rebaser import rebase_image
from baseroll.images.refs import ImageRef

from infra.local.cloudrun.bundles import accept_anything_policy, copy_to_layout, unpack
from tests.integration.conftest import Layer, manifest_json, new_client, push_image

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "echo", "ls", "test")
RUN_SH = b"""#!/bin/sh
set -e
cat /etc/base-version
echo "mode=$APP_MODE"
echo app-ok
"""
ENV = ["PATH=/bin", "APP_MODE=prod"]
ENTRYPOINT = ["/app/run.sh"]
TIMEOUT = 60


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _missing_tools() -> str | None:
    """What `make deps` should have installed and did not, or None."""
    missing = [t for t in ("skopeo", "umoci", "chroot") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install skopeo umoci coreutils; `make deps` does it)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing (apt-get install busybox-static)"
    out = subprocess.run(["file", "-L", str(BUSYBOX)], capture_output=True, text=True).stdout if shutil.which("file") else ""
    if out and "statically linked" not in out:
        return f"{BUSYBOX} is not statically linked (install busybox-static): {out.strip()}"
    return None


def tar_layer(entries: list[tuple[str, str, Any]]) -> Layer:
    """A deterministic tar.gz layer; entries are (path, kind, value): kind "dir", "file" (bytes, mode) or "link" (target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, value in entries:
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid = 0, 0, 0
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, value, 0o777
                tar.addfile(info)
            else:
                data, mode = value
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return Layer(gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest())


def base_layers(version: str) -> list[Layer]:
    """Two layers: busybox + applet links, then /etc (v2 adds a file only it has)."""
    bin_layer = tar_layer([("bin", "dir", None), ("bin/busybox", "file", (BUSYBOX.read_bytes(), 0o755)),
                           *[(f"bin/{a}", "link", "busybox") for a in APPLETS]])
    etc = [("etc", "dir", None), ("etc/base-version", "file", (f"{version}\n".encode(), 0o644))]
    if version == "v2":
        etc.append(("etc/only-in-v2", "file", (b"patched\n", 0o644)))
    return [bin_layer, tar_layer(etc)]


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_rebased_image_unpacks_and_runs_on_the_new_base(registry, tmp_path: Path) -> None:
    if os.geteuid() != 0:  # the one allowed skip: chroot and a non-rootless `umoci unpack` need root
        pytest.skip("NOT RUN: needs root for chroot and for `umoci unpack` without --rootless (run the suite as root, as CI does)")
    missing = _missing_tools()
    assert missing is None, f"the tools this test runs the image with are not installed: {missing}"
    host, arch = registry.host, _arch()
    bases, apps = ImageRef(host, "bases/busybox"), ImageRef(host, "apps/x")
    base_run = {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}
    app_layer = tar_layer([("app", "dir", None), ("app/run.sh", "file", (RUN_SH, 0o755))])

    with new_client(host) as c:
        v1_layers, v2_layers = base_layers("v1"), base_layers("v2")
        push_image(c, bases, v1_layers, tag="v1", arch=arch, run=base_run)
        v2 = push_image(c, bases, v2_layers, tag="v2", arch=arch, run=base_run, created="2024-06-01T00:00:00Z")
        push_image(c, apps, v1_layers + [app_layer], tag="1", arch=arch,
                   run={"Env": ENV, "Entrypoint": ENTRYPOINT, "WorkingDir": "/app"},
                   history=[{"created_by": "busybox"}, {"created_by": "etc"}, {"created_by": "COPY run.sh"}])
        c.stats.blobs_fetched.clear()
        result = rebase_image(c, apps.with_tag("1"), bases.with_tag("v1"), bases.with_tag("v2"))
        fetched = list(c.stats.blobs_fetched)
        m = manifest_json(c, result.ref)
        cfg = json.loads(c.get_blob(result.ref, m["config"]["digest"]))

    # The registry side: v2's layers under the app layer, config run settings kept, no layer downloaded.
    assert [l["digest"] for l in m["layers"]] == [l.digest for l in v2.layers] + [app_layer.digest]
    assert cfg["config"]["Entrypoint"] == ENTRYPOINT and cfg["config"]["Env"] == ENV
    assert cfg["config"]["WorkingDir"] == "/app"
    assert not {l.digest for l in v1_layers + v2_layers + [app_layer]} & set(fetched)

    # Copy it out of the registry with skopeo, unpack with umoci (as the Cloud Run stand-in's running
    # mode does), run the entrypoint in a chroot.
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"
    policy = accept_anything_policy(tmp_path / "policy.json")
    copy_to_layout(f"{host}/apps/x@{result.digest}", layout, "rebased", policy=policy, creds=None, timeout=TIMEOUT)
    unpack(layout, "rebased", bundle, timeout=TIMEOUT)
    rootfs = bundle / "rootfs"

    # umoci's runtime spec is generated from the image config: the entrypoint and env came through.
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ENTRYPOINT
    assert set(ENV) <= set(spec["process"]["env"])
    assert spec["process"]["cwd"] == "/app"

    assert (rootfs / "etc/only-in-v2").read_text() == "patched\n"
    assert (rootfs / "etc/base-version").read_text() == "v2\n"
    env = dict(e.split("=", 1) for e in cfg["config"]["Env"])
    proc = _run([shutil.which("chroot") or "chroot", str(rootfs), *cfg["config"]["Entrypoint"]], env=env)
    lines = proc.stdout.split()
    assert lines == ["v2", "mode=prod", "app-ok"], proc.stdout + proc.stderr
