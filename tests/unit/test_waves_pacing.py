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


def test_status_reads_the_ledger():
    r = "py-abc"
    done = svc(1, **{ledger.ROLLOUT_ID: r, ledger.STATE: ledger.ROLLED})
    back = svc(2, **{ledger.ROLLOUT_ID: r, ledger.STATE: ledger.ROLLED_BACK})
    pending = svc(3)
    moved = svc(4)  # no longer outdated, never touched by this rollout: someone else changed it
    failed_rev = ServiceView(**{**done.__dict__, "name": done.name + "x", "latest_ready_revision": "r1",
                                "terminal_state": "CONDITION_FAILED"})
    fleet = {s.name: s for s in (done, back, pending, moved, failed_rev)}
    st = waves.status(list(fleet) + ["gone"], fleet, r, still_outdated={pending.name}, deadline_passed=False)
    assert (st.done, st.failed, st.pending) == ([done.name], [back.name, failed_rev.name], [pending.name])
    assert set(st.skipped) == {moved.name, "gone"} and not st.settled
    late = waves.status([pending.name], fleet, r, still_outdated={pending.name}, deadline_passed=True)
    assert late.failed == [pending.name] and late.settled



def test_a_target_left_to_another_writer_is_a_failure_at_once():
    # The worker's ledger note (fleet.deploy): our target failed, someone else's change was kept. Not
    # pending until the settle deadline (tests/e2e/test_rollback_safety.py stalled on it).
    r = "py-abc"
    left = svc(1, **ledger.changed_by_someone_else(r, "sha256:ab", "our revision was replaced"))
    for outdated in (set(), {left.name}):
        st = waves.status([left.name], {left.name: left}, r, still_outdated=outdated, deadline_passed=False)
        assert st.failed == [left.name] and st.settled
    again = waves.recheck(waves.WaveStatus(pending=[left.name]), {left.name: left}, {left.name: ("x",)}, r,
                          deadline_passed=False)
    assert again is not None and again.failed == [left.name] and again.settled

def test_recheck_judges_only_the_pending_members_from_fresh_reads():
    r = "py-abc"
    first, second, waiting = svc(1), svc(2), svc(3)
    prev = waves.WaveStatus(done=["earlier"], pending=[first.name, second.name, waiting.name])
    planned = {s.name: s.images for s in (first, second, waiting)}
    rolled = ServiceView(**{**first.__dict__, "images": ("new",), "annotations": {ledger.ROLLOUT_ID: r,
                                                                                  ledger.STATE: ledger.ROLLED}})
    back = ServiceView(**{**second.__dict__, "annotations": {ledger.ROLLOUT_ID: r, ledger.STATE: ledger.ROLLED_BACK}})
    fresh = {first.name: rolled, second.name: back, waiting.name: waiting}
    st = waves.recheck(prev, fresh, planned, r, deadline_passed=False)
    assert st is not None
    assert (st.done, st.failed, st.pending) == (["earlier", first.name], [second.name], [waiting.name])
    late = waves.recheck(prev, fresh, planned, r, deadline_passed=True)
    assert late is not None and late.failed == [second.name, waiting.name] and late.settled


def test_recheck_defers_to_a_replan_when_a_member_changed_elsewhere_or_is_gone():
    r = "py-abc"
    a, b = svc(1), svc(2)
    prev = waves.WaveStatus(pending=[a.name, b.name])
    planned = {a.name: a.images, b.name: b.images}
    changed = ServiceView(**{**b.__dict__, "images": ("someone-elses",)})
    assert waves.recheck(prev, {a.name: a, b.name: changed}, planned, r, deadline_passed=False) is None
    assert waves.recheck(prev, {a.name: a}, planned, r, deadline_passed=False) is None


def test_schedule_paces_each_location_at_its_quota():
    names = [f"projects/p/locations/{r}/services/s{i}" for i in range(10) for r in ("a", "b")]
    timed = pacing.schedule(names, lambda n: n.split("/")[3], lambda loc: 60 if loc == "a" else 120,
                            start=100.0, burst=2)
    a = [t for t, n in timed if "/a/" in n]
    b = [t for t, n in timed if "/b/" in n]
    assert a[:2] == [100.0, 100.0] and a[2] == 101.0 and a[-1] == 108.0  # 1 per second after the burst
    assert b[-1] == 104.0  # twice the quota, half the time: locations proceed in parallel
    assert [t for t, _ in timed] == sorted(t for t, _ in timed)


def test_a_refused_service_fails_its_wave_at_once():
    s = svc(7)
    st = waves.status([s.name], {s.name: s}, "r", still_outdated={s.name}, deadline_passed=False,
                      refused={s.name: "rebase failed: not a prefix"})
    assert st.failed == [s.name] and st.settled
