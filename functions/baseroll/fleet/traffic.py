"""Traffic-aware rolls: where a service's traffic goes when baseroll replaces the revision it serves.

The rule (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2, "Traffic"): the revision we replace is the
latest ready one, the revision built from the template whose images we change. With
`rollout.pinned_traffic: follow`, every traffic entry pinned to it by name moves to the new
revision, percent and tag alike; entries pinned to other revisions (a canary, a hand rollback) and
`LATEST` entries are kept as they are (`LATEST` follows by itself). When no traffic would reach the
new revision, the service is skipped: the user serves another revision on purpose. With `skip`,
every service whose traffic is not 100 % on the latest revision is skipped. Pure: no SDK, no I/O.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from baseroll.fleet.view import LATEST, REVISION, ServiceView, TrafficSplit

PinnedTraffic = Literal["follow", "skip"]
PINNED_TRAFFIC_CHOICES: tuple[str, ...] = ("follow", "skip")

# Why a service is left alone because of its traffic (re-exported by `rollout.policy`).
TRAFFIC_PINNED = "traffic not 100% on the latest revision ({split}) and rollout.pinned_traffic is skip"
NO_TRAFFIC_WOULD_FOLLOW = "no traffic would reach the new revision ({split}): it is pinned to other revisions"

MAX_REVISION_NAME = 63


def short(revision: str) -> str:
    return revision.rsplit("/", 1)[-1]


def describe(traffic: tuple[TrafficSplit, ...]) -> str:
    """`100% shop-00001-abc, 0% LATEST tag=canary`: the split as a person reads it."""
    parts = []
    for t in traffic:
        where = t.revision if t.type == REVISION else LATEST
        parts.append(f"{t.percent}% {where}" + (f" tag={t.tag}" if t.tag else ""))
    return ", ".join(parts)


def all_on_latest(svc: ServiceView) -> bool:
    """True for the default split: every percent on LATEST and no tags."""
    return all(t.type == LATEST and not t.tag for t in svc.traffic)


@dataclass(frozen=True)
class Plan:
    """What an update does with the traffic: `traffic` None leaves it as it is."""

    traffic: tuple[TrafficSplit, ...] | None = None
    revision: str = ""  # the name to give the new revision; "" lets Cloud Run name it
    note: str = ""  # for the ledger and the log
    skip: str | None = None  # why not to update at all


def plan(svc: ServiceView, target_images: tuple[str, ...], policy: PinnedTraffic) -> Plan:
    """How to roll `svc` onto `target_images` (the images after the update) under `policy`."""
    if all_on_latest(svc):
        return Plan()
    split = describe(svc.traffic)
    if policy == "skip":
        return Plan(skip=TRAFFIC_PINNED.format(split=split))
    new_name = revision_name(svc, target_images)
    moved = follow(svc.traffic, short(svc.latest_ready_revision), new_name)
    if sum(t.percent for t in moved if t.type == LATEST or t.revision == new_name) == 0:
        return Plan(skip=NO_TRAFFIC_WOULD_FOLLOW.format(split=split))
    if moved == svc.traffic:  # nothing pinned to the replaced revision: LATEST entries follow by themselves
        return Plan(note=f"traffic kept: {split}")
    return Plan(moved, new_name, f"traffic followed: {split} -> {describe(moved)}")


def follow(split: tuple[TrafficSplit, ...], replaced: str, new_name: str) -> tuple[TrafficSplit, ...]:
    """`split` with every entry pinned to `replaced` pinned to `new_name` instead, percent and tag alike."""
    return tuple(TrafficSplit(REVISION, t.percent, new_name, t.tag)
                 if t.type == REVISION and t.revision == replaced else t for t in split)


def revision_name(svc: ServiceView, target_images: tuple[str, ...]) -> str:
    """A name for the new revision that traffic can be pinned to in the same write: the service
    id, the next generation, and a hash of the images (Cloud Run's own form is `S-00002-abc`)."""
    sid = short(svc.name)
    digest = hashlib.sha256("\n".join(target_images).encode()).hexdigest()[:4]
    suffix = f"-{svc.generation + 1:05d}-b{digest}"
    return sid[:MAX_REVISION_NAME - len(suffix)].rstrip("-") + suffix


def to_json(traffic: tuple[TrafficSplit, ...]) -> list[dict[str, Any]]:
    return [{"type": t.type, "percent": t.percent, "revision": t.revision, "tag": t.tag} for t in traffic]


def from_json(raw: str) -> tuple[TrafficSplit, ...] | None:
    """The traffic the ledger recorded (`ledger.PREVIOUS_TRAFFIC`); None when absent or unreadable."""
    try:
        value = json.loads(raw) if raw else None
        if not isinstance(value, list):
            return None
        return tuple(TrafficSplit(str(v["type"]), int(v["percent"]), str(v.get("revision", "")),
                                  str(v.get("tag", ""))) for v in value)
    except (ValueError, TypeError, KeyError):
        return None
