"""Bench: a simulated fleet over 10 regions rolled through the whole local stack (Pub/Sub planner →
coordinator → workers → Cloud Run stand-in) against (a) the write-quota floor and (b) the sequential
one-deploy-at-a-time approach of existing scripts, measured in the same run; and the planner at 10,000
services (pure code, and through the real clients on both transports).

Two rollout settings, each on a fresh stack:
- `scaled`: write quota 3,000/min per region in the stand-in *and* in baseroll's `rollout.write_quota_per_min`
  against Cloud Run's reported default of 60/min, so 1 s here stands for 50 s (a 0.2 s deploy for a 10 s one).
  Its quota floor (500 deploys/s over 10 regions) is far beyond what 2 cores can simulate: this setting
  measures how the stack and baseroll behave when the machine, not the quota, is the limit.
- `quota-bound`: the real 60/min per region (unscaled; 10 deploys/s over 10 regions, 2 s deploys), which
  this machine can drive: this setting measures how close baseroll's pacing and waves get to the floor.

Fleet size: BASEROLL_BENCH_SERVICES (default 3,000 for `scaled`, the largest that keeps the whole bench
near 10 minutes on the 2-core machine; the issue's figure is for 10,000: set it to 10000 and
BASEROLL_BENCH_ROLLOUT_TIMEOUT_S to ~3000 to run that) and BASEROLL_BENCH_QUOTA_SERVICES (default 1,000
for `quota-bound`, a 100 s floor; 10,000 is a 1,000 s floor: set BASEROLL_BENCH_ROLLOUT_TIMEOUT_S to
~1500 too). The planner figures are always for 10,000.

Prints tables and one ``BENCH {json}`` line per test. Asserts correctness only (every eligible service
rolled exactly once onto the new base, nothing else touched), never time.
Run: ``pytest -q -s tests/bench/test_bench_fleet.py``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from baseroll.contracts import ledger
from google.cloud import run_v2

from infra.local import bench_fleet as bf
from infra.local import scenario, seed
from infra.local.stack import LocalStack

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
REGIONS = bf.REGIONS10
REAL_QUOTA_PER_MIN = 60  # Admin API writes/min/region, reported default (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2)
PLAN_SERVICES = 10_000  # the planner figures are always for 10,000 services
PLAN_TIMEOUT_S = 300
PLANNER_TARGET_S = 3.0
PLANNER_TARGET_MB = 300.0
FLOOR_TARGET = 0.98  # issue #14: at least 98 % of the quota floor's throughput
ROLLOUT_TIMEOUT_S = float(os.environ.get("BASEROLL_BENCH_ROLLOUT_TIMEOUT_S", "900"))


@dataclass(frozen=True)
class Setup:
    name: str
    services: int
    quota_per_min: int  # per project × region, in the stand-in and in baseroll alike
    deploy_latency_s: float
    seq_sample: int  # sequential deploys measured (then extrapolated)
    plan_10k: bool  # also measure the planner through the real clients on a 10,000-service project
    canaries: int = 20
    # Stack parameters (not product code): enough stand-in deploy workers for quota × latency deploys in
    # flight, and enough Pub/Sub push slots / function threads that the stack's defaults (24 / 32) do not cap.
    cloudrun_workers: int = 128
    push_concurrency: int = 96
    function_threads: int = 96
    ready_timeout_s: float = 240.0  # product default; the coordinator's settle deadline is 2× this + grace

    @property
    def time_scale(self) -> float:
        return self.quota_per_min / REAL_QUOTA_PER_MIN


SCALED = Setup("scaled", int(os.environ.get("BASEROLL_BENCH_SERVICES", "3000")), 3000, 0.2, 100, True)
QUOTA_BOUND = Setup("quota-bound", int(os.environ.get("BASEROLL_BENCH_QUOTA_SERVICES", "1000")), 60, 2.0, 10, False)


def _bench_line(figures: dict) -> None:
    print("BENCH " + json.dumps(figures, sort_keys=True, separators=(",", ":"), default=str))


# ---------------------------------------------------------------- 1. the planner alone (pure)


def test_bench_planner_10k() -> None:
    f = bf.measure_planner(PLAN_SERVICES, REGIONS)
    assert f["to_roll"] > 0 and sum(f["waves"]) == f["to_roll"]
    print()
    print(f"planner (pure, in process): {f['services']:,} ServiceViews over {f['regions']} regions, "
          f"{f['app_images']} app images, {f['base_versions']} base versions; to roll {f['to_roll']:,}; "
          f"waves {f['waves']}")
    print(f"  images_to_inspect + make_plan + waves.assign: best {f['plan_s_best']:.3f} s, median "
          f"{f['plan_s_median']:.3f} s (target < {PLANNER_TARGET_S:.0f} s)")
    print(f"  tracemalloc peak while planning: {f['plan_peak_mb']:.1f} MB above its {f['inputs_mb']:.1f} MB of "
          f"inputs; {f['total_peak_mb']:.1f} MB in all (target < {PLANNER_TARGET_MB:.0f} MB)")
    _bench_line({"bench": "planner", **f, "target_s": PLANNER_TARGET_S, "target_mb": PLANNER_TARGET_MB})


def test_bench_planner_10k_through_clients() -> None:
    """The planner through the real clients on 10,000 services (10 regions × 1,000), over gRPC (production's
    transport, the adapter's default) and over REST, each in a process of its own, against one stand-in
    (both fronts, one state); seeded through the stand-in's own handler; no rollout, no functions."""
    with LocalStack(targets=(), regions=REGIONS, projects=(bf.PROJECT,), deploy_latency_s=0.0,
                    cloudrun_workers=32) as stack:
        memo = bf.memoize_image_checks(stack.cloudrun)
        memo["tags"] = 1  # no tag moves while seeding
        bf.cheap_operation_trim(stack.cloudrun)
        images = seed.seed_images(stack.registry_client(), stack.registry.host)
        layout = bf.fleet_layout(images, PLAN_SERVICES, REGIONS, project=bf.PLAN_PROJECT, canaries=100)
        seed_s, _ = bf.seed_services(stack.cloudrun, stack.run_client(), layout)
        scenario.push_new_base(stack, images, "python")
        runs = {transport: _plan_through_clients(stack, transport) for transport in ("grpc", "rest")}
    eligible = sum(1 for s in layout if s.eligible)
    for p in runs.values():
        assert p["services"] == PLAN_SERVICES and p["to_roll"] == eligible, p
    print()
    print(f"planner through the real clients (own process) on {PLAN_SERVICES:,} services over {len(REGIONS)} "
          f"regions (to roll {eligible:,}; seeded in {seed_s:.0f} s), target < {PLANNER_TARGET_S:.0f} s and "
          f"< {PLANNER_TARGET_MB:.0f} MB:")
    for p in runs.values():
        _print_plan(p)
    _bench_line({"bench": "planner-through-clients", "services": PLAN_SERVICES, "to_roll": eligible,
                 "target_s": PLANNER_TARGET_S, "target_mb": PLANNER_TARGET_MB, **runs})


def _print_plan(p: dict) -> None:
    print(f"  {p['transport']:>4}: build_plan {p['wall_s']:.2f} s, discover alone {p['discover_s']:.2f} s; peak RSS "
          f"{p['peak_rss_first_plan_mb']:.0f} MB ({p['rss_before_mb']:.0f} MB after imports); Python heap peak "
          f"{p['tracemalloc_peak_mb']:.0f} MB")
    print("        listing, one thread (cProfile): "
          + "; ".join(f"{k} {v:.2f} s" for k, v in p["profile_s"].items() if v))


# ---------------------------------------------------------------- 2. the whole stack


def test_bench_fleet_rollout_scaled() -> None:
    _rollout_bench(SCALED)


def test_bench_fleet_rollout_quota_bound() -> None:
    _rollout_bench(QUOTA_BOUND)


def _list_fleet(run: run_v2.ServicesClient, parents: list[str]) -> dict[str, run_v2.Service]:
    out = {}
    for parent in parents:
        for svc in run.list_services(request=run_v2.ListServicesRequest(parent=parent, page_size=1000)):
            out[svc.name] = svc
    return out


def _rss_mb(pid: int, key: str) -> float:
    return max((bf.proc_status_mb(p, key) for p in bf.process_tree(pid)), default=0.0)


def _plan_through_clients(stack: LocalStack, transport: str = "grpc") -> dict:
    """The planner in a process of its own through run_v2 on `transport` (gRPC: production's, the adapter's
    default) against the stand-in's matching front."""
    assert stack.cloudrun is not None
    endpoint = stack.cloudrun.grpc_url if transport == "grpc" else stack.cloudrun.url
    env = {**os.environ, "BASEROLL_CONFIG": str(stack.config_path), "BASEROLL_PROJECTS": bf.PLAN_PROJECT,
           "BASEROLL_CLOUD_RUN_ENDPOINT": endpoint, "BASEROLL_CLOUD_RUN_TRANSPORT": transport,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "functions"), str(ROOT)])}
    env.pop("BASEROLL_CONFIG_YAML", None)
    proc = subprocess.run([sys.executable, "-m", "infra.local.bench_fleet", "plan"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=PLAN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PLAN "))[5:])


def _rollout_bench(setup: Setup) -> None:
    quota_per_s = setup.quota_per_min / 60.0
    figures: dict = {"bench": f"fleet-{setup.name}", "setup": asdict(setup), "regions": len(REGIONS),
                     "projects": 1, "time_scale": setup.time_scale, "cpus": os.cpu_count()}
    with LocalStack(
        targets=("on_artifact_push", "roll_service", "on_roll_result"),
        regions=REGIONS, projects=(bf.PROJECT,), deploy_latency_s=setup.deploy_latency_s,
        ready_timeout_s=setup.ready_timeout_s, write_quota_per_min=setup.quota_per_min,
        rollout={"write_quota_per_min": setup.quota_per_min, "waves": list(bf.DEFAULT_WAVES)},
        cloudrun_workers=setup.cloudrun_workers, push_concurrency=setup.push_concurrency,
        function_threads=setup.function_threads,
    ) as stack:
        cfg_doc = stack.config()["rollout"]
        figures["rollout_config"] = {k: cfg_doc.get(k) for k in ("waves", "invocation_budget_s", "poll_interval_s",
                                                                 "ready_timeout_s", "failure_budget")}
        # Bench-only stand-in settings (simulation overhead, not baseroll's; see bench_fleet): image checks
        # memoised per pinned digest, finished operations trimmed without a full scan per write.
        meter = bf.RouteMeter(stack.cloudrun)
        memo = bf.memoize_image_checks(stack.cloudrun)
        bf.cheap_operation_trim(stack.cloudrun)

        # --- seed (not measured; no deploy latency, no quota): the rollout's fleet, the sequential baseline's
        # services in a project of their own, and (scaled) a 10,000-service project only the planner reads
        images = seed.seed_images(stack.registry_client(), stack.registry.host)
        layout = bf.fleet_layout(images, setup.services, REGIONS, canaries=setup.canaries)
        plan_layout = (bf.fleet_layout(images, PLAN_SERVICES, REGIONS, project=bf.PLAN_PROJECT, canaries=100)
                       if setup.plan_10k else [])
        seq_services = [bf.BenchService(f"projects/{bf.SEQ_PROJECT}/locations/{bf.SEQ_REGION}/services/seq-{i:04d}",
                                        bf.SEQ_REGION, "py-api", str(images.apps["py-api"]), False)
                        for i in range(setup.seq_sample + (10 if setup.plan_10k else 0))]
        run = stack.run_client()
        stack.cloudrun.deploy_latency_s = 0.0
        stack.cloudrun.set_write_quota(None)
        memo["tags"] = 1  # no tag moves while seeding
        figures["seed_s"], figures["seed_recreated"] = bf.seed_services(stack.cloudrun, run,
                                                                        layout + plan_layout + seq_services)
        memo["tags"] = 0
        stack.cloudrun.deploy_latency_s = setup.deploy_latency_s
        stack.cloudrun.set_write_quota(setup.quota_per_min)  # full buckets again
        eligible = [s for s in layout if s.eligible]
        per_region = {r: sum(1 for s in eligible if s.region == r) for r in REGIONS}
        figures["eligible_per_region"] = per_region

        # --- (b) the sequential baseline, before the rollout, on an idle stack (its best case): a script's
        # loop polling the operation at a tenth of the deploy latency (api_core's default waits ≤ 1 s first)
        target = str(images.apps["node-web"])
        names = [s.name for s in seq_services]
        seq = bf.sequential_baseline(run, names[:setup.seq_sample], target,
                                     poll=bf.fast_polling(setup.deploy_latency_s / 10))
        figures["sequential"] = {"sample": len(seq), "mean_s": statistics.fmean(seq), "p50_s": statistics.median(seq),
                                 "p95_s": sorted(seq)[int(0.95 * (len(seq) - 1))],
                                 "poll_interval_s": setup.deploy_latency_s / 10}
        if names[setup.seq_sample:]:
            seq_default = bf.sequential_baseline(run, names[setup.seq_sample:], target, poll=None)
            figures["sequential"] |= {"default_poll_sample": len(seq_default),
                                      "default_poll_mean_s": statistics.fmean(seq_default)}

        # --- push the new base; (scaled) plan the 10,000-service project through the real clients
        new_base = scenario.push_new_base(stack, images, "python")
        rid = scenario.rollout_id("python", new_base)
        track = images.base_track("python")
        if setup.plan_10k:
            figures["plan_through_clients"] = _plan_through_clients(stack)
            assert figures["plan_through_clients"]["to_roll"] == sum(1 for s in plan_layout if s.eligible)

        # --- (a) the rollout, from publishing the push event to `rollout.finished`
        procs = {t: stack.functions[t][0].pid for t in stack.targets}
        procs["registry"] = stack.registry.proc.pid
        planner_rss_before = _rss_mb(procs["on_artifact_push"], "VmRSS")
        cr_before = stack.cloudrun.stats()
        ps_before = stack.pubsub.stats()["subscriptions"]
        mon = bf.Monitor(procs, stack.pubsub).start()
        m0, l0 = meter.snapshot(), meter.lock_snapshot()
        t_publish = time.time()
        scenario.publish_push(stack, new_base, track.tag)
        record = scenario.wait_rollout(stack, rid, timeout=ROLLOUT_TIMEOUT_S)
        mon.stop()
        monitor = mon.report()
        figures["routes"] = bf.meter_delta(m0, meter.snapshot())
        figures["standin_lock"] = bf.lock_delta(l0, meter.lock_snapshot(), monitor["wall_s"])
        cr_after = stack.cloudrun.stats()
        figures["cloudrun_responses"] = {k: v - cr_before["responses"].get(k, 0) for k, v in
                                         cr_after["responses"].items() if v - cr_before["responses"].get(k, 0)}
        figures["pubsub"] = {
            name.rsplit("/", 1)[-1]: {k: st[k] - ps_before.get(name, {}).get(k, 0)
                                      for k in ("delivered", "acked", "nacked", "redeliveries", "dead_lettered")}
            | {"last_error": st["last_error"]}
            for name, st in stack.pubsub.stats()["subscriptions"].items() if st["delivered"]}
        logs = {t: bf.read_log(stack.function_log(t)) for t in stack.targets}
        tl = bf.timeline(logs, rid, t_publish, quota_per_s)
        figures["planner_rss_mb"] = {"before": planner_rss_before, "peak": _rss_mb(procs["on_artifact_push"], "VmHWM")}
        figures["function_peak_rss_mb"] = {t: _rss_mb(pid, "VmHWM") for t, pid in procs.items() if t != "registry"}
        figures["record"] = {k: record.get(k) for k in ("status", "reason", "waves")}
        figures["image_check_memo"] = dict(memo)

        # --- correctness: every eligible service rolled exactly once onto the new base, nothing else touched
        assert record["status"] == "finished", record
        before, after = cr_before["services"], cr_after["services"]
        final = _list_fleet(run, [f"projects/{bf.PROJECT}/locations/{r}" for r in REGIONS])
        on_new = {img: scenario.on_base(stack, img, new_base)
                  for img in {final[s.name].template.containers[0].image for s in eligible}}
        for s in layout:
            delta = after[s.name]["updates"] - before[s.name]["updates"]
            svc = final[s.name]
            if s.eligible:
                assert delta == 1, f"{s.name} updated {delta} times"
                assert on_new[svc.template.containers[0].image], f"{s.name} not on the new base"
                assert svc.annotations.get(ledger.STATE) == "rolled" and svc.annotations.get(ledger.ROLLOUT_ID) == rid
            else:
                assert delta == 0 and svc.template.containers[0].image == s.image, f"{s.name} was touched"

    rolled = len(eligible)
    wall = tl["finished_s"]
    floor = max(n / quota_per_s for n in per_region.values())
    seq_total = rolled * figures["sequential"]["mean_s"]
    figures.update({
        "services": setup.services, "rolled": rolled, "rollout_wall_s": wall, "throughput_per_s": rolled / wall,
        "quota_floor_s": floor, "quota_floor_throughput_per_s": rolled / floor,
        "floor_over_actual": floor / wall, "floor_target": FLOOR_TARGET,
        "sequential_extrapolated_s": seq_total, "sequential_extrapolated": True,
        "speedup_vs_sequential": seq_total / wall, "timeline": tl, "monitor": monitor,
    })
    _print(setup, figures)
    _bench_line(figures)


def _print_summary(f: dict) -> None:
    """The figures issue #14 asks of the rollout at scale, on one line."""
    tl = f["timeline"]
    wave0 = next((w for w in tl["waves"] if w["wave"] == 0), {})
    print(f"summary: {f['floor_over_actual']:.1%} of the quota floor ({f['quota_floor_s']:.0f} s floor, "
          f"{f['rollout_wall_s']:.0f} s rollout); first update {tl['first_update_s']} s after the event; "
          f"fleet listed {tl['planner_discovered_s']} s after it ({tl['fleet_plans']} plan(s) of the whole fleet "
          f"stored in the rollout); wave 0 released at {wave0.get('released_s')} s; idle between waves "
          f"{sum(tl['inter_wave_gaps_s']):.1f} s in all ({tl['inter_wave_gaps_s']})")


def _print(setup: Setup, f: dict) -> None:
    tl, mon, seq = f["timeline"], f["monitor"], f["sequential"]
    scale, rolled = setup.time_scale, f["rolled"]
    print()
    print(f"=== rollout bench '{setup.name}': {setup.services:,} services over {f['regions']} regions × 1 project; "
          f"{rolled:,} eligible (python base, not opted out; the rest on node/debian or opted out); "
          f"seeded in {f['seed_s']:.0f} s")
    if scale != 1:
        print(f"scaled time: write quota {setup.quota_per_min:,}/min per region in the stand-in and in baseroll "
              f"(real default ~{REAL_QUOTA_PER_MIN}/min) → 1 s here ≈ {scale:.0f} s real; deploy latency "
              f"{setup.deploy_latency_s} s ≈ {setup.deploy_latency_s * scale:.0f} s real")
    else:
        print(f"real time: write quota {setup.quota_per_min}/min per region (the real default), deploy latency "
              f"{setup.deploy_latency_s} s")
    print(f"machine: {f['cpus']} cores; stack parameters: stand-in deploy workers {setup.cloudrun_workers}, Pub/Sub "
          f"push slots {setup.push_concurrency}, function threads {setup.function_threads}; rollout config "
          f"{f['rollout_config']}; canaries {setup.canaries}")
    print()
    print(f"{'':46}{'wall':>9}{'services/s':>12}" + (f"{'≈ real':>12}" if scale != 1 else ""))

    def row(name: str, s: float) -> None:
        print(f"{name:46}{s:>8.1f}s{rolled / s:>12.1f}" + (f"{s * scale / 60:>9.0f} min" if scale != 1 else ""))

    row("quota floor (max region ÷ quota, computed)", f["quota_floor_s"])
    row("baseroll: publish push event → finished", f["rollout_wall_s"])
    row(f"sequential, 1 at a time (extrapolated, n={seq['sample']})", f["sequential_extrapolated_s"])
    print(f"floor ÷ actual (share of the floor's throughput): {f['floor_over_actual']:.1%} "
          f"(target ≥ {FLOOR_TARGET:.0%}); speedup vs sequential: {f['speedup_vs_sequential']:.1f}×")
    _print_summary(f)
    line = (f"sequential per deploy: mean {seq['mean_s']:.3f} s, p50 {seq['p50_s']:.3f} s, p95 {seq['p95_s']:.3f} s "
            f"(polling the operation every {seq['poll_interval_s']:.2f} s)")
    if "default_poll_mean_s" in seq:
        line += (f"; with api_core's default LRO polling (first poll after ≤ 1 s): {seq['default_poll_mean_s']:.3f} s "
                 f"(n={seq['default_poll_sample']})")
    print(line)
    if "plan_through_clients" in f:
        p = f["plan_through_clients"]
        print(f"planner through the real clients (own process) on {p['services']:,} services "
              f"(to roll {p['to_roll']:,}), target < {PLANNER_TARGET_S:.0f} s and < {PLANNER_TARGET_MB:.0f} MB:")
        _print_plan(p)
    print(f"planner function in the rollout: RSS {f['planner_rss_mb']['before']:.0f} MB before, peak "
          f"{f['planner_rss_mb']['peak']:.0f} MB; accepted {tl['planner_accepted_s']:.2f} s, discovered "
          f"{tl['planner_discovered_s']:.2f} s, started (rebased, first step sent) {tl['planner_started_s']:.2f} s "
          f"after publish")
    print()
    print(f"{'wave':>5}{'size':>7}{'steps':>6}{'released':>10}{'1st update':>12}{'last update':>12}{'settled':>9}"
          f"{'rate/s':>8}")
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    for w in tl["waves"]:
        print(f"{w['wave']:>5}{w['size'] or 0:>7}{w['steps']:>6}{fmt(w['released_s']):>10}"
              f"{fmt(w['first_update_s']):>12}{fmt(w['last_update_s']):>12}{fmt(w['settled_s']):>9}"
              f"{fmt(w['rate_per_s']):>8}")
    print(f"idle between waves (a wave's last update → the next one's first): {tl['inter_wave_gaps_s']} s "
          f"(sum {sum(tl['inter_wave_gaps_s']):.1f} s); first update {fmt(tl['first_update_s'])} s after publish; "
          f"peak 5 s rate {tl['peak_rate_5s_per_s']:.1f}/s vs {f['regions'] * setup.quota_per_min / 60:.0f}/s of quota")
    print()
    print(f"CPU during the rollout ({mon['wall_s']:.0f} s): the stack's processes {mon['cores_busy']:.2f} of "
          f"{f['cpus']} cores; the whole machine {mon['machine_cores_busy']:.2f} (other load on the machine "
          f"{mon['other_load_cores']:.2f})")
    for name, s in sorted(mon["cpu_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:52}{s:>8.1f} s{1000 * s / rolled:>8.1f} ms/service")
    print("  inside the bench process, by thread group:")
    for name, s in mon["bench_threads_cpu_s"].items():
        if s >= 0.05:
            print(f"    {name:50}{s:>8.1f} s")
    print("  Cloud Run stand-in, by route (thread CPU; calls per rolled service):")
    for name, r in list(f["routes"].items())[:10]:
        print(f"    {name:46}{r['calls']:>8} calls{r['calls'] / rolled:>6.2f}/svc{r['cpu_s']:>8.1f} s"
              f"{r['cpu_ms_per_call']:>7.2f} ms/call")
    print("  Cloud Run stand-in global lock (wait for it / hold it, wall):")
    for name, r in list(f["standin_lock"].items())[:6]:
        print(f"    {name:46} waited {r['wait_s']:>7.1f} s  held {r['held_s']:>6.1f} s ({r['held_share']:.0%} of the rollout)")
    print(f"  Cloud Run stand-in responses: {f['cloudrun_responses']}")
    for name, st in sorted(f["pubsub"].items()):
        print(f"  Pub/Sub {name}: {st}")
    print("  Pub/Sub stand-in queues (mean / max queued, mean / max in flight):")
    for name, q in sorted(mon["queues"].items()):
        if q["queued_max"] or q["in_flight_max"]:
            print(f"    {name:30}{q['queued_mean']:>8.0f} /{q['queued_max']:>6}{q['in_flight_mean']:>8.1f} /"
                  f"{q['in_flight_max']:>4}")


# ---------------------------------------------------------------- 3. the first update at scale

FIRST_SERVICES = int(os.environ.get("BASEROLL_BENCH_FIRST_UPDATE_SERVICES", "10000"))
FIRST_REPEATS = int(os.environ.get("BASEROLL_BENCH_FIRST_UPDATE_REPEATS", "3"))
FIRST_TARGET_S = 5.0  # issue #14: the first service updated within 5 s of the event


def test_bench_first_update() -> None:
    """From the push event to the first service ready on its new image, on the quota-bound setting's fleet
    (10,000 services over 10 regions, 20 canaries, 60 writes/min per region, 2 s deploys), without paying for
    the whole rollout: `rollout.approval: after-canary` stops each rollout once its canary wave settled.
    Repeated on one stack, each time onto a newer base: the first event reaches function instances that have
    served nothing yet (each builds its clients on its first event); the later ones reach warm instances."""
    setup = QUOTA_BOUND
    with LocalStack(
        targets=("on_artifact_push", "roll_service", "on_roll_result"),
        regions=REGIONS, projects=(bf.PROJECT,), deploy_latency_s=setup.deploy_latency_s,
        ready_timeout_s=setup.ready_timeout_s, write_quota_per_min=setup.quota_per_min,
        rollout={"write_quota_per_min": setup.quota_per_min, "waves": list(bf.DEFAULT_WAVES),
                 "approval": "after-canary"},
        cloudrun_workers=setup.cloudrun_workers, push_concurrency=setup.push_concurrency,
        function_threads=setup.function_threads,
    ) as stack:
        memo = bf.memoize_image_checks(stack.cloudrun)
        bf.cheap_operation_trim(stack.cloudrun)
        images = seed.seed_images(stack.registry_client(), stack.registry.host)
        layout = bf.fleet_layout(images, FIRST_SERVICES, REGIONS, canaries=setup.canaries)
        run = stack.run_client()
        stack.cloudrun.deploy_latency_s = 0.0
        stack.cloudrun.set_write_quota(None)
        memo["tags"] = 1  # no tag moves while seeding
        seed_s, _ = bf.seed_services(stack.cloudrun, run, layout)
        memo["tags"] = 0
        stack.cloudrun.deploy_latency_s = setup.deploy_latency_s
        stack.cloudrun.set_write_quota(setup.quota_per_min)
        canaries = {s.name for s in layout if s.canary}
        track = images.base_track("python")
        store = scenario.record_store(stack)
        reps = []
        for rep in range(FIRST_REPEATS):
            new_base = scenario.push_new_base(stack, images, "python")
            rid = scenario.rollout_id("python", new_base)
            before = stack.cloudrun.stats()["services"]
            t_publish = time.time()
            scenario.publish_push(stack, new_base, track.tag)
            deadline = time.monotonic() + 180
            while (record := store.get(rid)) is None or record.status != "awaiting-approval":
                assert time.monotonic() < deadline, f"rollout {rid} did not settle its canary wave: {record}"
                time.sleep(0.2)
            assert stack.wait_idle(30.0)
            after = stack.cloudrun.stats()["services"]
            # Correctness: the canaries, and only they, updated once each, onto the new base.
            updated = {name for name, st in after.items() if st["updates"] != before.get(name, {}).get("updates", 0)}
            assert updated == canaries, f"updated {sorted(updated - canaries)[:5]}, missed {sorted(canaries - updated)[:5]}"
            assert all(after[n]["updates"] - before[n]["updates"] == 1 for n in canaries)
            assert all(scenario.on_base(stack, img, new_base) for img in
                       {run.get_service(name=n).template.containers[0].image for n in canaries})
            logs = {t: [r for r in bf.read_log(stack.function_log(t)) if r["_t"] >= t_publish] for t in stack.targets}
            tl = bf.timeline(logs, rid, t_publish, setup.quota_per_min / 60)
            wave0 = next(w for w in tl["waves"] if w["wave"] == 0)
            reps.append({"rep": rep, "instances": "fresh" if rep == 0 else "warm",
                         "discovered_s": tl["planner_discovered_s"], "started_s": tl["planner_started_s"],
                         "wave0_released_s": wave0["released_s"], "first_update_s": tl["first_update_s"],
                         "wave0_settled_s": wave0["settled_s"]})
    warm = [r["first_update_s"] for r in reps[1:]]
    figures = {"bench": "first-update", "services": FIRST_SERVICES, "canaries": len(canaries), "seed_s": seed_s,
               "deploy_latency_s": setup.deploy_latency_s, "target_s": FIRST_TARGET_S, "reps": reps,
               "fresh_first_update_s": reps[0]["first_update_s"],
               "warm_first_update_median_s": statistics.median(warm) if warm else None}
    print()
    print(f"=== first update: {FIRST_SERVICES:,} services over {len(REGIONS)} regions, {len(canaries)} canaries, "
          f"{setup.deploy_latency_s} s deploys; seconds after the push event (target < {FIRST_TARGET_S:.0f} s for "
          f"the first service ready on its new image)")
    print(f"{'rep':>4}{'instances':>10}{'listed':>8}{'started':>9}{'released':>10}{'1st update':>12}{'settled':>9}")
    for r in reps:
        print(f"{r['rep']:>4}{r['instances']:>10}{r['discovered_s']:>8.2f}{r['started_s']:>9.2f}"
              f"{r['wave0_released_s']:>10.2f}{r['first_update_s']:>12.2f}{r['wave0_settled_s']:>9.2f}")
    warm_median = f"{figures['warm_first_update_median_s']:.2f} s" if warm else "not measured"
    print(f"summary: first update {figures['fresh_first_update_s']:.2f} s after the event on fresh function "
          f"instances; median on warm ones {warm_median} ({len(warm)} runs)")
    _bench_line(figures)
