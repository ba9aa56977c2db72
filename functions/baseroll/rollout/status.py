"""Pure fleet status per base track: which base version each service is on, read from the live fleet.

Used by `baseroll status`. In flight = the service is reconciling a new generation; failed = its
ledger says a rollout was rolled back from it, or its latest revision failed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from baseroll.config import Labels
from baseroll.contracts import ledger
from baseroll.fleet import health
from baseroll.fleet.view import ServiceView
from baseroll.images.match import BaseVersion, ImageFacts, match_image
from baseroll.images.refs import ImageRef
from baseroll.rollout.policy import opted_out


@dataclass
class TrackStatus:
    track: str
    current_digest: str
    on_digest: Counter = field(default_factory=Counter)  # base digest -> services on it
    in_flight: int = 0
    failed: int = 0
    opted_out: int = 0
    services: list[dict] = field(default_factory=list)

    @property
    def on_current(self) -> int:
        return self.on_digest.get(self.current_digest, 0)

    @property
    def outdated(self) -> int:
        return sum(n for d, n in self.on_digest.items() if d != self.current_digest)


def summarize(track_name: str, track_image: ImageRef, current: BaseVersion, known: Sequence[BaseVersion],
              services: Sequence[ServiceView], facts: Mapping[str, ImageFacts | str], labels: Labels) -> TrackStatus:
    st = TrackStatus(track_name, current.digest)
    for svc in services:
        base_digest = None
        for image in svc.images:
            fact = facts.get(image)
            if not isinstance(fact, ImageFacts):
                continue
            m = match_image(fact, track_image, current, known)
            if m.verdict in ("current", "outdated"):
                base_digest = m.old_base_digest or current.digest
                break
        if base_digest is None:
            continue
        row = {"service": svc.name, "base_digest": base_digest, "state": "on-base"}
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
