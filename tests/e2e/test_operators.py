"""Operators in the loop, on the local stack: an approval holds a rollout after its canaries until
`baseroll approve`; an approved rollout whose track moved meanwhile is superseded, a held one can be
aborted; a maintenance window closed for one region holds that region while the other rolls, and
the held region rolls once its window opens; every rollout event arrives on `baseroll-events` in
its schema, once by id.

Time is the real clock: window rules have minute granularity, so the window test writes a rule that
opens at the next minute boundary at least WINDOW_MARGIN_S away (a wait of 20-80 s), the functions
read it when restarted, and nothing in production can shift their clock.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from baseroll import cli as cli_main
from baseroll.contracts import events as E
from baseroll.contracts import requests, topics
from baseroll.edge import envelope
from click.testing import CliRunner
from google.cloud import pubsub_v1

from infra.local import scenario
from infra.local.stack import TOPIC_PROJECT, LocalStack
from tests.e2e.test_control import wait_for
from tests.unit.test_notify_chat import Webhook

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WINDOW_MARGIN_S = 20.0  # restarting the coordinator and releasing the open region takes about 5 s
HELD, OPEN = "europe-west1", "us-central1"


@pytest.fixture(scope="module")
def stack():
    with LocalStack(rollout={"waves": [0.5, 1.0], "approval": "after-canary"}) as s:
        yield s


@pytest.fixture(scope="module")
def fleet(stack):
    return scenario.seed_fleet(stack, services=24)


@pytest.fixture(scope="module")
def events(stack):
    """A push subscription on baseroll-events to a loopback endpoint that keeps every delivery."""
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    sub = pubsub_v1.SubscriberClient()
    topic = stack.publisher.topic_path(stack.topic_project(topics.EVENTS), topics.EVENTS)
    sub.create_subscription(request={"name": sub.subscription_path(TOPIC_PROJECT, "test-operators-events"),
                                     "topic": topic, "push_config": {"push_endpoint": hook.url}})
    sub.close()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()
    thread.join(timeout=5)


def received(hook: Webhook, rollout_id: str) -> list[E.RolloutEvent]:
    """The rollout's events as delivered, each decoded strictly (a malformed one fails the test)."""
    with hook.lock:
        bodies = [body for _, body in hook.posts]
    decoded = [E.decode(envelope.pubsub_message(body)) for body in bodies]
    return [e for e in decoded if e.rollout_id == rollout_id]


