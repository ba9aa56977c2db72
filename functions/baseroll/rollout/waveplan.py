"""Pure: a rollout's waves as the coordinator keeps them, planned once and read back a wave at a time.

Planning lists the whole fleet; a step only needs its own wave's members and, for each, what to
send it. So the plan is made once (when the rollout starts, or when a restarted rollout's first
step runs) and stored as a header (wave sizes, chunk counts, when it was planned) and per wave a
few chunk documents of `Member` entries, each chunk small enough for one Firestore document
(docs/STORE.md#wave-plans). What stays live at release time: supersession and the rollout's status
(every step), signatures (asked again by each step), and each service itself (the worker re-reads it
and leaves it alone when it changed since planning, `policy.image_changed_since_planning`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from baseroll.images.refs import ImageRef
from baseroll.rollout import pipeline as engine
from baseroll.rollout.plan import Plan, RebaseJob
from baseroll.rollout.waves import judge

CHUNK_BYTES = 256 * 1024  # a quarter of Firestore's 1 MiB document limit: room for field names and overhead


@dataclass(frozen=True)
class Member:
    """One service of a wave: a task to send (`targets`/`base_uris`), a reason it cannot be sent
    (`refused`), or, for a service this rollout already touched, its state when planned (`verdict`)."""

    service: str
    expected: tuple[str, ...] = ()  # its container images when planned
    targets: Mapping[str, str] = field(default_factory=dict)  # container index -> image by digest
    base_uris: Mapping[str, str] = field(default_factory=dict)  # container index -> base_image_uri by digest
    apps: Mapping[str, str] = field(default_factory=dict)  # rebased container index -> the app image it came from
    refused: str = ""
    verdict: str = ""  # done | failed | skipped | pending, for a member not to roll
    labels: Mapping[str, str] = field(default_factory=dict)  # only those maintenance windows match on

    @property
    def sendable(self) -> bool:
        return bool(self.targets or self.base_uris) and not self.refused

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"service": self.service}
        for key in ("expected", "targets", "base_uris", "apps", "refused", "verdict", "labels"):
            value = getattr(self, key)
            if value:
                doc[key] = list(value) if key == "expected" else value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Member":
        return cls(str(doc["service"]), tuple(doc.get("expected", ())), dict(doc.get("targets", {})),
                   dict(doc.get("base_uris", {})), dict(doc.get("apps", {})), str(doc.get("refused", "")),
                   str(doc.get("verdict", "")), dict(doc.get("labels", {})))


@dataclass(frozen=True)
class Header:
    """What every step reads first: how many waves and each one's size, and when the plan was made."""

    seq: int  # the step seq the plan was made for (a Step names it in `plan`)
    planned_at: float  # epoch seconds: results recorded before it belong to an earlier plan
    sizes: tuple[int, ...]
    canary: bool = False  # wave 0 is the canary cohort (not just the first fraction of the fleet)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "planned_at": self.planned_at, "sizes": list(self.sizes), "canary": self.canary}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Header":
        return cls(int(doc["seq"]), float(doc["planned_at"]), tuple(int(n) for n in doc["sizes"]),
                   bool(doc.get("canary", False)))


def members_of(plan: Plan, wave: Sequence[str], rollout_id: str, rebased: Mapping[RebaseJob, ImageRef | str],
               label_keys: Iterable[str] = ()) -> list[Member]:
    """The wave's entries from a fresh plan (rebase results for its jobs in `rebased`); each keeps
    its labels named in `label_keys` (those maintenance windows match on)."""
    by_name = {sp.service.name: sp for sp in plan.services}
    keys = set(label_keys)
    out = []
    for name in wave:
        sp = by_name[name]
        labels = {k: v for k, v in sp.service.labels.items() if k in keys}
        if sp.action != "roll":
            out.append(Member(name, sp.service.images, labels=labels,
                              verdict=judge(sp.service, (), rollout_id, deadline_passed=False)))
            continue
        targets = engine.targets_for(sp, rebased)
        if isinstance(targets, str):
            out.append(Member(name, sp.service.images, refused=targets, labels=labels))
            continue
        images, uris = targets
        apps = {str(i): str(c.job.app) for i, c in sp.containers.items() if c.job is not None}
        out.append(Member(name, sp.service.images, {str(i): v for i, v in images.items()},
                          {str(i): v for i, v in uris.items()}, apps, labels=labels))
    return out


def jobs_of(plan: Plan, wave: Iterable[str]) -> list[RebaseJob]:
    """The rebase jobs the wave's services need, each once, in plan order."""
    names = set(wave)
    seen: dict[RebaseJob, None] = {}
    for sp in plan.to_roll:
        if sp.service.name in names:
            seen.update({c.job: None for c in sp.containers.values() if c.job is not None})
    return list(seen)


def chunked(entries: Sequence[Member], max_bytes: int = CHUNK_BYTES) -> Iterator[list[dict[str, Any]]]:
    """The entries as JSON, cut into chunks of at most `max_bytes` each (at least one entry per chunk)."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        doc = entry.to_json()
        n = len(json.dumps(doc, separators=(",", ":")))
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(doc)
        size += n
    if chunk:
        yield chunk
