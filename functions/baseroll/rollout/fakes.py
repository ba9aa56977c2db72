"""In-memory stand-ins for the rollout core's ports, for fast unit tests of the planner and the step.

- `FakeBus`: keeps what was published per topic, decodes baseroll's own messages back with
  `contracts.messages` (so a test also proves they parse), and delivers queued messages to
  subscribers only when the test says so (e.g. from a `FakeClock.on_sleep` hook: "while the step waits").
- `MemoryRecordStore`: a dict of records with compare-and-swap writes, copied on every read and
  write as a real store would serialise them, stamped with the injected clock, every write kept in
  order; a hook lets a test land a concurrent write between an update's read and its write.
- `FakeRegistry`: the registry verbs the planning path calls (tags, manifests, config blobs), with
  single-platform OCI image manifests made from named layers.
- `FakeRebase`: the rebase port; rebased images are pushed to the `FakeRegistry` so a re-plan reads them.
- `FakeWorld`: all of them with a `FakeFleet` (`fleet.fake`) and a `FakeClock`, and the `Deps` over them.

The integration tier runs the same core against the real registry server and the Pub/Sub and
Cloud Run stand-ins.
"""
from __future__ import annotations

import copy
import hashlib
import threading
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from baseroll.clock import Clock, FakeClock
from baseroll.config import BaseTrack, Config, FailureBudget, RolloutSettings
from baseroll.contracts import messages
from baseroll.contracts.messages import Result, Step, Task
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.contracts.records import RolloutRecord
from baseroll.fleet.fake import FakeFleet
from baseroll.images import oci, refs
from baseroll.images.oci import ANNOTATION_BASE_DIGEST as ANN_BASE_DIGEST
from baseroll.images.oci import ANNOTATION_BASE_NAME as ANN_BASE_NAME
from baseroll.images.rebase import RebaseError
from baseroll.images.refs import ImageRef
from baseroll.images.registry import Manifest, RegistryError
from baseroll.rollout.deps import Deps
from baseroll.rollout.plan import RebaseJob
from baseroll.rollout.store import Mutation

REGISTRY = "registry.test"  # the fake world's registry host (allow-listed by `config`)

Message = Task | Result | Step


class FakeBus:
    """The bus port in memory: every publish is kept per topic and queued for `deliver`."""

    def __init__(self) -> None:
        self.published: dict[str, list[PubSubMessage]] = defaultdict(list)
        self._queued: dict[str, deque[PubSubMessage]] = defaultdict(deque)
        self._subscribers: dict[str, list[Callable[[Message], object]]] = defaultdict(list)
        self._ids = 0

    def publish(self, topic: str, items: Iterable[tuple[bytes, dict[str, str]]]) -> list[str]:
        ids = []
        for data, attributes in items:
            self._ids += 1
            msg = PubSubMessage(str(self._ids), data, dict(attributes), None, None)
            self.published[topic].append(msg)
            self._queued[topic].append(msg)
            ids.append(msg.message_id)
        return ids

    def messages(self, topic: str) -> list[Message]:
        """Everything published to `topic`, decoded as baseroll's own messages (raises if one does not parse)."""
        return [messages.decode(m) for m in self.published[topic]]

    def steps(self, topic: str) -> list[Step]:
        return [m for m in self.messages(topic) if isinstance(m, Step)]

    def tasks(self, topic: str) -> list[Task]:
        return [m for m in self.messages(topic) if isinstance(m, Task)]

    def subscribe(self, topic: str, handler: Callable[[Message], object]) -> None:
        self._subscribers[topic].append(handler)

    def deliver(self, topic: str) -> int:
        """Hand every queued message of `topic` to its subscribers (in order); how many were delivered."""
        count = 0
        while self._queued[topic]:
            msg = messages.decode(self._queued[topic].popleft())
            for handler in self._subscribers[topic]:
                handler(msg)
            count += 1
        return count


