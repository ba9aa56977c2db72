"""The rollout store against the real Firestore emulator: its compare-and-swap, and the races of issue #12.

Each race runs the real planner and lease code on the fakes (fleet, registry, bus) with the record
store on the emulator, and opens a window between one party's read of the record and its write,
in which another party writes:
- two concurrent `start`s of the same rollout (one held between its read and its write until the
  other start is done, far past the old claim's 0.3 s settle wait), and two concurrent claims of
  its first step (likewise);
- an operator's abort landing between a step's read and its write (finishing, and renewing);
- a renewal racing a takeover of a step whose holder went quiet.
Each must end with exactly one holder and the abort kept.

The same tests also run against `LastWriterWins`, kept here only as the baseline: the old store's
semantics (read, decide, write the whole record unconditionally). They must fail there (strict
xfail), which shows the tests can catch the races.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from typing import Callable, Iterator

import pytest
from baseroll.clock import Clock, FakeClock
from baseroll.contracts import topics
from baseroll.contracts.messages import Step
from baseroll.contracts.records import RolloutRecord
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.rollout import fakes, lease, planner, waveplan
from baseroll.rollout.deps import Deps
from baseroll.rollout.firestore_store import RECORDS, FirestoreStore
from baseroll.rollout.store import Mutation, RecordStore, from_document, to_document
from google.cloud import firestore

from infra.local.firestore_emulator import PROJECT, FirestoreEmulator

pytestmark = pytest.mark.integration

APP = f"{fakes.REGISTRY}/apps/shop:prod"
WAIT_S = 20.0  # a held party waits at most this long for the other (a hang is a failure, not a stall)


@pytest.fixture(scope="module")
def emulator() -> Iterator[FirestoreEmulator]:
    """The real emulator; no skip when it is missing: `FirestoreEmulator.start` says what to install."""
    with FirestoreEmulator() as fs, pytest.MonkeyPatch.context() as mp:
        for name, value in fs.env().items():
            mp.setenv(name, value)
        yield fs


@pytest.fixture
def client(emulator: FirestoreEmulator) -> firestore.Client:
    return firestore.Client(project=PROJECT)


# ------------------------------------------------------------------------------------------ windows


class Window:
    """A point between a read and its write where another party acts: `hold()` runs `action` the
    first time it is reached, and does nothing after (so a retried write is not held again)."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action, self.used = action, False

    def hold(self) -> None:
        if not self.used:
            self.used = True
            self.action()