def once_each(hook: Webhook, rollout_id: str, last: str = E.FINISHED, timeout: float = 30.0) -> list[tuple]:
    """(kind, wave, detail) of each distinct event (duplicates dropped by id), once `last` arrived."""
    wait_for(lambda: any(e.kind == last for e in received(hook, rollout_id)), timeout, f"a {last} event")
    unique = {e.event_id: e for e in received(hook, rollout_id)}
    return [(e.kind, e.wave, dict(e.detail)) for e in sorted(unique.values(), key=lambda e: (e.seq, e.at))]


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    """`python -m baseroll.cli` as an operator runs it, reaching the stack's Pub/Sub."""
    env = {"PATH": os.environ["PATH"], "PUBSUB_EMULATOR_HOST": os.environ["PUBSUB_EMULATOR_HOST"],
           "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/adc.json"}
    return subprocess.run([sys.executable, "-m", "baseroll.cli", "--config", str(stack.config_path), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_after_canary_holds_the_rollout_until_baseroll_approve(stack, fleet, events):
    eligible = [s for s in fleet.services if s.eligible_for("python")]
    canaries = {s.name for s in fleet.services[:4] if s.eligible_for("python")}  # seed_fleet labels the first 4
    assert canaries
    before = stack.update_counts()
    new_base = scenario.push_new_base(stack, fleet, "python")
    rid = scenario.rollout_id("python", new_base)
    # `baseroll roll` starts it and follows it until it waits for a person, then says how to approve.
    rolled = CliRunner().invoke(cli_main.main, ["--config", str(stack.config_path), "roll", "--base",
                                                str(fleet.base_track("python")), "--timeout", "120"])
    assert rolled.exit_code == 4, rolled.output
    assert f"{rid}: awaiting-approval" in rolled.output and f"baseroll approve {rid}" in rolled.output
    assert stack.wait_idle(30)
    time.sleep(1.0)  # held: nothing more happens on its own
    rec = scenario.record_store(stack).get(rid)
    assert (rec.status, rec.wave) == ("awaiting-approval", 1) and "canary wave settled" in rec.reason
    counts = stack.update_counts()
    assert {s.name for s in eligible if counts[s.name] != before[s.name]} == canaries

    done = cli(stack, "approve", rid, "--project", TOPIC_PROJECT, "--reason", "canaries look fine")
    assert done.returncode == 0, done.stderr
    record = scenario.wait_rollout(stack, rid, timeout=120)
    assert record["status"] == "finished" and record["approved_waves"] == [1], record
    after = stack.update_counts()
    for r in scenario.results(stack, fleet):
        if r.seeded in eligible:
            assert scenario.on_base(stack, r.image, new_base) and after[r.seeded.name] - before[r.seeded.name] == 1

    got = once_each(events, rid)
    assert [(kind, wave) for kind, wave, _ in got] == [
        ("started", None), ("wave-released", 0), ("wave-settled", 0), ("awaiting-approval", 1),
        ("resumed", 1), ("wave-released", 1), ("wave-settled", 1), ("wave-released", 2), ("wave-settled", 2),
        ("finished", None)]
    details = {kind: detail for kind, _, detail in got}
    assert details["started"]["approval"] == "after-canary"
    assert details["awaiting-approval"]["approve"] == f"baseroll approve {rid}"
    assert details["resumed"]["cause"] == "approve"
    assert details["finished"]["done"] == len(eligible)


def test_a_held_rollout_superseded_then_approved_and_one_aborted_report_it(stack, fleet, events):
    """Two pushes while the first rollout waits: its approval runs a step that finds its track moved
    (superseded); the second, waiting too, is aborted with `baseroll publish --action abort`."""
    first = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, first, "3.12")
    rid1 = scenario.rollout_id("python", first)
    store = scenario.record_store(stack)
    wait_for(lambda: getattr(store.get(rid1), "status", None) == "awaiting-approval", 120, "the first held")
    second = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, second, "3.12")
    rid2 = scenario.rollout_id("python", second)
    wait_for(lambda: getattr(store.get(rid2), "status", None) == "awaiting-approval", 120, "the second held")

    assert cli(stack, "approve", rid1, "--project", TOPIC_PROJECT).returncode == 0
    assert scenario.wait_rollout(stack, rid1, timeout=60)["status"] == "superseded"
    aborted = cli(stack, "publish", "--project", TOPIC_PROJECT, "--action", "abort", "--rollout-id", rid2)
    assert aborted.returncode == 0, aborted.stderr
    assert scenario.wait_rollout(stack, rid2, timeout=60)["status"] == "aborted"

    got1 = once_each(events, rid1, last=E.SUPERSEDED)
    assert [(kind, wave) for kind, wave, _ in got1] == [
        ("started", None), ("wave-released", 0), ("wave-settled", 0), ("awaiting-approval", 1), ("resumed", 1),
        ("superseded", 1)]
    assert got1[-1][2]["now_digest"] == second.digest
    got2 = once_each(events, rid2, last=E.ABORTED)
    assert [(kind, wave) for kind, wave, _ in got2] == [
        ("started", None), ("wave-released", 0), ("wave-settled", 0), ("awaiting-approval", 1), ("aborted", 1)]


def test_a_halt_reports_the_failing_canaries_and_why(stack, fleet, events):
    canaries = [s.name for s in fleet.services[:4] if s.eligible_for("python")]
    for name in canaries:  # over the failure budget (1) of the canary wave
        stack.cloudrun.inject_fault({"service": name, "reason": "HEALTH_CHECK_CONTAINER_ERROR", "times": 1})
    new_base = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, new_base, "3.12")
    rid = scenario.rollout_id("python", new_base)
    record = scenario.wait_rollout(stack, rid, timeout=120)
    assert record["status"] == "halted", record
    got = once_each(events, rid, last=E.HALTED)
    assert [(kind, wave) for kind, wave, _ in got] == [
        ("started", None), ("wave-released", 0), ("wave-settled", 0), ("halted", 0)]
    halted = got[-1][2]
    assert halted["reason"] == record["reason"] and halted["failed_total"] == len(canaries)
    assert {f["service"] for f in halted["failed"]} == set(canaries)
    assert all(f["reason"] for f in halted["failed"]), halted  # each canary's own reason