class MemoryRecordStore:
    """The record store port in memory, with the same compare-and-swap as the Firestore adapter.

    Every record carries a version bumped by each write; `update` writes only over the version it
    read, else reads again and calls its mutation again. `between_read_and_write(rollout_id)`, when
    set, runs after a mutation decided and before its write is checked: a test's concurrent writer.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[str, RolloutRecord] = {}
        self.puts: list[RolloutRecord] = []  # a copy of every write through the port, in order
        self.lost_races = 0  # conditional writes refused because someone wrote first
        self.between_read_and_write: Callable[[str], object] | None = None
        self._versions: Counter[str] = Counter()
        self._lock = threading.RLock()
        self.docs: dict[tuple, dict[str, Any]] = {}  # wave plans and task results (WaveStore)
        self.wave_reads = 0
        self.result_queries = 0

    def get(self, rollout_id: str) -> RolloutRecord | None:
        with self._lock:
            rec = self.records.get(rollout_id)
            return copy.deepcopy(rec) if rec is not None else None

    def create(self, record: RolloutRecord) -> bool:
        with self._lock:
            if record.rollout_id in self.records:
                return False
            self._write(record)
            return True

    def update(self, rollout_id: str, mutate: Mutation) -> RolloutRecord | None:
        while True:
            with self._lock:
                current, version = self.get(rollout_id), self._versions[rollout_id]
            if current is None:
                return None
            new = mutate(current)
            if new is None:
                return None
            if self.between_read_and_write is not None:
                self.between_read_and_write(rollout_id)
            with self._lock:
                if self._versions[rollout_id] == version and rollout_id in self.records:
                    self._write(new)
                    return copy.deepcopy(new)
                self.lost_races += 1

    def _write(self, record: RolloutRecord) -> None:
        record.updated = self.clock.now()
        self.records[record.rollout_id] = copy.deepcopy(record)
        self._versions[record.rollout_id] += 1
        self.puts.append(copy.deepcopy(record))

    # --- WaveStore: documents kept as JSON-like copies, as a real store would serialise them
    def put_plan(self, rollout_id: str, seq: int, header: dict[str, Any]) -> None:
        with self._lock:
            self.docs[(rollout_id, "plan", seq)] = copy.deepcopy(header)

    def plan(self, rollout_id: str, seq: int) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self.docs.get((rollout_id, "plan", seq)))

    def put_wave(self, rollout_id: str, seq: int, wave: int, chunks: list[list[dict[str, Any]]]) -> None:
        with self._lock:
            for i, chunk in enumerate(chunks):
                self.docs[(rollout_id, "wave", seq, wave, i)] = {"of": len(chunks), "members": copy.deepcopy(chunk)}

    def wave(self, rollout_id: str, seq: int, wave: int) -> list[dict[str, Any]] | None:
        with self._lock:
            self.wave_reads += 1
            first = self.docs.get((rollout_id, "wave", seq, wave, 0))
            if first is None:
                return None
            parts = [self.docs.get((rollout_id, "wave", seq, wave, i)) for i in range(first["of"])]
            if any(p is None for p in parts):
                return None
            return [copy.deepcopy(m) for p in parts for m in p["members"]]  # type: ignore[index]

    def record_result(self, rollout_id: str, wave: int, service: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self.docs[(rollout_id, "result", wave, service)] = copy.deepcopy(doc)

    def results(self, rollout_id: str, wave: int, since: float) -> list[dict[str, Any]]:
        with self._lock:
            self.result_queries += 1
            return [copy.deepcopy(d) for k, d in self.docs.items()
                    if k[:3] == (rollout_id, "result", wave) and d.get("recorded", 0.0) >= since]

    def parked(self, until: float, limit: int = 100) -> list[str]:
        with self._lock:
            return [rid for rid, rec in self.records.items() if 0 < rec.resume_at <= until][:limit]

    def write_by_someone_else(self, rollout_id: str, **changes: object) -> RolloutRecord:
        """Another invocation's write (not through this port's `puts`): change fields, stamp it now."""
        with self._lock:
            rec = self.records[rollout_id]
            for key, value in changes.items():
                setattr(rec, key, value)
            rec.updated = self.clock.now()
            self._versions[rollout_id] += 1
            return copy.deepcopy(rec)


class MemoryLineage:
    """LineageStore in memory: per track, the digests its tag was seen at, oldest first."""

    def __init__(self) -> None:
        self.by_track: dict[str, list[str]] = {}

    def record_version(self, track: str, digest: str) -> None:
        seen = self.by_track.setdefault(track, [])
        if digest not in seen:
            seen.append(digest)

    def versions(self, track: str) -> list[str]:
        return list(self.by_track.get(track, []))


def layer(name: str) -> str:
    """A layer digest named for readability in tests (no blob behind it)."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class FakeRegistry:
    """Just what `Catalog`, `current_digest`, `resolve_new_ref` and the signature check read."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], Manifest] = {}  # (name, digest) -> manifest
        self.tags: dict[tuple[str, str], str] = {}  # (name, tag) -> digest
        self.blobs: dict[str, bytes] = {}
        self.calls: Counter[str] = Counter()

    def push(self, image: str | ImageRef, layers: Sequence[str], annotations: dict[str, str] | None = None) -> ImageRef:
        """Store an image of `layers`; move its tag (if any) to it; return it pinned (tag kept for naming)."""
        ref = refs.parse(image) if isinstance(image, str) else image
        manifest = self.manifest_of(layers, annotations)
        self.manifests[(ref.name, manifest.digest)] = manifest
        if ref.tag:
            self.tags[(ref.name, ref.tag)] = manifest.digest
        return ref.at(manifest.digest)

    def manifest_of(self, layers: Sequence[str], annotations: dict[str, str] | None = None) -> Manifest:
        """The single-platform OCI image manifest of `layers` (its config blob is stored, the manifest not)."""
        config = oci.canonical_json({"architecture": "amd64", "os": "linux", "config": {"Labels": {}}})
        config_digest = oci.sha256_digest(config)
        self.blobs[config_digest] = config
        data: dict = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                      "config": {"mediaType": oci.OCI_CONFIG, "digest": config_digest, "size": len(config)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1}
                                 for d in layers]}
        if annotations:
            data["annotations"] = dict(annotations)
        raw = oci.canonical_json(data)
        return Manifest(oci.OCI_MANIFEST, oci.sha256_digest(raw), raw, data, len(raw))

    def move_tag(self, image: str | ImageRef, digest: str) -> None:
        ref = refs.parse(image) if isinstance(image, str) else image
        assert ref.tag, "a tag to move"
        self.tags[(ref.name, ref.tag)] = digest

    def head_manifest(self, ref: ImageRef) -> str | None:
        self.calls["head_manifest"] += 1
        if ref.digest:
            return ref.digest if (ref.name, ref.digest) in self.manifests else None
        return self.tags.get((ref.name, ref.tag or "latest"))

    def get_manifest(self, ref: ImageRef) -> Manifest:
        self.calls["get_manifest"] += 1
        digest = self.head_manifest(ref)
        if digest is None or (ref.name, digest) not in self.manifests:
            raise RegistryError(f"{ref} does not exist", status=404, code="MANIFEST_UNKNOWN")
        return self.manifests[(ref.name, digest)]

    def list_tags(self, repo: ImageRef, **_: object) -> list[str]:
        self.calls["list_tags"] += 1
        return sorted(tag for name, tag in self.tags if name == repo.name)

    def get_blob(self, repo: ImageRef, digest: str, max_bytes: int = 0) -> bytes:
        self.calls["get_blob"] += 1
        if digest not in self.blobs:
            raise RegistryError(f"blob {digest} not in {repo}", status=404, code="BLOB_UNKNOWN")
        return self.blobs[digest]


class FakeRebase:
    """The rebase port: the app's layers above the old base's go onto the new base's, pushed to `registry`
    (untagged, unless `dry_run`) so a re-plan reads the result. `refuse[str(app)] = reason` refuses that app."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.calls: list[tuple[RebaseJob, ImageRef, bool]] = []
        self.results: list[ImageRef] = []  # every rebased image, in call order
        self.refuse: dict[str, str] = {}

    def __call__(self, job: RebaseJob, new_base: ImageRef, dry_run: bool = False) -> ImageRef:
        self.calls.append((job, new_base, dry_run))
        if str(job.app) in self.refuse:
            raise RebaseError(self.refuse[str(job.app)])
        app = self.registry.get_manifest(job.app).data
        old = self.registry.get_manifest(job.old_base).data
        new = self.registry.get_manifest(new_base).data
        layers = [d["digest"] for d in new["layers"]] + [d["digest"] for d in app["layers"][len(old["layers"]):]]
        # As the real rebase writes them: the base by its tag, and the digest it now is.
        annotations = {ANN_BASE_NAME: str(new_base.with_tag(new_base.tag)),
                       ANN_BASE_DIGEST: new_base.digest or ""}
        if dry_run:  # the digest the rebase would push, nothing stored
            self.results.append(job.app.with_digest(self.registry.manifest_of(layers, annotations).digest))
        else:
            self.results.append(self.registry.push(job.app.with_tag(None), layers, annotations).pinned())
        return self.results[-1]


