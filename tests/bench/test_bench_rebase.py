"""Bench: registry-side rebase vs the naive pull-and-push copy, on a ≥ 200 MiB app, against the real registry.

Prints a table and one ``BENCH {json}`` line. Asserts correctness only, never time: the rebase moves
less than 64 KiB (a deterministic property: only configs and manifests travel) and its manifest is
right; the naive copy yields the byte-identical manifest in another repository.
Run: ``pytest -q -s tests/bench``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from baseroll import oci
from baseroll.rebaser import rebase_image
from baseroll.refs import ImageRef
from baseroll.registry import RegistryClient, RegistryStats
from infra.local.registry_server import RegistryServer
from tests.integration.conftest import Layer, make_layer, push_image

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
APP_LAYERS = 4
APP_LAYER_BYTES = 52 * MiB  # 4 × 52 MiB = 208 MiB of incompressible data
BASE_LAYER_BYTES = 1 * MiB
REBASE_BYTES_TARGET = 64 * 1024
SPEEDUP_TARGET = 100.0


# ---------------------------------------------------------------- counting every body byte on the wire


class _CountingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, transport: "CountingTransport") -> None:
        self._inner, self._transport = inner, transport

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._transport.down += len(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class CountingTransport(httpx.BaseTransport):
    """Request and response body bytes (manifests, tokens, errors included), not just the client's blob stats."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.up = self.down = self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.up += int(request.headers.get("content-length") or 0)
        response = self._inner.handle_request(request)
        response.stream = _CountingStream(response.stream, self)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        self._inner.close()


def bench_client(host: str) -> tuple[RegistryClient, CountingTransport]:
    transport = CountingTransport()
    return RegistryClient(plain_http_hosts=[host], allowed_hosts=[host], retries=1, backoff=0.01,
                          transport=transport), transport


# ---------------------------------------------------------------- big layers, built once into temp files


@dataclass(frozen=True)
class FileLayer:
    path: Path
    digest: str
    diff_id: str
    size: int


def random_layer(directory: Path, name: str, n_bytes: int, seed: int) -> FileLayer:
    """One file of incompressible bytes in a tar, gzip-framed with stored blocks (level 0: no CPU spent
    on data that does not compress), written to a temp file."""
    data = random.Random(seed).randbytes(n_bytes)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{name}.bin")
        info.size, info.mtime, info.mode = n_bytes, 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    del data
    raw = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    blob = gzip.compress(raw, compresslevel=0, mtime=0)
    del raw, buf
    path = directory / f"{name}.tar.gz"
    path.write_bytes(blob)
    return FileLayer(path, oci.sha256_digest(blob), diff_id, len(blob))


def push_app(client: RegistryClient, repo: ImageRef, base_layers: list[Layer], app_layers: list[FileLayer],
             tag: str) -> dict[str, Any]:
    """Push the app image (base layers + big file layers, read one at a time); returns its manifest."""
    for layer in base_layers:
        client.put_blob(repo, layer.blob)
    for fl in app_layers:
        digest = client.put_blob(repo, fl.path.read_bytes())  # the client uploads bytes (no public streaming put)
        assert digest == fl.digest
    n = len(base_layers) + len(app_layers)
    config = {
        "architecture": "amd64", "os": "linux", "created": "2024-02-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Entrypoint": ["/app/run"]},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in base_layers] + [l.diff_id for l in app_layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(n)],
    }
    cfg_raw = oci.canonical_json(config)
    client.put_blob(repo, cfg_raw)
    manifest = {
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": oci.descriptor(oci.OCI_CONFIG, cfg_raw),
        "layers": [oci.descriptor(oci.OCI_LAYER_GZIP, l.blob) for l in base_layers]
        + [{"mediaType": oci.OCI_LAYER_GZIP, "digest": l.digest, "size": l.size} for l in app_layers],
    }
    client.put_manifest(repo.with_tag(tag), oci.canonical_json(manifest), oci.OCI_MANIFEST)
    return manifest


# ---------------------------------------------------------------- the bench


def naive_copy(client: RegistryClient, rebased: dict[str, Any], sources: dict[str, ImageRef], target: ImageRef,
               manifest_raw: bytes) -> str:
    """What a rebuild-and-push or a pull/push tool moves: every layer blob down and up again."""
    for desc in [rebased["config"], *rebased["layers"]]:
        src = sources[desc["digest"]]
        data = client.get_blob(src, desc["digest"], max_bytes=desc["size"])
        client.put_blob(target, data)
        del data
    return client.put_manifest(target.with_tag("naive"), manifest_raw, oci.OCI_MANIFEST)


