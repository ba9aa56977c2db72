"""The rollout store on Firestore (native mode): one document per rollout record, one per track's lineage,
and under each record its wave plans and its tasks' results (docs/STORE.md).

Records are written with compare-and-swap: `create` fails when the document exists, `update`
carries a precondition on the `update_time` it read, so a write over a version someone else
changed meanwhile is refused by the server, and the update reads again and decides again
(docs/RELIABILITY.md#the-rollout-store gives the sources). Lineage versions are appended with the
server-side `ArrayUnion` transform: concurrent appends all land, in order, without duplicates.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from baseroll import log
from baseroll.clock import SYSTEM, Clock
from baseroll.contracts.records import RolloutRecord
from baseroll.rollout.store import Mutation, StoreConflict, from_document, to_document

RECORDS = "baseroll-rollouts"
LINEAGE = "baseroll-lineage"
BATCH_WRITES = 20  # chunk documents per commit: 20 x 256 KiB stays under a commit's 10 MiB
MAX_ATTEMPTS = 20  # each lost race means another writer made progress; this many in a row is a fault


class FirestoreStore:
    """RecordStore and LineageStore over one Firestore database."""

    def __init__(self, client: firestore.Client, clock: Clock = SYSTEM, *, prefix: str = "") -> None:
        self._client = client
        self._clock = clock
        self._records = client.collection(prefix + RECORDS)
        self._lineage = client.collection(prefix + LINEAGE)

    @classmethod
    def connect(cls, project: str, database: str = "(default)", clock: Clock = SYSTEM) -> "FirestoreStore":
        """The client finds the emulator through FIRESTORE_EMULATOR_HOST, as every Google client does."""
        return cls(firestore.Client(project=project, database=database), clock)

    # --- RecordStore
    def get(self, rollout_id: str) -> RolloutRecord | None:
        snap = self._records.document(rollout_id).get()
        return from_document(snap.to_dict() or {}) if snap.exists else None

    def create(self, record: RolloutRecord) -> bool:
        record.updated = self._clock.now()
        try:
            self._records.document(record.rollout_id).create(to_document(record))
        except gexc.AlreadyExists:
            return False
        return True

    def update(self, rollout_id: str, mutate: Mutation) -> RolloutRecord | None:
        doc = self._records.document(rollout_id)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            snap = doc.get()
            if not snap.exists:
                return None
            new = mutate(from_document(snap.to_dict() or {}))
            if new is None:
                return None
            new.updated = self._clock.now()
            try:
                doc.update(to_document(new), option=self._client.write_option(last_update_time=snap.update_time))
            except (gexc.FailedPrecondition, gexc.NotFound):
                # Someone wrote (or deleted) it since our read: read again and let the caller decide again.
                log.info("store.write_lost_race", rollout_id=rollout_id, attempt=attempt)
                continue
            return new
        raise StoreConflict(f"rollout {rollout_id}: {MAX_ATTEMPTS} conditional writes in a row lost the race")

    def parked(self, until: float, limit: int = 100) -> list[str]:
        # Both bounds on one field: its single-field index serves the query, no composite index needed.
        query = (self._records.where(filter=FieldFilter("resume_at", ">", 0))
                 .where(filter=FieldFilter("resume_at", "<=", until)).limit(limit))
        return [snap.id for snap in query.stream()]

    # --- WaveStore
    def put_plan(self, rollout_id: str, seq: int, header: dict[str, Any]) -> None:
        self._plan(rollout_id, seq).set(header)

    def plan(self, rollout_id: str, seq: int) -> dict[str, Any] | None:
        snap = self._plan(rollout_id, seq).get()
        return snap.to_dict() if snap.exists else None

    def put_wave(self, rollout_id: str, seq: int, wave: int, chunks: list[list[dict[str, Any]]]) -> None:
        # A chunk's members are one JSON string: one index entry (a long string's is truncated) instead of
        # one per nested field, and no per-field conversion (docs/STORE.md#wave-plans).
        for start in range(0, len(chunks), BATCH_WRITES):
            batch = self._client.batch()
            for i, chunk in enumerate(chunks[start:start + BATCH_WRITES], start):
                batch.set(self._chunk(rollout_id, seq, wave, i), {
                    "wave": wave, "chunk": i, "of": len(chunks), "members": json.dumps(chunk, separators=(",", ":"))})
            batch.commit()

    def wave(self, rollout_id: str, seq: int, wave: int) -> list[dict[str, Any]] | None:
        first = self._chunk(rollout_id, seq, wave, 0).get()
        if not first.exists:
            return None
        head = first.to_dict() or {}
        rest = [self._chunk(rollout_id, seq, wave, i) for i in range(1, int(head.get("of", 1)))]
        by_id = {snap.id: snap.to_dict() for snap in self._client.get_all(rest) if snap.exists} if rest else {}
        if len(by_id) != len(rest):
            return None  # a chunk is missing: the plan was not fully written
        parts = [head, *(by_id[ref.id] for ref in rest)]
        return [m for part in parts for m in json.loads((part or {}).get("members", "[]"))]

    def record_result(self, rollout_id: str, wave: int, service: str, doc: dict[str, Any]) -> None:
        self._results(rollout_id, wave).document(quote(service, safe="")).set(doc)

    def results(self, rollout_id: str, wave: int, since: float) -> list[dict[str, Any]]:
        query = self._results(rollout_id, wave).where(filter=FieldFilter("recorded", ">=", since))
        return [snap.to_dict() or {} for snap in query.stream()]

    def _plan(self, rollout_id: str, seq: int) -> firestore.DocumentReference:
        return self._records.document(rollout_id).collection("plans").document(f"{seq:08d}")

    def _chunk(self, rollout_id: str, seq: int, wave: int, chunk: int) -> firestore.DocumentReference:
        return self._plan(rollout_id, seq).collection("waves").document(f"{wave:04d}-{chunk:05d}")

    def _results(self, rollout_id: str, wave: int) -> firestore.CollectionReference:
        return self._records.document(rollout_id).collection("waves").document(f"{wave:04d}").collection("results")

    # --- LineageStore
    def record_version(self, track: str, digest: str) -> None:
        self._track(track).set({"track": track, "versions": firestore.ArrayUnion([digest])}, merge=True)

    def versions(self, track: str) -> list[str]:
        snap = self._track(track).get()
        return list((snap.to_dict() or {}).get("versions", [])) if snap.exists else []

    def _track(self, track: str) -> firestore.DocumentReference:
        # A document id may not hold "/" nor be "." / ".." / "__x__": quote it and give it a prefix.
        return self._lineage.document("track:" + quote(track, safe=""))
