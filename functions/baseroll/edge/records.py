"""The record store as the entry points hand it to the core: a record that is not a record raises
CorruptRecord (a permanent failure, `edge.classify`) instead of a TypeError deep in a step.

Works over any RecordStore: every call is passed through; a record read (returned by `get`, or
handed to an `update` mutation) is checked field by field against RolloutRecord's own types first.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from baseroll.contracts.records import RolloutRecord
from baseroll.edge.classify import CorruptRecord
from baseroll.rollout.deps import Deps


def _expected_types() -> dict[str, tuple[type, ...]]:
    """Each field's type, from its default (required fields are strings); a float also takes an int."""
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(RolloutRecord):
        if f.default is not dataclasses.MISSING:
            kind: type = type(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            kind = type(f.default_factory())
        else:
            kind = str
        out[f.name] = (int, float) if kind is float else (kind,)
    return out


FIELD_TYPES = _expected_types()


def check(rec: Any) -> Any:
    """`rec` itself if it is None or a well-typed RolloutRecord; CorruptRecord naming the field if not."""
    if rec is None:
        return rec
    if not isinstance(rec, RolloutRecord):
        raise CorruptRecord(f"rollout record is a {type(rec).__name__}")
    for name, types in FIELD_TYPES.items():
        value = getattr(rec, name, None)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CorruptRecord(f"rollout record {str(rec.rollout_id)[:80]}: {name} is a {type(value).__name__}")
    if not all(isinstance(w, dict) for w in rec.waves):
        raise CorruptRecord(f"rollout record {rec.rollout_id}: waves holds a non-object")
    return rec


class CheckedRecords:
    """A RecordStore whose reads are checked; a document that does not even decode (the store's own
    TypeError/ValueError/KeyError while reading it) is a CorruptRecord too."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get(self, rollout_id: str) -> RolloutRecord | None:
        try:
            rec = self._inner.get(rollout_id)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CorruptRecord(f"rollout record {rollout_id}: {type(exc).__name__}: {exc}") from exc
        return check(rec)

    def update(self, rollout_id: str, mutate: Callable[[RolloutRecord], RolloutRecord | None]) -> Any:
        raised: list[BaseException] = []  # what the mutation itself raised is the caller's, not the document's

        def checked_mutate(rec: RolloutRecord) -> RolloutRecord | None:
            rec = check(rec)
            try:
                return mutate(rec)
            except BaseException as exc:
                raised.append(exc)
                raise

        try:
            return self._inner.update(rollout_id, checked_mutate)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if raised and exc is raised[-1]:
                raise
            raise CorruptRecord(f"rollout record {rollout_id}: {type(exc).__name__}: {exc}") from exc

    def __getattr__(self, name: str) -> Any:  # create, put, list... pass through unchanged
        return getattr(self._inner, name)


def checked(deps: Deps) -> Deps:
    """`deps` with its record store checked (idempotent)."""
    if isinstance(deps.records, CheckedRecords):
        return deps
    return dataclasses.replace(deps, records=CheckedRecords(deps.records))