class Handoff:
    """Two threads: the held one signals it has read and waits until the other has finished."""

    def __init__(self) -> None:
        self.read, self.done = threading.Event(), threading.Event()

    def window(self) -> Window:
        return Window(lambda: (self.read.set(), self.done.wait(WAIT_S)))

    def other(self, act: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            assert self.read.wait(WAIT_S), "the held party never read"
            try:
                return act()
            finally:
                self.done.set()
        return run


class Held:
    """The compare-and-swap store with a window after each read (inside the mutation) and before a create."""

    def __init__(self, inner: FirestoreStore, window: Window) -> None:
        self.inner, self.window = inner, window

    def get(self, rollout_id: str) -> RolloutRecord | None:
        return self.inner.get(rollout_id)

    def create(self, record: RolloutRecord) -> bool:
        self.window.hold()
        return self.inner.create(record)

    def update(self, rollout_id: str, mutate: Mutation) -> RolloutRecord | None:
        def held(rec: RolloutRecord) -> RolloutRecord | None:
            self.window.hold()
            return mutate(rec)
        return self.inner.update(rollout_id, held)

    def __getattr__(self, name: str) -> object:  # the wave plan and results: not part of these races
        return getattr(self.inner, name)


class LastWriterWins:
    """The baseline only: the old store's semantics on the same emulator. Reads, lets the caller
    decide, then writes the whole record whatever happened meanwhile (a window sits in between)."""

    def __init__(self, client: firestore.Client, prefix: str, clock: Clock, window: Window | None) -> None:
        self.docs, self.clock, self.window = client.collection(prefix + RECORDS), clock, window
        self.waves = FirestoreStore(client, clock, prefix=prefix)  # plans and results as the real store keeps them

    def __getattr__(self, name: str) -> object:
        return getattr(self.waves, name)

    def get(self, rollout_id: str) -> RolloutRecord | None:
        snap = self.docs.document(rollout_id).get()
        return from_document(snap.to_dict() or {}) if snap.exists else None

    def create(self, record: RolloutRecord) -> bool:
        if self.get(record.rollout_id) is not None:
            return False
        self._put(record)
        return True

    def update(self, rollout_id: str, mutate: Mutation) -> RolloutRecord | None:
        current = self.get(rollout_id)
        new = mutate(current) if current is not None else None
        if new is not None:
            self._put(new)
        return new

    def _put(self, record: RolloutRecord) -> None:
        if self.window is not None:
            self.window.hold()
        record.updated = self.clock.now()
        self.docs.document(record.rollout_id).set(to_document(record))


CAS, LWW = "compare-and-swap", "last-writer-wins"


@pytest.fixture(params=[CAS, pytest.param(LWW, marks=pytest.mark.xfail(
    strict=True, reason="the baseline: a last-writer-wins store loses these races (issue #12)"))])
def stores(request: pytest.FixtureRequest, client: firestore.Client) -> Callable[..., RecordStore]:
    """`stores(clock, window=None)`: a store on a fresh collection, shared by every store this test makes."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"

    def make(clock: Clock, window: Window | None = None) -> RecordStore:
        if request.param == LWW:
            return LastWriterWins(client, prefix, clock, window)
        inner = FirestoreStore(client, clock, prefix=prefix)
        return Held(inner, window) if window is not None else inner
    return make


# ------------------------------------------------------------------------------------------ the world


@dataclasses.dataclass
class Race:
    w: fakes.FakeWorld
    stores: Callable[..., RecordStore]
    request: RollRequest

    def party(self, window: Window | None = None) -> Deps:
        """One function instance: the shared fakes, and its own client of the shared store."""
        return dataclasses.replace(self.w.deps, records=self.stores(self.w.clock, window))

    def record(self, rollout_id: str) -> RolloutRecord:
        rec = self.party().records.get(rollout_id)
        assert rec is not None
        return rec

    def steps(self) -> list[Step]:
        return self.w.bus.steps(topics.RESULTS)


def race(stores: Callable[..., RecordStore]) -> Race:
    """An app rollout of four services waiting to be started (or already started: `started`)."""
    w = fakes.FakeWorld(fakes.config(waves=(0.5, 1.0)))
    old = w.registry.push(APP, [fakes.layer("app-v1")])
    w.registry.push(APP, [fakes.layer("app-v2")])
    for i in range(4):
        w.fleet.add(ServiceView(f"projects/tenants-aaaaa/locations/us-east1/services/shop{i}",
                                (str(old.pinned()),), labels={"baseroll-app-tag": "prod"}))
    return Race(w, stores, RollRequest("app", refs.parse(APP), None, "request", "e-1"))


def started(stores: Callable[..., RecordStore]) -> tuple[Race, Step]:
    r = race(stores)
    assert planner.start(r.party(), r.request)["status"] == "running"
    (first,) = r.steps()
    return r, first


def run_both(held: Callable[[], object], other: Callable[[], object]) -> list[object]:
    """Run both on threads; each outcome is its return value or the exception it raised."""
    out: list[object] = [None, None]

    def call(i: int, fn: Callable[[], object]) -> None:
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate((held, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT_S)
    return out


# ------------------------------------------------------------------------------------------ the races


def test_two_concurrent_starts_make_one_rollout_and_one_first_step(stores) -> None:
    r = race(stores)
    # Start A reads "no record" and is held before it writes, past any settle wait, until B is done.
    h = Handoff()
    a, b = run_both(lambda: planner.start(r.party(h.window()), r.request),
                    h.other(lambda: planner.start(r.party(), r.request)))
    assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
    steps = r.steps()
    assert len(steps) == 1, f"one first step, not {len(steps)}"
    assert r.record(steps[0].rollout.rollout_id).owner == "", "started, held by no step yet"


def test_two_concurrent_claims_of_a_step_leave_one_holder(stores) -> None:
    r, first = started(stores)
    # Two deliveries of the step (a duplicate, as Pub/Sub may deliver) claim it concurrently,
    # one held between its read and its write until the other has claimed.
    h = Handoff()
    a, b = run_both(lambda: lease.claim(r.party(h.window()), first, "m-a"),
                    h.other(lambda: lease.claim(r.party(), first, "m-b")))
    holders = [x for x in (a, b) if isinstance(x, RolloutRecord)]
    assert len(holders) == 1, f"exactly one holder, got {a!r} and {b!r}"
    assert isinstance(a, lease.Busy) and holders[0].owner.startswith("m-b:")
    assert r.record(holders[0].rollout_id).owner == holders[0].owner


def test_an_abort_between_a_steps_read_and_its_write_is_kept(stores) -> None:
    r, first = started(stores)
    rec = lease.claim(r.party(), first, "m-1")
    assert rec is not None
    rid = rec.rollout_id
    abort = Window(lambda: planner.control(r.party(), "abort", rid))
    # The step finishes its wave and hands over to the next one; the abort lands in between.
    nxt = Step(first.rollout, 1, 0, None, first.seq + 1)
    lease.finish(r.party(abort), rec, first, nxt, wave=1, waves=[{"wave": 0, "size": 2}])
    assert abort.used
    final = r.record(rid)
    assert (final.status, final.reason) == ("aborted", "aborted by request")
    assert r.steps() == [first], "no hand-over after an abort"


def test_an_abort_between_a_renewals_read_and_its_write_stops_the_step(stores) -> None:
    r, first = started(stores)
    rec = lease.claim(r.party(), first, "m-1")
    assert rec is not None
    abort = Window(lambda: planner.control(r.party(), "abort", rec.rollout_id))
    hold = lease.Lease(r.party(abort), rec)
    r.w.clock.advance(lease.HEARTBEAT_S)
    with pytest.raises(lease.Stopped):
        hold.renew()
    assert r.record(rec.rollout_id).status == "aborted"


def test_a_renewal_racing_a_takeover_leaves_one_holder(stores) -> None:
    r, first = started(stores)
    quiet = lease.claim(r.party(), first, "m-1")  # a step that then went quiet (a stalled invocation)
    assert quiet is not None
    # Its redelivery takes the step over between the stalled step's renewal read and its write.
    took: list[RolloutRecord | None] = []
    takeover = Window(lambda: took.append(lease.claim(r.party(), first, "m-2")))
    hold = lease.Lease(r.party(takeover), quiet)
    r.w.clock.advance(lease.LEASE_S + 1)
    with pytest.raises(lease.Busy):
        hold.renew()
    (new,) = took
    assert new is not None and new.owner.startswith("m-2:")
    assert r.record(quiet.rollout_id).owner == new.owner, "the record names the new holder, and only it"
    # The new holder finishes; the old one can no longer write anything.
    with pytest.raises(lease.Busy):
        lease.finish(r.party(), quiet, first, None, status="finished")
    lease.finish(r.party(), new, first, None, status="finished")
    assert r.record(new.rollout_id).status == "finished"


def test_concurrent_updates_lose_nothing(stores) -> None:
    """Many writers, each adding one to a counter: every increment survives."""
    r, first = started(stores)
    rid = first.rollout.rollout_id
    writers, each = 4, 5

    def bump(rec: RolloutRecord) -> RolloutRecord:
        rec.wave += 1
        return rec

    def writer() -> None:
        store = r.party().records
        for _ in range(each):
            store.update(rid, bump)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert r.record(rid).wave == writers * each


# ------------------------------------------------------------------------------------------ the port


def test_create_update_and_lineage_on_the_emulator(client: firestore.Client) -> None:
    clock = FakeClock()
    store = FirestoreStore(client, clock, prefix=f"t{uuid.uuid4().hex[:8]}-")
    rec = RolloutRecord("python-3-12-aaaaaaaaaaaa", "python-3.12", "sha256:" + "a" * 64,
                        scope={"labels": {"team.x/y": "a"}}, waves=[{"wave": 0, "size": 1}])
    assert store.create(rec) and not store.create(dataclasses.replace(rec, status="halted"))
    assert store.get(rec.rollout_id) == rec
    assert store.update("nope", lambda r: r) is None
    assert store.update(rec.rollout_id, lambda r: None) is None
    clock.advance(5)
    written = store.update(rec.rollout_id, lambda r: dataclasses.replace(r, scope={}, waves=[]))
    assert written is not None and written.updated == clock.now()
    assert store.get(rec.rollout_id) == written  # maps and lists replaced, not merged
    for track in ("python:3.12", "a/b", "..", "__x__"):
        for digest in ("sha256:1", "sha256:2", "sha256:1"):
            store.record_version(track, digest)
        assert store.versions(track) == ["sha256:1", "sha256:2"]
    assert store.versions("never-seen") == []


def test_wave_plans_and_task_results_on_the_emulator(client: firestore.Client) -> None:
    clock = FakeClock()
    store = FirestoreStore(client, clock, prefix=f"t{uuid.uuid4().hex[:8]}-")
    rid = "python-3-12-bbbbbbbbbbbb"
    header = {"seq": 3, "planned_at": 1000.0, "sizes": [2, 5000]}
    store.put_plan(rid, 3, header)
    assert store.plan(rid, 3) == header and store.plan(rid, 4) is None
    # A wave of 5,000 members in chunks of a quarter MiB: each one document, read back whole and in order.
    members = [{"service": f"projects/p/locations/r/services/s{i:05d}", "expected": ["x" * 120],
                "targets": {"0": "registry.test/apps/a@sha256:" + "c" * 64}} for i in range(5000)]
    chunks = list(waveplan.chunked([waveplan.Member.from_json(m) for m in members]))
    assert len(chunks) > 3  # each at most CHUNK_BYTES of entries (plus the list's commas and brackets)
    assert all(len(json.dumps(c, separators=(",", ":"))) <= waveplan.CHUNK_BYTES + len(c) + 1 for c in chunks)
    store.put_wave(rid, 3, 1, chunks)
    assert store.wave(rid, 3, 1) == members
    assert store.wave(rid, 3, 0) is None  # never stored
    store.put_wave(rid, 3, 0, [[members[0]], [members[1]]])
    client.collection(f"{store._records.id}").document(rid).collection("plans").document("00000003") \
        .collection("waves").document("0000-00001").delete()
    assert store.wave(rid, 3, 0) is None  # a chunk missing: not all there
    # Results: one document per rollout × wave × service, a redelivery overwrites it; read by time.
    name = members[0]["service"]
    store.record_result(rid, 1, name, {"service": name, "wave": 1, "outcome": "failed", "recorded": 1001.0})
    store.record_result(rid, 1, name, {"service": name, "wave": 1, "outcome": "failed", "recorded": 1002.0})
    store.record_result(rid, 1, "b", {"service": "b", "wave": 1, "outcome": "updated", "recorded": 1005.0})
    store.record_result(rid, 2, "c", {"service": "c", "wave": 2, "outcome": "updated", "recorded": 1005.0})
    assert sorted(d["service"] for d in store.results(rid, 1, 0.0)) == ["b", name]
    assert [d["service"] for d in store.results(rid, 1, 1003.0)] == ["b"]
    assert store.results("other", 1, 0.0) == []


def test_parked_rollouts_by_when_their_window_opens_on_the_emulator(client: firestore.Client) -> None:
    store = FirestoreStore(client, FakeClock(), prefix=f"t{uuid.uuid4().hex[:8]}-")
    for rid, resume_at in (("app-a-aaaaaaaaaaaa", 0.0), ("app-b-bbbbbbbbbbbb", 1000.0), ("app-c-cccccccccccc", 2000.0)):
        assert store.create(RolloutRecord(rid, "t", "sha256:" + "a" * 64, resume_at=resume_at))
    assert store.parked(999.0) == []
    assert store.parked(1000.0) == ["app-b-bbbbbbbbbbbb"]  # not the one never parked (0), nor the later one
    assert sorted(store.parked(5000.0)) == ["app-b-bbbbbbbbbbbb", "app-c-cccccccccccc"]
    assert len(store.parked(5000.0, limit=1)) == 1
