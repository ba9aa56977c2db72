from baseroll.contracts import ledger
from baseroll.fleet.view import ServiceView
from baseroll.rollout import pacing, waves


def svc(i: int, *, canary: bool = False, **ann) -> ServiceView:
    labels = {"baseroll-cohort": "canary"} if canary else {}
    return ServiceView(name=f"projects/p-aaaaa/locations/r-east{i % 3}/services/s{i}", images=("x",),
                       labels=labels, annotations=ann, generation=2, observed_generation=2,
                       latest_created_revision="r2", latest_ready_revision="r2", terminal_state="CONDITION_SUCCEEDED")


def test_canaries_first_then_cumulative_fractions():
    members = [svc(i, canary=i < 3) for i in range(103)]
    ws = waves.assign(members, (0.01, 0.1, 0.5, 1.0), cohort_label="baseroll-cohort")
    assert set(ws[0]) == {m.name for m in members[:3]}
    assert [len(w) for w in ws] == [3, 1, 9, 40, 50]
    assert sorted(n for w in ws for n in w) == sorted(m.name for m in members)


def test_wave_membership_is_stable_under_replanning():
    members = [svc(i) for i in range(50)]
    a = waves.assign(members, (0.1, 1.0), cohort_label="c")
    b = waves.assign(list(reversed(members)), (0.1, 1.0), cohort_label="c")
    assert a == b


def test_every_wave_takes_the_same_share_of_every_location():
    # Uneven locations (500 / 300 / 120 / 7 services): each wave's share of a location stays within one
    # service of the wave's share of the fleet, so no region holds a wave's barrier up for the others.
    sizes = {"us-east1": 500, "europe-west1": 300, "asia-east1": 120, "us-west1": 7}
    members = [ServiceView(name=f"projects/p-aaaaa/locations/{r}/services/s{i}", images=("x",))
               for r, n in sizes.items() for i in range(n)]
    ws = waves.assign(members, (0.01, 0.1, 0.5, 1.0), cohort_label="c")
    total = len(members)
    assert [len(w) for w in ws] == [10, 83, 371, 463]  # the global cuts: ceil(f × 927)
    so_far = {region: 0 for region in sizes}
    done = 0
    for w in ws:
        done += len(w)
        for name in w:
            so_far[name.split("/")[3]] += 1
        for region, n in sizes.items():
            assert abs(so_far[region] - n * done / total) <= 1, (region, so_far[region], n * done / total)


def test_tiny_fleets_get_no_empty_waves():
    assert waves.assign([svc(1)], (0.01, 0.1, 1.0), cohort_label="c") == [[svc(1).name]]
    assert waves.assign([], (0.5, 1.0), cohort_label="c") == []


def test_judge_reads_the_ledger_and_health_of_one_member():
    r = "py-abc"
    done = svc(1, **{ledger.ROLLOUT_ID: r, ledger.STATE: ledger.ROLLED})
    back = svc(2, **{ledger.ROLLOUT_ID: r, ledger.STATE: ledger.ROLLED_BACK})
    waiting = svc(3)  # untouched, as planned: its task has not run yet
    moved = ServiceView(**{**svc(4).__dict__, "images": ("someone-elses",)})  # changed since planning
    failed_rev = ServiceView(**{**done.__dict__, "latest_ready_revision": "r1", "terminal_state": "CONDITION_FAILED"})
    reconciling = ServiceView(**{**done.__dict__, "generation": 3})
    judged = {name: waves.judge(s, ("x",), r, deadline_passed=False) for name, s in
              [("done", done), ("back", back), ("waiting", waiting), ("moved", moved), ("failed_rev", failed_rev),
               ("reconciling", reconciling), ("gone", None)]}
    assert judged == {"done": "done", "back": "failed", "waiting": "pending", "moved": "skipped",
                      "failed_rev": "failed", "reconciling": "pending", "gone": "skipped"}
    # Past the wave's settle deadline nothing is pending: not rolled in time is a failure.
    assert waves.judge(waiting, ("x",), r, deadline_passed=True) == "failed"
    assert waves.judge(reconciling, ("x",), r, deadline_passed=True) == "failed"


def test_a_target_left_to_another_writer_is_a_failure_at_once():
    # The worker's ledger note (fleet.deploy): our target failed, someone else's change was kept. Not
    # pending until the settle deadline (tests/e2e/test_rollback_safety.py stalled on it).
    r = "py-abc"
    left = svc(1, **ledger.changed_by_someone_else(r, "sha256:ab", "our revision was replaced"))
    assert waves.judge(left, ("x",), r, deadline_passed=False) == "failed"


def test_results_tell_a_members_state_except_supersession_and_cancellation():
    states = {o: waves.result_state(o) for o in ("updated", "already-current", "rolled-back", "rollback-failed",
                                                  "failed", "skipped", "superseded", "cancelled", "whatever")}
    assert states == {"updated": "done", "already-current": "done", "rolled-back": "failed",
                      "rollback-failed": "failed", "failed": "failed", "skipped": "skipped", "superseded": None,
                      "cancelled": None, "whatever": None}
    # A target already rolled back here is this rollout's failure, as the service's ledger says.
    assert waves.result_state("skipped", ledger.ALREADY_ROLLED_BACK.format(reason="not ready")) == "failed"


def test_settle_counts_what_is_known_and_fails_the_rest_only_at_the_deadline():
    known = {"a": "done", "b": "failed", "c": "skipped", "d": "pending"}
    st = waves.settle(["a", "b", "c", "d", "e"], known, deadline_passed=False)
    assert (st.done, st.failed, st.skipped, st.pending) == (["a"], ["b"], ["c"], ["d", "e"]) and not st.settled
    late = waves.settle(["a", "b", "c", "d", "e"], known, deadline_passed=True)
    assert late.failed == ["b", "d", "e"] and late.settled


def test_schedule_paces_each_location_at_its_quota():
    names = [f"projects/p/locations/{r}/services/s{i}" for i in range(10) for r in ("a", "b")]
    timed = pacing.schedule(names, lambda n: n.split("/")[3], lambda loc: 60 if loc == "a" else 120,
                            start=100.0, burst=2)
    a = [t for t, n in timed if "/a/" in n]
    b = [t for t, n in timed if "/b/" in n]
    assert a[:2] == [100.0, 100.0] and a[2] == 101.0 and a[-1] == 108.0  # 1 per second after the burst
    assert b[-1] == 104.0  # twice the quota, half the time: locations proceed in parallel
    assert [t for t, _ in timed] == sorted(t for t, _ in timed)