def test_bench_rebase_vs_naive_copy() -> None:
    with tempfile.TemporaryDirectory(prefix="baseroll-bench-") as tmp, RegistryServer() as reg:
        host = reg.host
        bases, apps, naive_repo = ImageRef(host, "bases/x"), ImageRef(host, "apps/x"), ImageRef(host, "apps/naive")

        t0 = time.perf_counter()
        big = [random_layer(Path(tmp), f"app{i}", APP_LAYER_BYTES, seed=i) for i in range(APP_LAYERS)]
        t_generate = time.perf_counter() - t0
        v1_layers = [make_layer({"etc/os-release": b"v1"}),
                     Layer(*_small_random_layer(BASE_LAYER_BYTES, seed=101))]
        v2_layers = [make_layer({"etc/os-release": b"v2"}),
                     Layer(*_small_random_layer(BASE_LAYER_BYTES, seed=102)),
                     make_layer({"etc/patched": b"v2"})]
        t0 = time.perf_counter()
        with bench_client(host)[0] as c:
            push_image(c, bases, v1_layers, tag="v1")
            v2 = push_image(c, bases, v2_layers, tag="v2", created="2024-06-01T00:00:00Z")
            push_app(c, apps, v1_layers, big, tag="1")
        t_push = time.perf_counter() - t0
        app_bytes = sum(l.size for l in big)
        for fl in big:  # the registry has them now; free the disk before measuring
            fl.path.unlink()

        # (a) registry-side rebase
        client, wire = bench_client(host)
        with client:
            client.list_tags(bases)  # open the connection first, as the naive copy's client does below
            wire.up = wire.down = 0
            client.stats = RegistryStats()
            t0 = time.perf_counter()
            result = rebase_image(client, apps.with_tag("1"), bases.with_tag("v1"), bases.with_tag("v2"))
            t_rebase = time.perf_counter() - t0
            stats = client.stats
            rebased_raw = client.get_manifest(result.ref).raw  # after timing; cached, moves nothing
        rebase_blob_bytes = stats.bytes_downloaded + stats.bytes_uploaded
        rebase_wire = wire.up + wire.down
        rebased = json.loads(rebased_raw)

        # (b) naive: pull every layer of the result (app layers, v2 base layers) and push them to a new repository
        sources = {l.digest: bases for l in v2.layers} | {l.digest: apps for l in big} | {rebased["config"]["digest"]: apps}
        client, nwire = bench_client(host)
        with client:
            client.list_tags(bases)
            nwire.up = nwire.down = 0
            client.stats = RegistryStats()
            t0 = time.perf_counter()
            naive_digest = naive_copy(client, rebased, sources, naive_repo, rebased_raw)
            t_naive = time.perf_counter() - t0
            nstats = client.stats
        naive_blob_bytes = nstats.bytes_downloaded + nstats.bytes_uploaded
        naive_wire = nwire.up + nwire.down

    figures = {
        "app_layer_bytes": app_bytes,
        "generate_s": round(t_generate, 3),
        "setup_push_s": round(t_push, 3),
        "rebase": {"seconds": round(t_rebase, 4), "blob_bytes": rebase_blob_bytes, "wire_bytes": rebase_wire,
                   "requests": wire.requests, "blob_gets": stats.blob_gets, "mounts": stats.mounts,
                   "uploads": stats.uploads},
        "naive": {"seconds": round(t_naive, 4), "blob_bytes": naive_blob_bytes, "wire_bytes": naive_wire,
                  "requests": nwire.requests, "blob_gets": nstats.blob_gets, "uploads": nstats.uploads},
        "ratio_time": round(t_naive / t_rebase, 1),
        "ratio_bytes": round(naive_wire / max(rebase_wire, 1), 1),
        "targets": {"rebase_bytes_lt_64KiB": rebase_wire < REBASE_BYTES_TARGET,
                    "faster_100x": t_naive / t_rebase >= SPEEDUP_TARGET},
    }
    _print_table(figures)
    print("BENCH " + json.dumps(figures, sort_keys=True, separators=(",", ":")))

    # Correctness only.
    assert app_bytes >= 200 * MiB
    assert rebase_blob_bytes < REBASE_BYTES_TARGET and rebase_wire < REBASE_BYTES_TARGET
    assert stats.blob_gets == 3 and not {l.digest for l in big} & set(stats.blobs_fetched)  # three configs only
    assert stats.mounts == len(v2.layers) and stats.uploads == 1 and stats.mount_fallbacks == 0
    assert [l["digest"] for l in rebased["layers"]] == [l.digest for l in v2.layers] + [l.digest for l in big]
    assert [l["size"] for l in rebased["layers"][len(v2.layers):]] == [l.size for l in big]
    assert rebased["annotations"] == {oci.ANNOTATION_BASE_NAME: f"{host}/bases/x:v2",
                                      oci.ANNOTATION_BASE_DIGEST: v2.digest}
    assert result.digest == oci.sha256_digest(rebased_raw) == naive_digest
    assert naive_blob_bytes >= 2 * app_bytes


def _small_random_layer(n_bytes: int, seed: int) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(n_bytes)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("usr/lib/blob.bin")
        info.size, info.mtime = n_bytes, 0
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=0, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def _print_table(f: dict[str, Any]) -> None:
    def mb(n: int) -> str:
        return f"{n / MiB:10.2f} MiB" if n >= MiB else f"{n / 1024:10.2f} KiB"

    print()
    print(f"app layers: {f['app_layer_bytes'] / MiB:.0f} MiB in {APP_LAYERS} layers "
          f"(generated in {f['generate_s']:.2f} s, pushed in {f['setup_push_s']:.2f} s)")
    print(f"{'':14}{'wall time':>12}{'bytes moved':>16}{'blob bytes':>16}{'requests':>10}")
    for name in ("rebase", "naive"):
        r = f[name]
        print(f"{name:14}{r['seconds']:>10.3f} s{mb(r['wire_bytes']):>16}{mb(r['blob_bytes']):>16}{r['requests']:>10}")
    print(f"{'naive/rebase':14}{f['ratio_time']:>11.1f}x{f['ratio_bytes']:>15.1f}x")
    t = f["targets"]
    print(f"targets: rebase moves < 64 KiB: {'yes' if t['rebase_bytes_lt_64KiB'] else 'NO'}; "
          f">= {SPEEDUP_TARGET:.0f}x faster: {'yes' if t['faster_100x'] else 'NO'}")
