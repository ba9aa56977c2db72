"""Fleet-scale benchmark helpers (used by tests/bench/test_bench_fleet.py).

- `planner_inputs` / `measure_planner`: a synthetic 10,000-service fleet as plain `ServiceView`s and
  `ImageFacts`, planned in process (pure code: `plan.make_plan` + `waves.assign`), timed and traced.
- `python -m infra.local.bench_fleet plan`: the planner through the real clients (run_v2 over gRPC, or
  REST with `BASEROLL_CLOUD_RUN_TRANSPORT=rest`; the registry client), in a process of its own, against a
  running local stack (`BASEROLL_CONFIG`).
- `fleet_layout` / `seed_services`: real images in the real registry (`seed.seed_images`), then thousands of
  services created through the Cloud Run stand-in's own REST handler and checked through the real client.
- `sequential_baseline`: what existing scripts do, one deploy at a time (update by digest, wait ready).
- `Monitor`, `RouteMeter`: CPU per process (and per thread group inside the bench process, where both
  stand-ins run), Pub/Sub queue depths over time, per-route calls/CPU of the Cloud Run stand-in, TCP
  connections it accepted, and waits for / holds of its global lock.
- `memoize_image_checks`, `cheap_operation_trim`: bench-only settings that take simulation overhead out of
  the Cloud Run stand-in without changing what it answers.
- `timeline`: what the functions' JSON logs say happened when (waves, updates per region and second).

Nothing here asserts on time; the bench prints figures.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from baseroll.config import Labels
from baseroll.fleet.view import ServiceView
from baseroll.images.match import (
    BaseVersion,
    ImageFacts,
)
from baseroll.images.oci import ANNOTATION_BASE_DIGEST as ANN_BASE_DIGEST
from baseroll.images.oci import ANNOTATION_BASE_NAME as ANN_BASE_NAME
from baseroll.images.refs import ImageRef
from baseroll.rollout import waves
from baseroll.rollout.plan import images_to_inspect, make_plan
from google.api_core import retry as gretry
from google.api_core.future import polling as gpolling
from google.cloud import run_v2

from . import seed
from .seed import COHORT_LABEL, OPT_OUT_LABEL, SeededFleet

# Ten real region names (contracts.ids.REGION: `[a-z]+-[a-z]+[0-9]+`).
REGIONS10 = (
    "us-central1", "us-east1", "us-west1", "europe-west1", "europe-west4",
    "asia-east1", "asia-northeast1", "australia-southeast1", "southamerica-east1", "northamerica-northeast1",
)
PROJECT = "tenants-bench"
PLAN_PROJECT = "tenants-bench-plan"  # not in the rollout's config: only the planner measurement reads it
SEQ_PROJECT = "tenants-bench-seq"  # not in baseroll's config: the sequential baseline's own services
SEQ_REGION = "us-central1"
DEFAULT_WAVES = (0.01, 0.1, 0.5, 1.0)  # RolloutSettings' default cumulative fractions
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fast_polling(interval_s: float, timeout_s: float = 120.0) -> gretry.Retry:
    """LRO polling at a fixed short interval (scaled time: api_core's default first poll is 1 s)."""
    return gretry.Retry(predicate=gpolling.POLLING_PREDICATE, initial=interval_s, maximum=interval_s,
                        multiplier=1.0, timeout=timeout_s)


# ------------------------------------------------------------------------------ planner (pure)


@dataclass
class PlannerInputs:
    track_image: ImageRef
    new_base: ImageRef
    new_version: BaseVersion
    known: list[BaseVersion]
    services: list[ServiceView]
    facts: dict[str, ImageFacts | str]
    labels: Labels
    allowed: frozenset[str]


def planner_inputs(services: int = 10_000, regions: tuple[str, ...] = REGIONS10, apps: int = 100,
                   old_versions: int = 4, project: str = PROJECT, canaries: int = 100) -> PlannerInputs:
    """A synthetic fleet: `apps` app images, most on an older version of python:3.12 (half annotated,
    half recognisable only by layer prefix), every 10th on another base, every 25th already current;
    services round-robin over regions and apps, every 7th by tag, every 50th opted out."""
    registry = "us-docker.pkg.dev"
    track = ImageRef(registry, "platform/bases/python", "3.12")
    versions = [BaseVersion(_digest(f"base-{v}"), (_digest(f"os-{v}"), _digest(f"runtime-{v}")))
                for v in range(1, old_versions + 2)]
    new_version = versions[-1]
    other = BaseVersion(_digest("node-1"), (_digest("node-os-1"), _digest("node-runtime-1")))
    facts: dict[str, ImageFacts | str] = {}
    images: list[tuple[str, str]] = []  # (by digest, by tag)
    for k in range(apps):
        if k % 10 == 9:
            base, annotated_name = other, f"{registry}/platform/bases/node:22"
        elif k % 25 == 24:
            base, annotated_name = new_version, str(track)
        else:
            base, annotated_name = versions[k % old_versions], str(track)
        layers = (*base.layers, _digest(f"app-{k}-deps"), _digest(f"app-{k}-main"))
        annotations = {ANN_BASE_NAME: annotated_name, ANN_BASE_DIGEST: base.digest} if k % 2 == 0 else {}
        ref = ImageRef(registry, f"tenants/apps/app-{k:03d}", None, _digest(f"app-{k}-manifest"))
        by_digest, by_tag = str(ref), str(ref.with_tag("v1"))
        fact = ImageFacts(ref, layers, annotations)
        facts[by_digest] = facts[by_tag] = fact
        images.append((by_digest, by_tag))
    views = []
    for i in range(services):
        by_digest, by_tag = images[i % apps]
        labels = {"tenant": f"t{i:05d}"}
        if i % 50 == 0:
            labels[OPT_OUT_LABEL] = "true"
        elif i < canaries * 2 and i % 2:
            labels[COHORT_LABEL] = "canary"
        views.append(ServiceView(
            name=f"projects/{project}/locations/{regions[i % len(regions)]}/services/svc-{i:05d}",
            images=(by_tag if i % 7 == 3 else by_digest,), labels=labels,
            annotations={"run.googleapis.com/ingress": "all"}, etag=f'"{i}"', generation=1, observed_generation=1,
            latest_ready_revision=f"svc-{i:05d}-00001-abc", latest_created_revision=f"svc-{i:05d}-00001-abc",
            terminal_state="CONDITION_SUCCEEDED",
        ))
    return PlannerInputs(track, track.with_digest(new_version.digest), new_version, versions, views, facts,
                         Labels(opt_out=OPT_OUT_LABEL, cohort=COHORT_LABEL), frozenset({registry}))


def _plan_once(inp: PlannerInputs) -> tuple[int, list[list[str]]]:
    wanted = images_to_inspect(inp.services, inp.labels, inp.allowed)
    facts = {image: inp.facts[image] for image in wanted}
    plan = make_plan(track_image=inp.track_image, new_base=inp.new_base, new_version=inp.new_version,
                     known_versions=inp.known, services=inp.services, facts=facts, labels=inp.labels,
                     allowed=inp.allowed)
    members = [sp.service for sp in plan.to_roll]
    return len(plan.to_roll), waves.assign(members, DEFAULT_WAVES, cohort_label=inp.labels.cohort)


def measure_planner(services: int = 10_000, regions: tuple[str, ...] = REGIONS10, repeats: int = 3) -> dict:
    """Wall time (best and median of `repeats`, untraced) and tracemalloc peaks of plan + waves."""
    tracemalloc.start()
    inp = planner_inputs(services, regions)
    inputs_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    base_now, _ = tracemalloc.get_traced_memory()
    to_roll, all_waves = _plan_once(inp)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _plan_once(inp)
        times.append(time.perf_counter() - t0)
    return {
        "services": services, "regions": len(regions), "app_images": len({f.ref for f in inp.facts.values()
                                                                           if isinstance(f, ImageFacts)}),
        "base_versions": len(inp.known), "to_roll": to_roll, "waves": [len(w) for w in all_waves],
        "plan_s_best": min(times), "plan_s_median": statistics.median(times),
        "plan_peak_mb": (peak - base_now) / 1e6, "inputs_mb": inputs_bytes / 1e6,
        "total_peak_mb": (peak) / 1e6,
    }


# ------------------------------------------------------------------------------ seeding the stack


@dataclass
class BenchService:
    name: str
    region: str
    app: str
    image: str
    eligible: bool  # on the python base and not opted out: the rollout must update it exactly once
    canary: bool = False


def fleet_layout(images: SeededFleet, count: int, regions: tuple[str, ...], project: str = PROJECT,
                 canaries: int = 20) -> list[BenchService]:
    """Mostly python services (rolled); every 23rd on node, every 29th on debian, every 53rd python service
    opted out (prime strides, so each region gets its share); every 7th deployed by tag; the first `canaries` eligible ones in the canary cohort."""
    py_apps = [a for a, (b, _) in seed.APPS.items() if b == "python"]
    out = []
    n_canary = 0
    for i in range(count):
        region = regions[i % len(regions)]
        if i % 23 == 7:
            app = "node-web"
        elif i % 29 == 13:
            app = "legacy"
        else:
            app = py_apps[i % len(py_apps)]
        pinned = images.apps[app]
        image = str(pinned.with_tag("v1")) if i % 7 == 3 else str(pinned)
        python = seed.APPS[app][0] == "python"
        opted_out = python and i % 53 == 0
        eligible = python and not opted_out
        canary = eligible and n_canary < canaries
        n_canary += canary
        out.append(BenchService(f"projects/{project}/locations/{region}/services/svc-{i:05d}", region, app, image,
                                eligible, canary))
    return out


def _service_body(svc: BenchService) -> run_v2.Service:
    labels = {"tenant": svc.name.rsplit("-", 1)[-1]}
    if seed.APPS[svc.app][0] == "python" and not svc.eligible:
        labels[OPT_OUT_LABEL] = "true"
    if svc.canary:
        labels[COHORT_LABEL] = "canary"
    return run_v2.Service(labels=labels,
                          template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=svc.image)]))


