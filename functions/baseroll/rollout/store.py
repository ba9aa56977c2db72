"""Where rollout records and track lineage live: the ports, and the record's document form.

Every state change of a rollout record is one conditional write (docs/RELIABILITY.md#the-rollout-store):
`create` only when no record exists, `update` only over the version it read. A write that lost
the race re-reads and lets its caller decide again, so an abort or a halt is never overwritten by
a copy read before it. The Firestore adapter is `rollout.firestore_store`; the in-memory one is
`rollout.fakes.MemoryRecordStore`.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Callable, Protocol

from baseroll.contracts.records import RolloutRecord

# Decides the next version of a record from the one just read; None leaves the record as it is.
# It may run more than once (once per lost race), so it must only read and change its argument.
Mutation = Callable[[RolloutRecord], "RolloutRecord | None"]


class StoreConflict(Exception):
    """A conditional write kept losing to concurrent writers (bounded retries ran out)."""


class WaveStore(Protocol):
    """Beside each rollout record: its wave plan (made once, read a wave at a time) and the results its
    tasks reported (docs/STORE.md#wave-plans, #task-results). Plain JSON documents; `rollout.waveplan`
    gives them their shape."""

    def put_plan(self, rollout_id: str, seq: int, header: dict[str, Any]) -> None:
        """Store the header of plan `seq` (overwrites: a plan made again for the same step is the same plan)."""
        ...

    def plan(self, rollout_id: str, seq: int) -> dict[str, Any] | None: ...

    def put_wave(self, rollout_id: str, seq: int, wave: int, chunks: list[list[dict[str, Any]]]) -> None:
        """Store wave `wave` of plan `seq` as these chunks (one document each)."""
        ...

    def wave(self, rollout_id: str, seq: int, wave: int) -> list[dict[str, Any]] | None:
        """The wave's entries in order; None unless every chunk of it was stored."""
        ...

    def record_result(self, rollout_id: str, wave: int, service: str, doc: dict[str, Any]) -> None:
        """Keep a task's result, one document per rollout × wave × service: a redelivery overwrites it."""
        ...

    def results(self, rollout_id: str, wave: int, since: float) -> list[dict[str, Any]]:
        """The wave's results recorded at or after `since` (epoch seconds, their `recorded` field)."""
        ...


class RecordStore(WaveStore, Protocol):
    def get(self, rollout_id: str) -> RolloutRecord | None: ...

    def create(self, record: RolloutRecord) -> bool:
        """Store `record` only if no record of its id exists (stamping `updated`); False if one did."""
        ...

    def update(self, rollout_id: str, mutate: Mutation) -> RolloutRecord | None:
        """Read the record, `mutate` it, and write the result only if nobody wrote in between;
        on a lost race read again and call `mutate` again. Returns what was written (its `updated`
        stamped), or None when there is no record or `mutate` returned None. An exception raised by
        `mutate` propagates, and nothing is written."""
        ...

    def parked(self, until: float, limit: int = 100) -> list[str]:
        """Ids of at most `limit` rollouts parked until a maintenance window opens (`resume_at`)
        at or before `until` (epoch seconds): the sweep runs them on (docs/STORE.md#parked-rollouts)."""
        ...


class LineageStore(Protocol):
    """Per base track, every digest its tag has been seen pointing to: what makes an old image a
    version of *this* track rather than merely another tag of the same repository."""

    def record_version(self, track: str, digest: str) -> None:
        """Remember that `track`'s tag pointed to `digest` (idempotent)."""
        ...

    def versions(self, track: str) -> list[str]:
        """The digests recorded for `track`, oldest first."""
        ...


_FIELDS = frozenset(f.name for f in fields(RolloutRecord))


def to_document(record: RolloutRecord) -> dict[str, Any]:
    return asdict(record)


def from_document(doc: dict[str, Any]) -> RolloutRecord:
    """A stored record; fields it does not know (written by a newer version) are ignored."""
    return RolloutRecord(**{k: v for k, v in doc.items() if k in _FIELDS})
