"""Pure fleet status per base track: which base version each workload is on, read from the live fleet.

Used by `baseroll status` (its table, `--watch` and `--html`). In flight = the workload is
reconciling a new generation; failed = its ledger says a rollout was rolled back from it, or its
latest revision failed. A rollout's progress joins its record (the settled waves' counts) with the
waves the coordinator assigns now (`rollout.step` recomputes them from the live fleet each step).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from baseroll.config import Config, Labels
from baseroll.contracts import ledger
from baseroll.contracts.records import RUNNING, TERMINAL, RolloutRecord
from baseroll.contracts.requests import parse_filter
from baseroll.fleet import health
from baseroll.fleet.view import ServiceView
from baseroll.images.match import BaseVersion, ImageFacts, match_image
from baseroll.images.refs import ImageRef
from baseroll.rollout import waves as waves_mod
from baseroll.rollout.lineage import TrackLineage
from baseroll.rollout.plan import make_plan, members
from baseroll.rollout.policy import opted_out


@dataclass
class TrackStatus:
    track: str
    current_digest: str
    on_digest: Counter = field(default_factory=Counter)  # base digest -> workloads on it
    in_flight: int = 0
    failed: int = 0
    opted_out: int = 0
    services: list[dict] = field(default_factory=list)
    image: str = ""  # the tag the track follows

    @property
    def on_current(self) -> int:
        return self.on_digest.get(self.current_digest, 0)

    @property
    def outdated(self) -> int:
        return sum(n for d, n in self.on_digest.items() if d != self.current_digest)

    def digests(self) -> list[str]:
        """The current digest first (even when nothing runs it yet), then the others by workloads on them."""
        older = sorted((d for d in self.on_digest if d != self.current_digest), key=lambda d: (-self.on_digest[d], d))
        return [self.current_digest, *older]


def summarize(track_name: str, track_image: ImageRef, current: BaseVersion, known: Sequence[BaseVersion],
              services: Sequence[ServiceView], facts: Mapping[str, ImageFacts | str], labels: Labels) -> TrackStatus:
    st = TrackStatus(track_name, current.digest, image=str(track_image))
    for svc in services:
        base_digest = _base_digest(svc, track_image, current, known, facts)
        if base_digest is None:
            continue
        row = {"service": svc.name, "kind": svc.kind, "project": svc.project, "region": svc.region,
               "base_digest": base_digest, "state": "on-base"}
        if opted_out(svc, labels):
            st.opted_out += 1
            row["state"] = "opted-out"
        verdict = health.assess(svc).state
        if verdict == "pending":
            st.in_flight += 1
            row["state"] = "in-flight"
        elif verdict == "failed" or svc.annotations.get(ledger.STATE) == ledger.ROLLED_BACK:
            st.failed += 1
            row["state"] = "failed"
            row["reason"] = svc.annotations.get(ledger.REASON) or svc.terminal_reason
        st.on_digest[base_digest] += 1
        row["rollout_id"] = svc.annotations.get(ledger.ROLLOUT_ID)
        st.services.append(row)
    return st


def _base_digest(svc: ServiceView, track_image: ImageRef, current: BaseVersion, known: Sequence[BaseVersion],
                 facts: Mapping[str, ImageFacts | str]) -> str | None:
    """The track version the workload's first matching container is built on, None when none is."""
    for image in svc.images:
        fact = facts.get(image)
        if not isinstance(fact, ImageFacts):
            continue
        m = match_image(fact, track_image, current, known)
        if m.verdict in ("current", "outdated"):
            return m.old_base_digest or current.digest
    return None


@dataclass
class LocationCounts:
    """One project x region of a track. `current` and `outdated` count every workload by digest;
    in flight, failed and opted out are states some of those are in."""

    project: str
    region: str
    current: int = 0
    outdated: int = 0
    in_flight: int = 0
    failed: int = 0
    opted_out: int = 0


