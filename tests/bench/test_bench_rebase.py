"""Bench: registry-side rebase vs the naive pull-and-push copy, on a ≥ 200 MiB app, against the real registry.

Prints a table and one ``BENCH {json}`` line. Asserts correctness only, never time: the rebase moves
less than 64 KiB (a deterministic property: only configs and manifests travel) and its manifest is
right; the naive copy yields the byte-identical manifest in another repository.

Times are medians: one untimed rebase warms up (thread pool, the registry's first reads), then
REBASE_RUNS rebases, each onto a new base version of its own (new layers, new config, new result),
so every run mounts, uploads and pushes for real; each uses a fresh client (no manifest cached from
another run) with one connection opened, as the naive copy's client has. The naive copy runs
NAIVE_RUNS times, each into a fresh repository. "In sequence" counts the most requests that ran one
after another (none overlapping): the round trips a run waited for.
Run: ``pytest -q -s tests/bench``. Two app sizes by default, 208 MiB and 1 GiB: the rebase's cost does not
grow with the layers, the copy's does (``BASEROLL_BENCH_APP_MIB=208,4096`` for others).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import statistics
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from baseroll.images import oci
from baseroll.images.rebaser import RebaseResult, rebase_image
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, RegistryStats

from infra.local.registry_server import RegistryServer
from tests.integration.conftest import Built, Layer, make_layer, push_image

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
APP_LAYERS = 4
# App sizes in MiB of incompressible data, each spread over APP_LAYERS layers: 208 (4 × 52 MiB) and
# 1 GiB by default; BASEROLL_BENCH_APP_MIB takes a comma-separated list (each ≥ 200).
APP_SIZES_MIB = [max(200, int(v)) for v in os.environ.get("BASEROLL_BENCH_APP_MIB", "208,1024").split(",")]
BASE_LAYER_BYTES = 1 * MiB
REBASE_BYTES_TARGET = 64 * 1024
SPEEDUP_TARGET = 100.0
REBASE_RUNS = 7
NAIVE_RUNS = 3


# ---------------------------------------------------------------- counting every body byte on the wire


class _CountingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, transport: "CountingTransport", started: float) -> None:
        self._inner, self._transport, self._started = inner, transport, started

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            with self._transport.lock:
                self._transport.down += len(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()
        with self._transport.lock:  # a request ends when its response is closed, body read or not
            self._transport.spans.append((self._started, time.perf_counter()))


class CountingTransport(httpx.BaseTransport):
    """Request and response body bytes (manifests, tokens, errors included), not just the client's blob
    stats; and when each request ran, for the number of round trips made one after another."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.lock = threading.Lock()  # the rebase sends from several threads
        self.up = self.down = self.requests = 0
        self.spans: list[tuple[float, float]] = []

    def reset(self) -> None:
        with self.lock:
            self.up = self.down = self.requests = 0
            self.spans = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests += 1
            self.up += int(request.headers.get("content-length") or 0)
        started = time.perf_counter()
        response = self._inner.handle_request(request)
        response.stream = _CountingStream(response.stream, self, started)  # type: ignore[arg-type]
        return response

    def depth(self) -> int:
        """The longest chain of requests each starting after the previous one ended (the most
        requests that do not overlap: earliest end first)."""
        n, last_end = 0, float("-inf")
        for start, end in sorted(self.spans, key=lambda s: s[1]):
            if start >= last_end:
                n, last_end = n + 1, end
        return n

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
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(min(64 * MiB, n_bytes - i)) for i in range(0, n_bytes, 64 * MiB))  # randbytes caps at 256 MiB
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


@dataclass(frozen=True)
class RebaseRun:
    seconds: float
    result: RebaseResult
    stats: RegistryStats
    wire_bytes: int
    requests: int
    depth: int
    manifest_raw: bytes


def timed_rebase(host: str, app: ImageRef, old: ImageRef, new: ImageRef) -> RebaseRun:
    client, wire = bench_client(host)  # fresh: nothing cached from another run
    with client:
        client.list_tags(ImageRef(host, old.repository))  # one open connection, as the naive copy's client has
        wire.reset()
        client.stats = RegistryStats()
        t0 = time.perf_counter()
        result = rebase_image(client, app, old, new)
        seconds = time.perf_counter() - t0
        wire_bytes, requests, depth = wire.up + wire.down, wire.requests, wire.depth()
        raw = client.get_manifest(result.ref).raw  # after timing and counting
    return RebaseRun(seconds, result, client.stats, wire_bytes, requests, depth, raw)


