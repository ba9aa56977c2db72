"""Reliability under faults, crashes and hostile conditions, on the whole local stack.

1. Faults at scale: 1,000 services (2 projects x 3 regions) rolled through Pub/Sub while the Cloud
   Run stand-in answers 503/429 to writes, new revisions fail at random, a concurrent writer
   changes services between baseroll's read and its write (etag conflicts), and Pub/Sub duplicates
   deliveries and loses acks. Every eligible service ends on the new base (checked in the registry)
   or back on its original image with a `rolled-back` ledger entry and a reason; no service gets
   the same target twice; every other service is untouched.
2. Crash safety: the worker and then the coordinator are SIGKILLed mid-rollout and restarted on
   the same port; Pub/Sub redelivers. The rollout finishes, nothing is updated twice, and no
   service is left on a failed revision.
3. No credentials in any function log line of these runs: each test's function logs are checked
   when it ends, whether it passed or failed (`log_dir`). The stack's registry requires auth through
   its token server, so real secrets exist: the password and every token issued are looked for
   verbatim, besides the credential-shaped patterns.

Each stack is started inside its test, so `make test` runs the three on different workers at once
(tests/conftest.py, STANDALONE).
"""
from __future__ import annotations

import base64
import json
import queue
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from infra.local import scenario
from infra.local.cloudrun.faults import ApiCall
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

PROJECTS = ("tenants-prod-a", "tenants-prod-b")
REGIONS = ("us-central1", "europe-west1", "asia-east1")
WRITER_HEADER = "x-baseroll-test-writer"


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a test keeps its stack's function logs (`collect_logs`); every line of them is checked
    for credentials at teardown, so a leak is reported even when the test itself failed."""
    yield tmp_path
    hits = scan_for_credentials(sorted(tmp_path.glob("*.log")), known_secrets(tmp_path))[2]
    assert not hits, "\n".join(hits[:20])


def collect_logs(stack: LocalStack, log_dir: Path, label: str) -> None:
    """The stack's function logs, and the secrets that must not be in them (`known_secrets`)."""
    for target in stack.targets:
        src = stack.function_log(target)
        if src.exists():
            shutil.copyfile(src, log_dir / f"{label}-{target}.log")
    tokens = stack.tokens
    basic = base64.b64encode(f"{tokens.username}:{tokens.secret}".encode()).decode()
    # A token's signature alone is enough to look for: a log line cut mid-token still shows it.
    secrets = [tokens.secret, basic, *tokens.issued, *(t.rsplit(".", 1)[1] for t in tokens.issued)]
    (log_dir / f"{label}.secrets.json").write_text(json.dumps(secrets))


def known_secrets(log_dir: Path) -> list[str]:
    return [s for path in sorted(log_dir.glob("*.secrets.json")) for s in json.loads(path.read_text())]


def service_stats(stack: LocalStack) -> dict[str, dict]:
    return stack.cloudrun.stats()["services"]


def image_history(before: dict[str, dict], after: dict[str, dict], name: str) -> list[str]:
    """Every container image an update moved `name` to during the test, in order."""
    return after.get(name, {}).get("images", [])[len(before.get(name, {}).get("images", [])):]


def sub_stats(stack: LocalStack) -> dict[str, int]:
    total: Counter = Counter()
    for s in stack.pubsub.stats()["subscriptions"].values():
        for key in ("delivered", "acked", "nacked", "redeliveries", "duplicates", "ack_lost", "dead_lettered"):
            total[key] += s[key]
    return dict(total)


def health(client: run_v2.ServicesClient, name: str) -> tuple[bool, run_v2.Service]:
    """Ready as the brief defines it: the latest created revision is the latest ready one."""
    svc = client.get_service(name=name)
    return bool(svc.latest_created_revision) and svc.latest_ready_revision == svc.latest_created_revision, svc