def by_location(st: TrackStatus) -> list[LocationCounts]:
    """Per project x region, in name order."""
    out: dict[tuple[str, str], LocationCounts] = {}
    for row in st.services:
        loc = out.setdefault((row["project"], row["region"]), LocationCounts(row["project"], row["region"]))
        if row["base_digest"] == st.current_digest:
            loc.current += 1
        else:
            loc.outdated += 1
        state = row["state"]
        loc.in_flight += state == "in-flight"
        loc.failed += state == "failed"
        loc.opted_out += state == "opted-out"
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class WaveProgress:
    index: int  # 0-based, as the record counts; shown 1-based
    size: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    state: str = "waiting"  # settled | rolling | waiting (not released yet, or held) | not-released (ended before it)


@dataclass(frozen=True)
class RolloutProgress:
    rollout_id: str
    track: str
    status: str
    reason: str
    wave: int  # 0-based index of the wave the record is at
    waves: tuple[WaveProgress, ...]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def headline(self) -> str:
        """One line a person (or a test reading a pipe) follows: id, status, wave N of M."""
        shown = min(self.wave + 1, len(self.waves)) if self.waves else 0
        return f"{self.rollout_id} {self.status} wave {shown} of {len(self.waves)}" + (
            f": {self.reason}" if self.reason else "")


def assigned_waves(cfg: Config, record: RolloutRecord, track_image: ImageRef, current: BaseVersion,
                   lineage: TrackLineage, services: Sequence[ServiceView],
                   facts: Mapping[str, ImageFacts | str]) -> list[list[str]]:
    """The waves the coordinator assigns now to a rollout of the current digest: the same plan
    and wave assignment as `rollout.step`, from the fleet and facts already read."""
    plan = make_plan(track_image=track_image, new_base=track_image.at(record.base_digest), new_version=current,
                     known_versions=lineage.own, services=services, facts=facts, labels=cfg.labels,
                     allowed=cfg.allowed_registries, scope=parse_filter(dict(record.scope)).matches, lineage=lineage)
    return waves_mod.assign(members(plan, list(services), record.rollout_id), cfg.rollout.waves,
                            cohort_label=cfg.labels.cohort)


def rollout_progress(record: RolloutRecord, assigned: Sequence[Sequence[str]],
                     fleet: Sequence[ServiceView]) -> RolloutProgress:
    """The record's settled waves as it counted them; the wave it is at counted live from the
    ledger annotations of its members; later waves by their assigned size."""
    settled = {int(w.get("wave", -1)): w for w in record.waves}
    by_name = {s.name: s for s in fleet}
    count = max(len(assigned), max(settled, default=-1) + 1, record.wave + 1 if settled or assigned else 0)
    waves = []
    for i in range(count):
        members = assigned[i] if i < len(assigned) else ()
        if i in settled:
            w = settled[i]
            waves.append(WaveProgress(i, int(w.get("size", len(members))), int(w.get("done", 0)),
                                      int(w.get("failed", 0)), int(w.get("skipped", 0)), "settled"))
        elif i == record.wave and record.status == RUNNING:
            waves.append(_live_wave(i, members, by_name, record.rollout_id))
        else:
            waves.append(WaveProgress(i, len(members), state="not-released" if record.status in TERMINAL else "waiting"))
    return RolloutProgress(record.rollout_id, record.track, record.status, record.reason, record.wave, tuple(waves))


def _live_wave(index: int, members: Sequence[str], by_name: Mapping[str, ServiceView], rollout_id: str) -> WaveProgress:
    done = failed = 0
    for name in members:
        svc = by_name.get(name)
        if svc is None or svc.annotations.get(ledger.ROLLOUT_ID) != rollout_id:
            continue
        if svc.annotations.get(ledger.STATE) == ledger.ROLLED_BACK:
            failed += 1
        elif svc.annotations.get(ledger.STATE) == ledger.ROLLED and health.assess(svc).state == "ready":
            done += 1
    return WaveProgress(index, len(members), done, failed, state="rolling")


def rollout_ids_to_watch(track: str, current_digest: str, st: TrackStatus) -> list[str]:
    """The rollout of the track's current digest over the whole fleet, and any other rollout id
    the track's workloads carry (a rollout scoped by a request's filter has an id of its own);
    the caller keeps those whose record is of this track and digest."""
    ids = [ledger.rollout_id(track, current_digest)]
    ids += sorted({r["rollout_id"] for r in st.services if r.get("rollout_id")} - set(ids))
    return ids
