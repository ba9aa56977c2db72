"""`baseroll status --watch`: a rollout's waves (record + live fleet), per-location counts, and the
frame as a pipe receives it."""
from __future__ import annotations

import io
from collections import Counter

from baseroll.contracts import ledger
from baseroll.contracts.records import RolloutRecord
from baseroll.fleet.view import ServiceView
from baseroll.rollout.status import (
    TrackStatus,
    WaveProgress,
    by_location,
    rollout_ids_to_watch,
    rollout_progress,
    summarize,
)
from baseroll.rollout.status_view import watch_view
from rich.console import Console

RID = "python-0123456789ab"
CURRENT, OLD = "sha256:" + "c" * 64, "sha256:" + "a" * 64


def svc(name: str, state: str = "", *, ready: bool = True, rollout: str = RID) -> ServiceView:
    annotations = {ledger.ROLLOUT_ID: rollout, ledger.STATE: state} if state else {}
    return ServiceView(f"projects/tenants-a/locations/us-central1/services/{name}", ("img",),
                       annotations=annotations, generation=2, observed_generation=2 if ready else 1,
                       latest_created_revision="r2", latest_ready_revision="r2" if ready else "r1")


ASSIGNED = [["a", "b"], ["c", "d", "e", "f"], ["g"]]
FLEET = [svc("c", ledger.ROLLED), svc("d", ledger.ROLLED_BACK), svc("e", ledger.ROLLED, ready=False),
         svc("f", ledger.ROLLED, rollout="python-older")]


def full(names: list[list[str]]) -> list[list[str]]:
    return [[f"projects/tenants-a/locations/us-central1/services/{n}" for n in wave] for wave in names]


def test_running_rollout_settled_live_and_waiting_waves():
    record = RolloutRecord(RID, "python", CURRENT, wave=1,
                           waves=[{"wave": 0, "size": 2, "done": 2, "failed": 0, "skipped": 0}])
    p = rollout_progress(record, full(ASSIGNED), FLEET)
    assert p.waves == (WaveProgress(0, 2, 2, 0, 0, "settled"),
                       # c is rolled and ready; d rolled back; e still reconciling; f carries another rollout's id
                       WaveProgress(1, 4, 1, 1, 0, "rolling"),
                       WaveProgress(2, 1, state="waiting"))
    assert p.headline == f"{RID} running wave 2 of 3" and not p.terminal


def test_halted_rollout_keeps_its_record_counts_and_marks_later_waves_not_released():
    record = RolloutRecord(RID, "python", CURRENT, status="halted", wave=1, reason="wave 1: 2 of 4 failed",
                           waves=[{"wave": 0, "size": 2, "done": 2}, {"wave": 1, "size": 4, "done": 2, "failed": 2}])
    p = rollout_progress(record, full(ASSIGNED), FLEET)
    assert [w.state for w in p.waves] == ["settled", "settled", "not-released"]
    assert p.waves[1] == WaveProgress(1, 4, 2, 2, 0, "settled")
    assert p.terminal and p.headline == f"{RID} halted wave 2 of 3: wave 1: 2 of 4 failed"


def test_a_finished_rollout_whose_members_regrouped_still_shows_every_settled_wave():
    record = RolloutRecord(RID, "python", CURRENT, status="finished", wave=2,
                           waves=[{"wave": i, "size": 1, "done": 1} for i in range(3)])
    p = rollout_progress(record, [["a"]], [])
    assert len(p.waves) == 3 and all(w.state == "settled" and w.done == 1 for w in p.waves)
    assert p.headline.endswith("finished wave 3 of 3")


def row(project: str, region: str, digest: str, state: str = "on-base", rollout: str | None = None) -> dict:
    return {"service": f"projects/{project}/locations/{region}/services/s", "kind": "service", "project": project,
            "region": region, "base_digest": digest, "state": state, "rollout_id": rollout}


def track() -> TrackStatus:
    rows = [row("tenants-b", "us-central1", CURRENT), row("tenants-a", "europe-west1", OLD, "opted-out"),
            row("tenants-a", "europe-west1", CURRENT, "in-flight", RID),
            row("tenants-a", "europe-west1", OLD, "failed", "python-scoped-1234abcd")]
    return TrackStatus("python", CURRENT, Counter(r["base_digest"] for r in rows), 1, 1, 1, rows)