def _window_opening(margin_s: float) -> datetime:
    """The first whole minute (UTC) at least `margin_s` from now."""
    return datetime.fromtimestamp(math.ceil((time.time() + margin_s) / 60) * 60, UTC)


def _reconfigure(stack, opens: datetime) -> None:
    """Windows instead of approvals: europe-west1 may be written from `opens` for two hours; one wave
    and no canary cohort; a step budget short enough that the rollout parks rather than waits."""
    assert stack.wait_idle(30)
    start, end = opens, opens + timedelta(hours=2)
    stack.rollout_overrides = {"waves": [1.0], "invocation_budget_s": 5, "windows": [
        {"match": {"region": HELD}, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
         "start": f"{start:%H:%M}", "end": f"{end:%H:%M}", "time_zone": "UTC"}]}
    cfg = stack.config()
    cfg["labels"]["cohort"] = "test-no-cohort"
    stack.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for target in ("on_artifact_push", "on_roll_result", "on_roll_request"):  # each reads its config once
        stack.kill_function(target)
        stack.restart_function(target)


def test_a_closed_window_holds_its_region_until_it_opens(stack, fleet, events):
    opens = _window_opening(WINDOW_MARGIN_S)
    _reconfigure(stack, opens)
    eligible = [s for s in fleet.services if s.eligible_for("node")]
    region = {s.name: s.name.split("/")[3] for s in eligible}
    assert set(region.values()) == {HELD, OPEN}
    before = stack.update_counts()
    new_base = scenario.push_new_base(stack, fleet, "node")
    scenario.publish_push(stack, new_base, "22")
    rid = scenario.rollout_id("node", new_base)
    store = scenario.record_store(stack)
    wait_for(lambda: (store.get(rid) is not None and store.get(rid).resume_at > 0), 60, "the rollout parked")
    assert stack.wait_idle(30)
    rec = store.get(rid)
    assert (rec.status, rec.resume_at) == ("running", opens.timestamp()), rec
    assert "wait for a maintenance window" in rec.reason and f"opens {opens:%a %Y-%m-%d %H:%M} UTC" in rec.reason
    changed = {n for n in region if stack.update_counts()[n] != before[n]}
    assert changed == {n for n, r in region.items() if r == OPEN}, "the open region rolled, the closed one not"

    # While it waits, `status --services` and a dry run (`plan`) show each workload's window.
    opening = f"closed; opens {opens:%a %Y-%m-%d %H:%M} UTC ({opens:%Y-%m-%dT%H:%MZ})"
    shown = CliRunner().invoke(cli_main.main, ["--config", str(stack.config_path), "--json", "status", "--base",
                                               "node", "--services"])
    assert shown.exit_code == 0, shown.output
    windows = {row["service"]: row["window"] for row in json.loads(shown.stdout)[0]["services"]}
    assert {windows[n] for n, r in region.items() if r == HELD} == {opening}
    assert {windows[n] for n, r in region.items() if r == OPEN} == {"no window (any time)"}
    planned = CliRunner().invoke(cli_main.main, ["--config", str(stack.config_path), "--json", "plan", "--base",
                                                 str(fleet.base_track("python"))])
    assert planned.exit_code == 0, planned.output
    assert {row["window"] for row in json.loads(planned.stdout)["services"]
            if row["service"].split("/")[3] == HELD} == {opening}

    time.sleep(max(0.0, opens.timestamp() - time.time()) + 0.5)
    assert {n for n in region if stack.update_counts()[n] != before[n]} == changed  # parked: nothing ran
    stack.publish("baseroll-requests", requests.to_message(action="sweep"), schema=requests.SCHEMA, action="sweep")
    record = scenario.wait_rollout(stack, rid, timeout=90)
    assert record["status"] == "finished" and record["resume_at"] == 0, record
    after = stack.update_counts()
    assert Counter(after[n] - before[n] for n in region) == Counter({1: len(region)})  # each once

    got = once_each(events, rid)
    assert [(kind, wave) for kind, wave, _ in got] == [
        ("started", None), ("resumed", 0), ("wave-released", 0), ("wave-settled", 0), ("finished", None)]
    details = {kind: detail for kind, _, detail in got}
    assert details["resumed"]["cause"] == "sweep"
    assert details["finished"]["done"] == len(eligible), json.dumps(got)
