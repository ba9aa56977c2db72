"""The stored wave plan's pure parts (`rollout.waveplan`): members from a plan, their JSON, chunking."""
from __future__ import annotations

import json

from baseroll.contracts import ledger
from baseroll.fleet.view import ServiceView
from baseroll.images.refs import parse
from baseroll.rollout import waveplan
from baseroll.rollout.plan import Change, Plan, RebaseJob, ServicePlan

APP = parse("registry.test/apps/shop@sha256:" + "a" * 64)
OLD_BASE = parse("registry.test/base/python@sha256:" + "b" * 64)
REBASED = parse("registry.test/apps/shop@sha256:" + "c" * 64)
NEW = parse("registry.test/base/python:3.12@sha256:" + "d" * 64)


def view(name: str, **annotations: str) -> ServiceView:
    return ServiceView(name=f"projects/p-aaaaa/locations/r/services/{name}", images=(str(APP), "sidecar"),
                       annotations=annotations, generation=2, observed_generation=2, latest_created_revision="r2",
                       latest_ready_revision="r2", terminal_state="CONDITION_SUCCEEDED")


def test_members_carry_each_services_task_refusal_or_state_when_planned() -> None:
    job = RebaseJob(APP, OLD_BASE)
    other_job = RebaseJob(parse("registry.test/apps/cart@sha256:" + "e" * 64), OLD_BASE)
    rolls = ServicePlan(view("a"), "roll", "outdated", {0: Change("rebase", job=job)})
    refused = ServicePlan(view("b"), "roll", "outdated", {0: Change("rebase", job=other_job)})
    touched = ServicePlan(view("c", **{ledger.ROLLOUT_ID: "r-1", ledger.STATE: ledger.ROLLED}), "skip", "current")
    uri = ServicePlan(view("d"), "roll", "outdated", {1: Change("base-uri", target=NEW)})
    plan = Plan(NEW, NEW, (rolls, refused, touched, uri), (job, other_job))
    wave = [sp.service.name for sp in plan.services]
    out = waveplan.members_of(plan, wave, "r-1", {job: REBASED, other_job: "config drift: Env differs"})
    a, b, c, d = out
    assert (a.targets, a.apps, a.expected, a.sendable) == ({"0": str(REBASED)}, {"0": str(APP)}, (str(APP), "sidecar"), True)
    assert b.refused and "config drift" in b.refused and not b.sendable
    assert (c.verdict, c.sendable) == ("done", False)  # rolled by this rollout before the plan, ready
    assert (d.base_uris, d.targets, d.sendable) == ({"1": str(NEW)}, {}, True)
    assert [waveplan.Member.from_json(json.loads(json.dumps(m.to_json()))) for m in out] == out
    assert waveplan.jobs_of(plan, [wave[0], wave[2]]) == [job]


def test_chunks_stay_under_their_byte_bound_and_keep_order() -> None:
    members = [waveplan.Member(f"projects/p/locations/r/services/s{i:04d}", ("x" * 200,), {"0": "y" * 100})
               for i in range(1000)]
    chunks = list(waveplan.chunked(members, max_bytes=20_000))
    assert len(chunks) > 10
    assert all(sum(len(json.dumps(e, separators=(",", ":"))) for e in c) <= 20_000 for c in chunks)
    assert [e["service"] for c in chunks for e in c] == [m.service for m in members]
    # An entry larger than the bound still goes, alone in its chunk.
    big = waveplan.Member("projects/p/locations/r/services/big", ("z" * 50_000,))
    assert [len(c) for c in waveplan.chunked([members[0], big, members[1]], max_bytes=20_000)] == [1, 1, 1]


def test_a_header_round_trips() -> None:
    h = waveplan.Header(3, 1700000000.5, (20, 18, 162))
    assert waveplan.Header.from_json(json.loads(json.dumps(h.to_json()))) == h