def seed_services(standin: Any, run: run_v2.ServicesClient, services: list[BenchService], *,
                  timeout_s: float = 600.0) -> tuple[float, int]:
    """Create every service through the stand-in's own REST handler, called in process (werkzeug's test
    client on its WSGI app: the same routing, JSON parsing, validation and deploy path as over TCP, without
    a socket and a thread per request, which made seeding 10,000 services through the client take ~4 min
    here); then wait, listing through the real run_v2 client, until every one is ready, re-creating any whose
    first revision failed. Returns (seconds taken, services re-created)."""
    from werkzeug.test import Client

    http = Client(standin._wsgi)
    deadline = time.monotonic() + timeout_s

    def create(svc: BenchService) -> None:
        parts = svc.name.split("/")
        body = run_v2.Service.to_json(_service_body(svc))
        path = f"/v2/projects/{parts[1]}/locations/{parts[3]}/services?serviceId={parts[5]}"
        while True:
            r = http.post(path, data=body, content_type="application/json")
            if r.status_code == 200:
                return
            if r.status_code != 503 or time.monotonic() > deadline:  # 503: the deploy queue is full
                raise RuntimeError(f"creating {svc.name}: HTTP {r.status_code} {r.get_data(as_text=True)[:300]}")
            time.sleep(0.1)

    t0 = time.monotonic()
    for svc in services:
        create(svc)
    parents = sorted({s.name.rsplit("/services/", 1)[0] for s in services})
    by_name = {s.name: s for s in services}
    recreated = 0
    while True:
        ready, failed = set(), []
        for parent in parents:
            for svc in run.list_services(request=run_v2.ListServicesRequest(parent=parent, page_size=1000)):
                state = svc.terminal_condition.state
                if state == run_v2.Condition.State.CONDITION_SUCCEEDED and svc.latest_ready_revision:
                    ready.add(svc.name)
                elif state == run_v2.Condition.State.CONDITION_FAILED and not svc.latest_ready_revision:
                    failed.append(svc.name)  # its first revision failed (e.g. a registry timeout under load)
        if set(by_name) <= ready:
            return time.monotonic() - t0, recreated
        if time.monotonic() > deadline or recreated > 50:
            raise TimeoutError(f"{len(set(by_name) - ready)} seeded services not ready within {timeout_s:.0f}s "
                               f"({recreated} re-created after a failed first revision)")
        for name in failed:
            run.delete_service(name=name).result(timeout=60, polling=fast_polling(0.05))
            create(by_name[name])
            recreated += 1
        time.sleep(0.5)