def test_by_location_counts_digest_and_states():
    locs = [(l.project, l.region, l.current, l.outdated, l.in_flight, l.failed, l.opted_out) for l in by_location(track())]
    assert locs == [("tenants-a", "europe-west1", 1, 2, 1, 1, 1), ("tenants-b", "us-central1", 1, 0, 0, 0, 0)]


def test_rollouts_to_watch_the_current_digests_id_first_then_those_the_fleet_carries():
    ids = rollout_ids_to_watch("python", CURRENT, track())
    assert ids[0] == ledger.rollout_id("python", CURRENT) and ids[1:] == sorted({RID, "python-scoped-1234abcd"})


def test_a_frame_in_a_pipe_is_plain_text():
    record = RolloutRecord(RID, "python", CURRENT, wave=1, waves=[{"wave": 0, "size": 2, "done": 2}])
    out = io.StringIO()
    Console(file=out, width=120).print(watch_view([track()], [rollout_progress(record, full(ASSIGNED), FLEET)], "21:00:00"))
    text = out.getvalue()
    assert "\x1b" not in text, "no escape codes outside a terminal"
    lines = [line.split() for line in text.splitlines()]
    assert ["baseroll", "status", "at", "21:00:00"] in lines and [RID, "running", "wave", "2", "of", "3"] in lines
    assert [c for c in lines if c[:1] == ["2"]][0][:5] == ["2", "4", "1", "1", "0"]  # wave 2: size, done, failed, skipped
    assert ["tenants-a", "europe-west1", "1", "2", "1", "1", "1"] in lines
    empty = io.StringIO()
    Console(file=empty, width=120).print(watch_view([], [], "21:00:01"))
    assert "no rollout of a current digest" in empty.getvalue()


def test_summarize_reads_kind_location_state_and_reason_from_the_views():
    from baseroll.config import Labels
    from baseroll.images.match import BaseVersion, ImageFacts
    from baseroll.images.refs import ImageRef

    def digest(c: str) -> str:
        return "sha256:" + c * 64

    v1, v2 = BaseVersion(digest("1"), (digest("a"),)), BaseVersion(digest("2"), (digest("c"),))
    track = ImageRef("registry.test", "bases/python", "3.12")
    facts = {f"app-{n}": ImageFacts(ImageRef("registry.test", f"apps/{n}", None, digest(n)), (layer, digest("f")))
             for n, layer in (("1", digest("a")), ("2", digest("c")), ("3", digest("e")))}

    def view(name: str, kind: str, image: str, **annotations: str) -> ServiceView:
        plural = {"service": "services", "job": "jobs", "worker-pool": "workerPools"}[kind]
        return ServiceView(f"projects/tenants-b/locations/europe-west1/{plural}/{name}", (image,), kind=kind,
                           annotations=annotations, latest_created_revision="r1", latest_ready_revision="r1")

    views = [view("api", "service", "app-2"), view("nightly", "job", "app-1"),
             view("queue", "worker-pool", "app-1", **{ledger.STATE: ledger.ROLLED_BACK, ledger.REASON: "OOM",
                                                      ledger.ROLLOUT_ID: RID}),
             view("elsewhere", "service", "app-3")]  # on no version of the track: not shown
    st = summarize("python", track, v2, (v1, v2), views, facts, Labels())
    rows = {r["service"].rsplit("/", 1)[-1]: r for r in st.services}
    assert set(rows) == {"api", "nightly", "queue"}
    assert [rows[n]["kind"] for n in ("api", "nightly", "queue")] == ["service", "job", "worker-pool"]
    assert {(r["project"], r["region"]) for r in rows.values()} == {("tenants-b", "europe-west1")}
    assert rows["queue"]["state"] == "failed" and rows["queue"]["reason"] == "OOM" and rows["queue"]["rollout_id"] == RID
    assert (st.on_current, st.outdated, st.failed) == (1, 2, 1) and st.digests() == [v2.digest, v1.digest]