def config(*, projects: Sequence[str] = ("tenants-aaaaa",), regions: Sequence[str] = ("us-east1",),
           tracks: Sequence[tuple[str, str]] = (("python", f"{REGISTRY}/bases/python:3.12"),),
           budget: FailureBudget | None = None, **rollout: object) -> Config:
    """A config for the fake world: `rollout` overrides `RolloutSettings` fields."""
    settings = RolloutSettings(**({"failure_budget": budget or FailureBudget()} | rollout))  # type: ignore[arg-type]
    return Config(projects=tuple(projects), regions=tuple(regions),
                  base_tracks=tuple(BaseTrack(name, refs.parse(image)) for name, image in tracks),
                  allowed_registries=frozenset({REGISTRY}), rollout=settings)


@dataclass
class FakeWorld:
    """Every port faked, sharing one `FakeClock`; `deps` is what the core is called with."""

    config: Config
    clock: FakeClock = field(default_factory=FakeClock)
    fleet: FakeFleet = field(default_factory=FakeFleet)
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    bus: FakeBus = field(default_factory=FakeBus)
    records: MemoryRecordStore = field(init=False)
    lineage: MemoryLineage = field(default_factory=MemoryLineage)
    rebase: FakeRebase = field(init=False)
    deps: Deps = field(init=False)

    def __post_init__(self) -> None:
        self.records = MemoryRecordStore(self.clock)
        self.rebase = FakeRebase(self.registry)
        self.deps = Deps(config=self.config, fleet=self.fleet, registry=self.registry,  # type: ignore[arg-type]
                         bus=self.bus, records=self.records, rebase=self.rebase, lineage=self.lineage,
                         clock=self.clock)