def cheap_operation_trim(standin: Any) -> None:
    """Bench-only, same behaviour: the Cloud Run stand-in forgets finished operations beyond MAX_OPERATIONS
    (10,000), oldest first, by listing *every* remembered operation on *every* create/update
    (`[n for n, o in ops.items() if o.done][:excess]`, O(operations) even when nothing is over the cap):
    ~7 ms of CPU per write at 10,000 operations, under the stand-in's lock. This stops at the first
    `excess` finished ones instead."""
    from itertools import islice

    from .cloudrun import MAX_OPERATIONS

    def forget() -> None:
        ops = standin._operations
        excess = len(ops) - MAX_OPERATIONS
        if excess > 0:
            for name in list(islice((n for n, o in ops.items() if o.done), excess)):
                del ops[name]

    standin._forget_old_operations_locked = forget


def memoize_image_checks(standin: Any) -> dict[str, int]:
    """Bench-only: remember the Cloud Run stand-in's successful checks of digest-pinned images, so each
    distinct image is resolved against the registry once instead of once per deploy (about 10 ms of CPU
    and 6 registry requests each, simulation overhead competing with baseroll for the same 2 cores).
    Tag references (unless counters["tags"] is set, as while seeding, when no tag moves) and failures are
    always checked again. Returns the live counters."""
    checker = standin._checker
    inner = checker.check
    ok: set[str] = set()
    counts = {"hits": 0, "misses": 0, "tags": 0}  # set "tags" to 1 to memoise tags too (while seeding)
    lock = threading.Lock()

    def check(image: str) -> Any:
        pinned = "@sha256:" in image or bool(counts["tags"])
        if pinned:
            with lock:
                if image in ok:
                    counts["hits"] += 1
                    return None
                counts["misses"] += 1
        failure = inner(image)
        if failure is None and pinned:
            with lock:
                ok.add(image)
        return failure

    checker.check = check
    return counts