class RacingWriter:
    """A concurrent writer that races baseroll between its read and its write.

    For each chosen service, baseroll's first update (UpdateService) is held by the stand-in until a
    background thread has changed the service's labels through the real run_v2 client (etag-checked
    read-modify-write); then baseroll's update goes on with the etag it read before. It must be refused
    (409) and re-read and retried, never applied over the other writer's change nor applied twice.
    Bounded: one write per chosen service, 30 s per write, one thread.
    """

    def __init__(self, stack: LocalStack, names: list[str]) -> None:
        self.client = stack.run_client()
        self.standin = stack.cloudrun
        self.chosen = set(names)
        self.updates: Counter = Counter()
        self.written: dict[str, str] = {}  # name -> label value written
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="racing-writer", daemon=True)
        self._stop = threading.Event()

    def install(self) -> None:
        self.standin.add_call_hook(self._hold_first_update)  # over gRPC and REST alike
        self._thread.start()

    def stop(self) -> None:
        self.standin.remove_call_hook(self._hold_first_update)
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _hold_first_update(self, call: ApiCall) -> None:
        name = call.resource
        if (call.method != "update_service" or call.metadata.get(WRITER_HEADER) or name not in self.chosen
                or self._stop.is_set()):
            return
        with self._lock:
            self.updates[name] += 1
            fire = self.updates[name] == 1
        if fire:
            done = threading.Event()
            self._queue.put((name, done))
            done.wait(timeout=30)  # baseroll's update lands only after the other write did

    def _run(self) -> None:
        meta = [(WRITER_HEADER, "1")]
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            name, done = item
            try:
                for attempt in range(6):  # the injected 503/429s hit this writer too
                    try:
                        svc = self.client.get_service(name=name, metadata=meta)
                        value = f"w{len(self.written)}"
                        svc.labels["touched-by"] = value
                        self.client.update_service(request=run_v2.UpdateServiceRequest(service=svc), metadata=meta)
                        self.written[name] = value
                        break
                    except (gexc.ServiceUnavailable, gexc.TooManyRequests, gexc.Conflict, gexc.Aborted) as exc:
                        self.errors.append(f"{name}: {type(exc).__name__}")
                        time.sleep(0.2 * (attempt + 1))
            except Exception as exc:  # noqa: BLE001 - reported by the test, never hangs baseroll
                self.errors.append(f"{name}: {exc!r}")
            finally:
                done.set()


# ------------------------------------------------------------------------------------------ 1. faults at scale


def test_faults_at_scale_every_service_rolled_or_rolled_back_with_reason(log_dir):
    t0 = time.monotonic()
    stack = LocalStack(
        projects=PROJECTS, regions=REGIONS, ready_timeout_s=20,
        rollout={"waves": [0.1, 0.5, 1.0], "failure_budget": "100%", "write_quota_per_min": 600},
        pubsub_faults={"duplicate_probability": 0.05, "drop_ack_probability": 0.05, "seed": 17},
    )
    with stack:
        try:
            fleet = scenario.seed_fleet(stack, services=1000, canaries=8)
            seeded_s = time.monotonic() - t0
            eligible = [s for s in fleet.services if s.eligible_for("python")]
            canaries = {s.name for s in fleet.services[:8]}
            racing = [s.name for s in eligible if s.name not in canaries][5::25][:12]
            assert len(eligible) > 300 and len(racing) == 12

            # 5% faults: 503 and 429 on ~3% of writes each, ~5% of new revisions fail.
            stack.cloudrun.inject_fault({"http": {"status": 503, "probability": 0.03, "methods": ["PATCH"], "seed": 5}})
            stack.cloudrun.inject_fault({"http": {"status": 429, "probability": 0.03, "methods": ["PATCH"], "seed": 6}})
            stack.cloudrun.inject_fault({"service": "*", "probability": 0.05, "seed": 7,
                                         "reason": "HEALTH_CHECK_CONTAINER_ERROR"})
            writer = RacingWriter(stack, racing)
            writer.install()
            before = service_stats(stack)

            new_base = scenario.push_new_base(stack, fleet, "python")
            rid = scenario.rollout_id("python", new_base)
            t1 = time.monotonic()
            scenario.publish_push(stack, new_base, "3.12")
            try:
                record = scenario.wait_rollout(stack, rid, timeout=420)
            finally:
                writer.stop()
            rollout_s = time.monotonic() - t1
            assert record["status"] == "finished", record

            after = service_stats(stack)
            client = stack.run_client()
            done_lines = stack.log_records("task.done", target="roll_service")
            outcomes: dict[str, list[dict]] = {}
            for r in done_lines:
                outcomes.setdefault(r["service"], []).append(r)
            counts: Counter = Counter()
            problems: list[str] = []
            for r in scenario.results(stack, fleet):
                name, history = r.seeded.name, image_history(before, after, r.seeded.name)
                dupes = [img for img, n in Counter(history).items() if n > 1]
                if dupes:
                    problems.append(f"{name}: updated to the same image twice: {history}")
                if not r.seeded.eligible_for("python"):
                    counts["untouched"] += 1
                    if r.changed or history or r.state:
                        problems.append(f"{name}: not eligible but touched: {history} state={r.state!r}")
                    continue
                if r.state == "rolled":
                    counts["rolled"] += 1
                    ready, _ = health(client, name)
                    if not (r.changed and scenario.on_base(stack, r.image, new_base) and history == [r.image] and ready):
                        problems.append(f"{name}: rolled but image={r.image} history={history} ready={ready}")
                elif r.state == "rolled-back":
                    counts["rolled-back"] += 1
                    reported = [o for o in outcomes.get(name, []) if o.get("outcome") in ("rolled-back", "rollback-failed")]
                    counts["rollback-failed"] += any(o["outcome"] == "rollback-failed" for o in reported)
                    if r.image != r.seeded.image or not r.reason:
                        problems.append(f"{name}: rolled back but image={r.image} reason={r.reason!r}")
                    if len(history) != 2 or history[1] != r.seeded.image or not scenario.on_base(stack, history[0], new_base):
                        problems.append(f"{name}: rolled back but its updates were {history}")
                    if not reported or not all(o.get("reason") for o in reported):
                        problems.append(f"{name}: rolled back without a task.done line with its reason: "
                                        f"{outcomes.get(name)}")
                else:
                    problems.append(f"{name}: eligible but ended with state={r.state!r} image={r.image} "
                                    f"history={history} task.done={outcomes.get(name)}")
            # The racing writer's changes survived: baseroll re-read instead of overwriting them.
            for name, value in writer.written.items():
                if client.get_service(name=name).labels.get("touched-by") != value:
                    problems.append(f"{name}: the concurrent writer's label change was lost")

            stale = stack.log_records("service.stale", target="roll_service")
            cr = stack.cloudrun.stats()
            ps = sub_stats(stack)
            print(f"\nfaults at scale: services={len(fleet.services)} eligible={len(eligible)} "
                  f"rolled={counts['rolled']} rolled_back={counts['rolled-back']} "
                  f"(rollback_failed={counts['rollback-failed']}) untouched={counts['untouched']} | "
                  f"http 503={cr['responses'].get('503', 0)} 429={cr['responses'].get('429', 0)} "
                  f"409={cr['responses'].get('409', 0)} revisions_failed="
                  f"{sum(v['revisions_failed'] for v in after.values()) - sum(v['revisions_failed'] for v in before.values())} "
                  f"racing_writes={len(writer.written)} stale_retries={len(stale)} | pubsub {ps} | "
                  f"seed {seeded_s:.0f}s rollout {rollout_s:.0f}s waves={record['waves']}")
            assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
            # The faults really happened.
            assert cr["responses"].get("503", 0) > 0 and cr["responses"].get("429", 0) > 0
            assert counts["rolled-back"] > 0
            assert len(writer.written) == len(racing), writer.errors
            assert len(stale) >= len(racing), "every racing write must have made baseroll re-read"
            assert ps["duplicates"] > 0 and ps["ack_lost"] > 0
        finally:
            collect_logs(stack, log_dir, "scale")