def timed_naive(host: str, rebased: dict[str, Any], sources: dict[str, ImageRef], target: ImageRef,
                manifest_raw: bytes) -> tuple[float, str, RegistryStats, CountingTransport]:
    client, wire = bench_client(host)
    with client:
        client.list_tags(sources[rebased["config"]["digest"]])
        wire.reset()
        client.stats = RegistryStats()
        t0 = time.perf_counter()
        digest = naive_copy(client, rebased, sources, target, manifest_raw)
        seconds = time.perf_counter() - t0
        return seconds, digest, client.stats, wire


def new_base_layers(i: int) -> list[Layer]:
    """Base version 2.i: every layer its own, so each rebase onto it mounts and pushes for real."""
    return [make_layer({"etc/os-release": f"v2.{i}".encode()}),
            Layer(*_small_random_layer(BASE_LAYER_BYTES, seed=1000 + i)),
            make_layer({"etc/patched": f"v2.{i}".encode()})]


@pytest.mark.parametrize("app_mib", APP_SIZES_MIB)
def test_bench_rebase_vs_naive_copy(app_mib: int) -> None:
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="baseroll-bench-") as tmp, RegistryServer() as reg:
        host = reg.host
        bases, apps = ImageRef(host, "bases/x"), ImageRef(host, "apps/x")

        t0 = time.perf_counter()
        big = [random_layer(Path(tmp), f"app{i}", app_mib * MiB // APP_LAYERS, seed=i) for i in range(APP_LAYERS)]
        t_generate = time.perf_counter() - t0
        v1_layers = [make_layer({"etc/os-release": b"v1"}),
                     Layer(*_small_random_layer(BASE_LAYER_BYTES, seed=101))]
        t0 = time.perf_counter()
        with bench_client(host)[0] as c:
            push_image(c, bases, v1_layers, tag="v1")
            new_bases = [push_image(c, bases, new_base_layers(i), tag=f"v2.{i}", created="2024-06-01T00:00:00Z")
                         for i in range(REBASE_RUNS + 1)]
            push_app(c, apps, v1_layers, big, tag="1")
        t_push = time.perf_counter() - t0
        app_bytes = sum(l.size for l in big)
        for fl in big:  # the registry has them now; free the disk before measuring
            fl.path.unlink()

        # (a) registry-side rebase: run 0 warms up, the others are timed
        runs = [timed_rebase(host, apps.with_tag("1"), bases.with_tag("v1"), bases.with_tag(f"v2.{i}"))
                for i in range(REBASE_RUNS + 1)]
        for i, (run, v2) in enumerate(zip(runs, new_bases)):
            _check_rebase(run, v2, f"{host}/bases/x:v2.{i}", big)
        warmup, timed = runs[0], runs[1:]

        # (b) naive: pull every layer of one result (app layers, new base layers) and push them to a new repository
        first, v2 = timed[0], new_bases[1]
        rebased = json.loads(first.manifest_raw)
        sources = {l.digest: bases for l in v2.layers} | {l.digest: apps for l in big} | {rebased["config"]["digest"]: apps}
        naive = [timed_naive(host, rebased, sources, ImageRef(host, f"apps/naive{i}"), first.manifest_raw)
                 for i in range(NAIVE_RUNS)]

    r_times = [r.seconds for r in timed]
    n_times = [n[0] for n in naive]
    t_rebase, t_naive = statistics.median(r_times), statistics.median(n_times)
    nstats, nwire = naive[0][2], naive[0][3]
    rebase_wire = max(r.wire_bytes for r in timed)
    naive_wire = nwire.up + nwire.down
    figures = {
        "app_layer_bytes": app_bytes,
        "load_avg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "generate_s": round(t_generate, 3),
        "setup_push_s": round(t_push, 3),
        "rebase": {"seconds": round(t_rebase, 4), "seconds_min": round(min(r_times), 4),
                   "seconds_max": round(max(r_times), 4), "seconds_all": [round(t, 4) for t in r_times],
                   "warmup_seconds": round(warmup.seconds, 4), "runs": len(timed),
                   "blob_bytes": max(r.stats.bytes_downloaded + r.stats.bytes_uploaded for r in timed),
                   "wire_bytes": rebase_wire, "requests": max(r.requests for r in timed),
                   "depth": max(r.depth for r in timed), "blob_gets": first.stats.blob_gets,
                   "mounts": first.stats.mounts, "uploads": first.stats.uploads},
        "naive": {"seconds": round(t_naive, 4), "seconds_min": round(min(n_times), 4),
                  "seconds_max": round(max(n_times), 4), "seconds_all": [round(t, 4) for t in n_times],
                  "runs": len(naive), "blob_bytes": nstats.bytes_downloaded + nstats.bytes_uploaded,
                  "wire_bytes": naive_wire, "requests": nwire.requests, "depth": nwire.depth(),
                  "blob_gets": nstats.blob_gets, "uploads": nstats.uploads},
        "ratio_time": round(t_naive / t_rebase, 1),
        "ratio_bytes": round(naive_wire / max(rebase_wire, 1), 1),
        "targets": {"rebase_bytes_lt_64KiB": rebase_wire < REBASE_BYTES_TARGET,
                    "faster_100x": t_naive / t_rebase >= SPEEDUP_TARGET},
    }
    _print_table(figures)
    print("BENCH " + json.dumps(figures, sort_keys=True, separators=(",", ":")))

    # Correctness only (each rebase run was checked above).
    assert app_bytes >= 200 * MiB
    for seconds, digest, stats, wire in naive:
        assert digest == first.result.digest
        assert stats.bytes_downloaded + stats.bytes_uploaded >= 2 * app_bytes


def _check_rebase(run: RebaseRun, v2: Built, new_base_name: str, big: list[FileLayer]) -> None:
    stats, rebased = run.stats, json.loads(run.manifest_raw)
    assert run.result.pushed
    assert stats.bytes_downloaded + stats.bytes_uploaded < REBASE_BYTES_TARGET
    assert run.wire_bytes < REBASE_BYTES_TARGET
    assert stats.blob_gets == 3 and not {l.digest for l in big} & set(stats.blobs_fetched)  # three configs only
    assert stats.mounts == len(v2.layers) and stats.uploads == 1 and stats.mount_fallbacks == 0
    assert [l["digest"] for l in rebased["layers"]] == [l.digest for l in v2.layers] + [l.digest for l in big]
    assert [l["size"] for l in rebased["layers"][len(v2.layers):]] == [l.size for l in big]
    assert rebased["annotations"] == {oci.ANNOTATION_BASE_NAME: new_base_name, oci.ANNOTATION_BASE_DIGEST: v2.digest}
    assert run.result.digest == oci.sha256_digest(run.manifest_raw)


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
          f"(generated in {f['generate_s']:.2f} s, pushed in {f['setup_push_s']:.2f} s); "
          f"load average {f['load_avg']['before'][0]:.2f} before, {f['load_avg']['after'][0]:.2f} after")
    print(f"{'':14}{'median':>10}{'min':>10}{'max':>10}{'runs':>6}{'bytes moved':>16}{'blob bytes':>16}"
          f"{'requests':>10}{'in sequence':>13}")
    for name in ("rebase", "naive"):
        r = f[name]
        print(f"{name:14}{r['seconds']:>8.4f} s{r['seconds_min']:>8.4f} s{r['seconds_max']:>8.4f} s{r['runs']:>6}"
              f"{mb(r['wire_bytes']):>16}{mb(r['blob_bytes']):>16}{r['requests']:>10}{r['depth']:>13}")
    print(f"{'naive/rebase':14}{f['ratio_time']:>9.1f}x (medians){'':>26}{f['ratio_bytes']:>15.1f}x")
    t = f["targets"]
    print(f"targets: rebase moves < 64 KiB: {'yes' if t['rebase_bytes_lt_64KiB'] else 'NO'}; "
          f">= {SPEEDUP_TARGET:.0f}x faster: {'yes' if t['faster_100x'] else 'NO'}")