# ------------------------------------------------------------------------------ sequential baseline


def sequential_baseline(run: run_v2.ServicesClient, names: list[str], image: str, *,
                        poll: gretry.Retry | None) -> list[float]:
    """One deploy at a time, as a script does: read, set the image by digest, update, wait for the
    operation, check the service is ready. Seconds per service. `poll` None: api_core's default polling."""
    took = []
    for name in names:
        t0 = time.monotonic()
        svc = run.get_service(name=name)
        svc.template.containers[0].image = image
        svc.template.revision = ""
        op = run.update_service(request=run_v2.UpdateServiceRequest(service=svc))
        op.result(timeout=120, **({"polling": poll} if poll is not None else {}))
        after = run.get_service(name=name)
        ready = (after.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
                 and after.latest_ready_revision == after.latest_created_revision)
        if not ready or after.template.containers[0].image != image:
            raise AssertionError(f"sequential deploy of {name} did not end ready on {image}")
        took.append(time.monotonic() - t0)
    return took


# ------------------------------------------------------------------------------ monitoring


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads, live and exited), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine spent busy (not idle, not iowait) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def _thread_cpu(tid: int) -> float | None:
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def proc_status_mb(pid: int, key: str) -> float:
    """A memory figure from /proc/PID/status (VmRSS: now, VmHWM: peak resident set), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def _thread_group(name: str) -> str:
    if name.startswith("cloudrun-deploy"):
        return "cloudrun stand-in: deploy workers (image checks)"
    if name.startswith("pubsub-push"):
        return "pubsub stand-in: push workers"
    if name.startswith("pubsub-grpc"):
        return "pubsub stand-in: gRPC handlers"
    if name.startswith("cloudrun-grpc"):
        return "cloudrun stand-in: gRPC handlers"
    if "process_request_thread" in name:
        return "cloudrun stand-in: HTTP handler threads"
    if name == "MainThread":
        return "bench driver (main thread)"
    if name.startswith("bench-monitor"):
        return "bench monitor"
    return "other threads (clients, servers)"


class Monitor:
    """Samples every `interval` s: CPU of named processes (with their children), CPU of this process's
    threads by group, and the Pub/Sub stand-in's per-subscription queue depth and in-flight count."""

    def __init__(self, processes: dict[str, int], pubsub: Any, interval: float = 0.5) -> None:
        self.roots = processes
        self.trees = {name: process_tree(pid) for name, pid in processes.items()}
        self.pubsub = pubsub
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self.thread_cpu: dict[int, tuple[str, float]] = {}  # tid -> (group, last seen cumulative CPU)
        self._thread_cpu0: dict[int, float] = {}
        self.queue_samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.cpu0: dict[str, float] = {}
        self.cpu1: dict[str, float] = {}
        self.t0 = self.t1 = 0.0

    def _proc_cpus(self) -> dict[str, float]:
        out = {name: sum(_proc_cpu(p) for p in pids) for name, pids in self.trees.items()}
        out["bench process (both stand-ins + driver)"] = _proc_cpu(os.getpid())
        return out

    def _sample_threads(self) -> None:
        for t in threading.enumerate():
            tid = t.native_id
            if tid is None:
                continue
            cpu = _thread_cpu(tid)
            if cpu is None:
                continue
            if tid not in self.thread_cpu and tid not in self._thread_cpu0:
                self._thread_cpu0[tid] = 0.0 if self.t0 else cpu
            self.thread_cpu[tid] = (_thread_group(t.name), cpu)

    def start(self) -> "Monitor":
        self._sample_threads()
        self._thread_cpu0 = {tid: cpu for tid, (_, cpu) in self.thread_cpu.items()}
        self.cpu0 = self._proc_cpus()
        self.machine0 = machine_busy_s()
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_threads()
            stats = self.pubsub.stats()["subscriptions"]
            self.queue_samples.append((time.monotonic() - self.t0, {
                name.rsplit("/", 1)[-1]: (s["queued"], s["in_flight"]) for name, s in stats.items()}))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample_threads()
        self.cpu1 = self._proc_cpus()
        self.machine1 = machine_busy_s()
        self.t1 = time.monotonic()

    def report(self) -> dict:
        wall = self.t1 - self.t0
        procs = {name: self.cpu1[name] - self.cpu0.get(name, 0.0) for name in self.cpu1}
        groups: dict[str, float] = defaultdict(float)
        for tid, (group, cpu) in self.thread_cpu.items():
            groups[group] += cpu - self._thread_cpu0.get(tid, 0.0)
        own = procs["bench process (both stand-ins + driver)"]
        groups["exited threads / gRPC core (unattributed)"] = max(0.0, own - sum(groups.values()))
        queues: dict[str, dict[str, float]] = {}
        for sub in {k for _, s in self.queue_samples for k in s}:
            q = [s[sub][0] for _, s in self.queue_samples if sub in s]
            f = [s[sub][1] for _, s in self.queue_samples if sub in s]
            queues[sub] = {"queued_mean": statistics.fmean(q) if q else 0, "queued_max": max(q, default=0),
                           "in_flight_mean": statistics.fmean(f) if f else 0, "in_flight_max": max(f, default=0)}
        machine = self.machine1 - self.machine0
        return {"wall_s": wall, "cpu_s": procs, "cpu_total_s": sum(procs.values()),
                "cores_busy": sum(procs.values()) / wall if wall else 0.0,
                "machine_cores_busy": machine / wall if wall else 0.0,
                "other_load_cores": max(0.0, machine - sum(procs.values())) / wall if wall else 0.0,
                "bench_threads_cpu_s": dict(sorted(groups.items(), key=lambda kv: -kv[1])), "queues": queues}