# ------------------------------------------------------------------------------------------ 2. crash safety


def wait_for(check, *, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")


def test_crash_of_worker_and_coordinator_mid_rollout(log_dir):
    stack = LocalStack(
        projects=PROJECTS, regions=REGIONS, ready_timeout_s=20, deploy_latency_s=0.3,
        rollout={"waves": [0.2, 1.0], "failure_budget": "100%", "write_quota_per_min": 600,
                 "invocation_budget_s": 20},
    )
    with stack:
        try:
            fleet = scenario.seed_fleet(stack, services=300, canaries=4)
            eligible = [s for s in fleet.services if s.eligible_for("python")]
            # About one in eight eligible services gets a first revision that fails (its rollback is fine).
            doomed = {s.name for s in eligible[3::8]}
            for name in doomed:
                stack.cloudrun.inject_fault({"service": name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
            before = service_stats(stack)
            new_base = scenario.push_new_base(stack, fleet, "python")
            rid = scenario.rollout_id("python", new_base)
            t0 = time.monotonic()
            scenario.publish_push(stack, new_base, "3.12")

            def failed_revision() -> str | None:
                now = service_stats(stack)
                return next((n for n in doomed if now[n]["revisions_failed"] > before[n]["revisions_failed"]), None)

            # Crash 1: the worker, while a task is gating a revision that has just failed (before the
            # worker sees it and rolls back), with every other task in flight.
            caught = wait_for(failed_revision, timeout=180, interval=0.01, what="a doomed revision failing")
            worker_pid = stack.kill_function("roll_service")
            killed_worker_at = time.monotonic() - t0
            time.sleep(1.5)
            stack.restart_function("roll_service")

            # Crash 2: the coordinator, once half of the eligible services were updated (mid-wave).
            def half_updated() -> bool:
                now = service_stats(stack)
                return sum(now[s.name]["updates"] > before[s.name]["updates"] for s in eligible) >= len(eligible) // 2

            wait_for(half_updated, timeout=240, interval=0.1, what="half of the fleet updated")
            coordinator_pid = stack.kill_function("on_roll_result")
            killed_coordinator_at = time.monotonic() - t0
            time.sleep(1.5)
            stack.restart_function("on_roll_result")

            finished = True
            try:
                record = scenario.wait_rollout(stack, rid, timeout=360)
            except TimeoutError as exc:
                finished, record = False, {"status": f"not finished: {exc}"}
            elapsed = time.monotonic() - t0

            after = service_stats(stack)
            client = stack.run_client()
            problems: list[str] = []
            counts: Counter = Counter()
            for r in scenario.results(stack, fleet):
                name, history = r.seeded.name, image_history(before, after, r.seeded.name)
                if any(n > 1 for n in Counter(history).values()):
                    problems.append(f"{name}: updated to the same image twice: {history}")
                if not r.seeded.eligible_for("python"):
                    if r.changed or history:
                        problems.append(f"{name}: not eligible but touched: {history}")
                    continue
                ready, svc = health(client, name)
                if not ready:
                    counts["on-failed-revision"] += 1
                    problems.append(
                        f"{name}: left on a failed revision: image={r.image} state={r.state!r} reason={r.reason!r} "
                        f"latest_created={svc.latest_created_revision.rsplit('/', 1)[-1]} "
                        f"latest_ready={svc.latest_ready_revision.rsplit('/', 1)[-1]} history={history}")
                    continue
                if r.state == "rolled" and scenario.on_base(stack, r.image, new_base):
                    counts["rolled"] += 1
                elif r.state == "rolled-back" and r.image == r.seeded.image and r.reason:
                    counts["rolled-back"] += 1
                else:
                    problems.append(f"{name}: ended with state={r.state!r} image={r.image} history={history}")
            ps = sub_stats(stack)
            print(f"\ncrash safety: eligible={len(eligible)} doomed={len(doomed)} rolled={counts['rolled']} "
                  f"rolled_back={counts['rolled-back']} on_failed_revision={counts['on-failed-revision']} | "
                  f"worker pid {worker_pid} killed at {killed_worker_at:.1f}s (while {caught} was failing), "
                  f"coordinator pid {coordinator_pid} killed at {killed_coordinator_at:.1f}s | "
                  f"rollout {record['status']} after {elapsed:.0f}s | pubsub {ps}")
            assert finished and record["status"] == "finished", (
                f"the rollout did not finish after the crashes: {record}")
            assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
            assert ps["nacked"] > 0, "the crashes must have cost deliveries that Pub/Sub redelivered"
        finally:
            collect_logs(stack, log_dir, "crash")


# ------------------------------------------------------------------------------------------ 3. no credentials in logs


SECRET_PATTERNS = [
    re.compile(r"\bBearer\s+(?!\[redacted\])\S+", re.I),
    re.compile(r"\bBasic\s+(?!\[redacted\])[A-Za-z0-9+/=]{6,}", re.I),
    re.compile(r"password", re.I),
    re.compile(r"token=", re.I),
    re.compile(r"authorization", re.I),
]


def scan_for_credentials(paths: list[Path], secrets: list[str]) -> tuple[int, int, list[str]]:
    """(lines, JSON lines, lines matching a credential pattern or holding one of `secrets`) over
    `paths`; every structured line must be one JSON object."""
    lines = json_lines = 0
    hits: list[str] = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            lines += 1
            if line.startswith("{"):
                json_lines += 1
                json.loads(line)
            hits.extend(f"{path.name}: {line[:200]}" for p in SECRET_PATTERNS if p.search(line))
            hits.extend(f"{path.name}: a known secret in: {line[:200]}" for x in secrets if x in line)
    return lines, json_lines, hits


def test_no_credentials_in_any_function_log_line(log_dir):
    """A small rollout of its own, its function logs checked line by line (the other tests of this
    file have theirs checked by the same `log_dir` fixture when they end)."""
    stack = LocalStack(ready_timeout_s=20, rollout={"failure_budget": "100%"})
    with stack:
        try:
            fleet = scenario.seed_fleet(stack, services=40)
            new_base = scenario.push_new_base(stack, fleet, "node")
            issued_before = stack.tokens.counts["issued"]  # the seeding's own exchanges
            scenario.publish_push(stack, new_base, "22")
            record = scenario.wait_rollout(stack, scenario.rollout_id("node", new_base), timeout=180)
            assert record["status"] == "finished", record
            counts = dict(stack.tokens.counts)
        finally:
            collect_logs(stack, log_dir, "creds")
    # The rollout read and pushed images on a registry that refuses anonymous calls: the functions
    # (and the Cloud Run stand-in's image checks) traded the secret for tokens, never a wrong one.
    assert counts["issued"] > issued_before and counts["refused"] == 0, counts
    paths = sorted(log_dir.glob("*.log"))
    secrets = known_secrets(log_dir)
    lines, json_lines, hits = scan_for_credentials(paths, secrets)
    print(f"\ncredentials check: {len(paths)} logs, {lines} lines ({json_lines} JSON), {len(secrets)} secrets "
          f"({counts['issued'] - issued_before} tokens issued during the rollout), {len(hits)} hits")
    assert json_lines > 50 and len(secrets) > 2
    assert not hits, "\n".join(hits[:20])