class _MeteredRLock:
    """A stand-in for the Cloud Run stand-in's global RLock that records, per holder label, how long the
    outermost acquisition waited for it and how long it was then held (wall time)."""

    def __init__(self, meter: "RouteMeter") -> None:
        self._inner = threading.RLock()
        self._meter = meter
        self._local = threading.local()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        t0 = time.perf_counter()
        ok = self._inner.acquire(blocking, timeout)
        if ok:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self._local.since = time.perf_counter()
                self._meter.add_lock(self._meter.label(), "wait", self._local.since - t0)
            self._local.depth = depth + 1
        return ok

    def release(self) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            self._meter.add_lock(self._meter.label(), "held", time.perf_counter() - self._local.since)
        self._inner.release()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


class RouteMeter:
    """Counts and CPU (thread time) per Cloud Run stand-in route and of its deploy image checks; TCP
    connections accepted; and how long each kind of work waited for and held the stand-in's global lock."""

    def __init__(self, standin: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.cpu: dict[str, float] = defaultdict(float)
        self.lock_s: dict[tuple[str, str], float] = defaultdict(float)
        self._lock = threading.Lock()
        self._label = threading.local()
        routes = []
        for route in standin._routes:
            label = f"{route.method} {route.name}"
            routes.append(dataclasses.replace(route, handler=self._wrap(label, route.handler)))
        standin._routes = routes
        checker = standin._checker
        checker.check = self._wrap("deploy image check (registry I/O)", checker.check)
        run_job = standin._run_job
        standin._run_job = self._wrap("deploy job (latency sleep excluded from CPU)", run_job)
        server = standin._rest._server  # werkzeug's ThreadedWSGIServer: one thread per accepted connection
        accept = server.process_request

        def counting_accept(*args: Any) -> Any:
            with self._lock:
                self.calls["(TCP connections accepted)"] += 1
            return accept(*args)

        server.process_request = counting_accept
        standin._lock = _MeteredRLock(self)

    def label(self) -> str:
        return getattr(self._label, "value", None) or "request bookkeeping (_api, quota, faults)"

    def add_lock(self, label: str, kind: str, seconds: float) -> None:
        with self._lock:
            self.lock_s[(label, kind)] += seconds

    def _wrap(self, label: str, fn: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            outer = getattr(self._label, "value", None)
            if outer is None:
                self._label.value = label
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.thread_time() - t0
                if outer is None:
                    self._label.value = None
                with self._lock:
                    self.calls[label] += 1
                    self.cpu[label] += dt
        wrapped.__name__ = getattr(fn, "__name__", label)
        return wrapped

    def snapshot(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return {k: (self.calls[k], self.cpu[k]) for k in self.calls}

    def lock_snapshot(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return dict(self.lock_s)


def lock_delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], wall: float) -> dict:
    """Per holder: seconds waited for / held the stand-in's lock, and the share of `wall` it was held."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"wait_s": 0.0, "held_s": 0.0})
    for (label, kind), v in after.items():
        out[label][f"{kind}_s"] += v - before.get((label, kind), 0.0)
    rows = {k: {**v, "held_share": v["held_s"] / wall if wall else 0.0} for k, v in out.items()}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["held_s"]))


def meter_delta(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]) -> dict[str, dict]:
    out = {}
    for k, (n, cpu) in after.items():
        n0, c0 = before.get(k, (0, 0.0))
        if n - n0:
            out[k] = {"calls": n - n0, "cpu_s": cpu - c0, "cpu_ms_per_call": 1000 * (cpu - c0) / (n - n0)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))


# ------------------------------------------------------------------------------ log timeline


def read_log(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            rec["_t"] = datetime.fromisoformat(rec["time"]).timestamp()
            out.append(rec)
    return out


def timeline(logs: dict[str, list[dict]], rollout_id: str, t_publish: float, quota_per_s: float) -> dict:
    """Per-wave release/settle times, update rates per region, and idle gaps, from the functions' logs."""
    planner = [r for r in logs.get("on_artifact_push", [])]
    worker = [r for r in logs.get("roll_service", []) if r.get("rollout_id") == rollout_id]
    coord = [r for r in logs.get("on_roll_result", []) if r.get("rollout_id") == rollout_id]
    rel = lambda t: round(t - t_publish, 3)  # noqa: E731
    first = lambda recs, msg: next((r["_t"] for r in recs if r["message"] == msg), None)  # noqa: E731
    updates = sorted((r["_t"], r["service"]) for r in worker if r["message"] == "service.updated")
    done = [r for r in worker if r["message"] == "task.done"]
    out: dict[str, Any] = {
        "planner_accepted_s": rel(first(planner, "event.accepted") or t_publish),
        "planner_discovered_s": rel(first(planner, "fleet.discovered") or t_publish),
        "planner_started_s": rel(first(planner, "rollout.started") or t_publish),
        "updates": len(updates),
        "task_outcomes": dict(Counter(r["outcome"] for r in done)),
        "first_update_s": rel(updates[0][0]) if updates else None,
        "last_update_s": rel(updates[-1][0]) if updates else None,
        "finished_s": rel(first(coord, "rollout.finished") or t_publish),
        # Each stored plan is one listing of the whole fleet (rollout.stored_plan): the start's, and any step's.
        "fleet_plans": sum(1 for r in [*planner, *coord] if r["message"] == "plan.stored"),
        "coordinator_log": dict(Counter(r["message"] for r in coord)),
    }
    # Waves: released (end of the release loop), settled.
    wave_rows = []
    settled = {r["wave"]: r for r in coord if r["message"] == "wave.settled"}
    releases: dict[int, list[dict]] = defaultdict(list)
    for r in coord:
        if r["message"] == "wave.released":
            releases[r["wave"]].append(r)
    by_service_wave = {r["service"]: r["wave"] for r in done}
    upd_by_wave: dict[int, list[float]] = defaultdict(list)
    for t, name in updates:
        upd_by_wave[by_service_wave.get(name, -1)].append(t)
    for w in sorted(set(settled) | set(releases) | set(upd_by_wave)):
        ts = upd_by_wave.get(w, [])
        wave_rows.append({
            "wave": w, "size": settled.get(w, {}).get("size"),
            "steps": len(releases.get(w, [])),
            "first_update_s": rel(min(ts)) if ts else None, "last_update_s": rel(max(ts)) if ts else None,
            "released_s": rel(releases[w][-1]["_t"]) if releases.get(w) else None,
            "settled_s": rel(settled[w]["_t"]) if w in settled else None,
            "updates": len(ts),
            "rate_per_s": len(ts) / (max(ts) - min(ts)) if len(ts) > 1 and max(ts) > min(ts) else None,
        })
    out["waves"] = wave_rows
    # Idle time: between a wave's last update and the next wave's first update.
    gaps = []
    for a, b in zip(wave_rows, wave_rows[1:]):
        if a["last_update_s"] is not None and b["first_update_s"] is not None:
            gaps.append(round(b["first_update_s"] - a["last_update_s"], 3))
    out["inter_wave_gaps_s"] = gaps
    # Per region: updates and the achieved rate over the region's own deploy window vs its quota.
    per_region: dict[str, list[float]] = defaultdict(list)
    for t, name in updates:
        per_region[name.split("/")[3]].append(t)
    out["per_region"] = {
        region: {"updates": len(ts), "span_s": round(max(ts) - min(ts), 3),
                 "rate_per_s": round(len(ts) / max(1e-9, max(ts) - min(ts)), 2),
                 "quota_per_s": quota_per_s}
        for region, ts in sorted(per_region.items())
    }
    # Peak fleet-wide rate over any 5 s window.
    ts = [t for t, _ in updates]
    best, j = 0, 0
    for i in range(len(ts)):
        while ts[i] - ts[j] > 5.0:
            j += 1
        best = max(best, i - j + 1)
    out["peak_rate_5s_per_s"] = best / 5.0
    return out


# ------------------------------------------------------------------------------ planner through the real clients


def _plan_through_clients() -> dict:
    """In a process of its own (as the planner function runs): discover + inspect + match + plan for the
    configured projects × regions through the unmodified run_v2 client (on the configured transport:
    `cloud_run_transport`, gRPC unless set) and the registry client, as `rollout.build_plan` does. Wall
    time untraced, then tracemalloc's peak, peak RSS, and a cProfile split of listing."""
    import cProfile
    import pstats
    import resource

    from baseroll import config as config_mod
    from baseroll import runtime
    from baseroll.contracts.roll import RollRequest
    from baseroll.fleet.cloudrun import CloudRunFleet
    from baseroll.images.catalog import Catalog
    from baseroll.rollout import pipeline as engine

    cfg = config_mod.load()
    rss0 = proc_status_mb(os.getpid(), "VmRSS")
    registry = runtime.registry_client(cfg)
    fleet = CloudRunFleet.connect(cfg.cloud_run_endpoint, cfg.cloud_run_transport)
    track = cfg.base_tracks[0]
    request = RollRequest("base", track.image, None, "bench", "bench-plan")
    resolve = getattr(engine, "resolve_new_ref", None) or getattr(engine, "resolve_new_base")
    new_base = resolve(registry, request)

    def plan_once() -> Any:
        return engine.build_plan(cfg, fleet, Catalog(registry), request, new_base, quiet=True)

    t0 = time.perf_counter()
    plan = plan_once()
    wall = time.perf_counter() - t0
    hwm_first_plan = proc_status_mb(os.getpid(), "VmHWM")
    t0 = time.perf_counter()
    services = engine.discover(fleet, cfg, quiet=True)
    discover_s = time.perf_counter() - t0
    tracemalloc.start()
    plan_once()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Where listing time goes: discover's pool threads are invisible to cProfile, so list once more on
    # this thread, the same calls one location after another.
    prof = cProfile.Profile()
    prof.enable()
    for project in cfg.projects:
        for region in cfg.regions:
            for _ in fleet.list_services(project, region):
                pass
    prof.disable()
    return {
        "transport": cfg.cloud_run_transport, "services": len(services), "to_roll": len(plan.to_roll),
        "wall_s": wall, "discover_s": discover_s, "tracemalloc_peak_mb": traced_peak / 1e6, "rss_before_mb": rss0,
        "peak_rss_first_plan_mb": hwm_first_plan,
        "peak_rss_with_tracing_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "profile_s": _listing_split(pstats.Stats(prof).stats),  # type: ignore[attr-defined]
    }


def _listing_split(stats: dict) -> dict[str, float]:
    """Cumulative seconds of the listing's parts, from cProfile's (file, line, name) -> (cc, nc, tt, ct, callers)."""
    def cum(suffix: str, name: str) -> float:
        return max((v[3] for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name), default=0.0)

    return {
        "list, one thread": cum("baseroll/fleet/cloudrun.py", "list_services"),
        "JSON parse (protobuf json_format; REST only)": cum("protobuf/json_format.py", "Parse"),
        "view() (proto-plus -> ServiceView)": cum("baseroll/fleet/cloudrun.py", "view"),
        "HTTP round trips (requests; REST only, incl. server time)": cum("requests/sessions.py", "request"),
    }


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["plan"]:
        print("usage: python -m infra.local.bench_fleet plan   (BASEROLL_CONFIG names the stack's config)")
        return 2
    print("PLAN " + json.dumps(_plan_through_clients()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
