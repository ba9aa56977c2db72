"""The fleet is the ledger: annotations baseroll writes on each service it rolls.

Keys sit under `baseroll.dev/`, a prefix Cloud Run v2 accepts (it rejects run.googleapis.com,
cloud.googleapis.com, serving.knative.dev and autoscaling.knative.dev).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Mapping

PREFIX = "baseroll.dev/"
ROLLOUT_ID = PREFIX + "rollout-id"
BASE_DIGEST = PREFIX + "base-digest"
PREVIOUS_IMAGES = PREFIX + "previous-images"
PREVIOUS_BASE_URIS = PREFIX + "previous-base-image-uris"
PREVIOUS_TRAFFIC = PREFIX + "previous-traffic"  # JSON, only when the roll changed the traffic
TRAFFIC = PREFIX + "traffic"  # what the roll did with the traffic, as a person reads it
STATE = PREFIX + "state"  # ROLLED | VERIFYING | ROLLED_BACK | CHANGED_BY_SOMEONE_ELSE
REASON = PREFIX + "reason"
# Verify at zero traffic (docs/GOOGLE_APIS.md#verify-at-zero-traffic): what the check found, as a
# person reads it ("passed: 3 x GET / -> 200", or the failing request), and, while a rollback keeps
# the traffic pinned by name until the restored revision is ready, that pinned traffic (JSON).
VERIFY = PREFIX + "verify"
PINNED_TRAFFIC = PREFIX + "pinned-traffic"
REPLACED_REVISION = PREFIX + "replaced-revision"  # the revision serving before a verified roll
MAX_REASON = 500

# The values of STATE.
ROLLED = "rolled"  # this rollout updated the service (and the update may still be settling)
VERIFYING = "verifying"  # updated, the new revision at 0 % under a tag until its verification passes
ROLLED_BACK = "rolled-back"  # this rollout's target failed here and the service was restored
# This rollout's target failed here, but someone else changed the service while it was gated: it
# was left as they made it, not rolled back over their change.
CHANGED_BY_SOMEONE_ELSE = "changed-by-someone-else"
CHANGED_DURING_GATE = "changed by someone else during the gate"

# Why a service is left alone: its ledger says this target already failed on it. Decided here, below
# the fleet, because `fleet.deploy` needs it too; `rollout.policy` re-exports it.
ALREADY_ROLLED_BACK = "already rolled back from this target: {reason}"


_NOT_ID = re.compile(r"[^a-z0-9]+")
MAX_ID_NAME = 30  # of the track name in a rollout id; with its hash and the digest, 50 characters at most


def rollout_id(track_name: str, base_digest: str) -> str:
    """Deterministic, so every redelivery of the same base push names the same rollout. A track
    name that is not already lower-case letters, digits and inner hyphens (`python_3.12`, `Node`)
    is sanitised and followed by a short hash of itself, so two names that sanitise alike still name
    two rollouts. Every id built matches contracts.ids.ROLLOUT_ID with room for a scope suffix
    (tests/unit/test_rollout_ids.py)."""
    name = _NOT_ID.sub("-", track_name.lower()).strip("-")[:MAX_ID_NAME].strip("-") or "track"
    if name != track_name:
        name = f"{name}-{hashlib.sha256(track_name.encode('utf-8', 'surrogatepass')).hexdigest()[:6]}"
    digest = _NOT_ID.sub("", base_digest.removeprefix("sha256:").lower())[:12] or "0"
    return f"{name}-{digest}"


def rolled(rollout: str, base_digest: str, previous: tuple[str, ...], previous_uris: tuple[str, ...] = (), *,
           previous_traffic: list[dict[str, object]] | None = None, traffic_note: str = "",
           state: str = ROLLED) -> dict[str, str]:
    """`previous_traffic`: the traffic before the roll, when the roll changes it (a restore needs it);
    `state` VERIFYING when the new revision waits at zero traffic for its verification."""
    out = {
        ROLLOUT_ID: rollout,
        BASE_DIGEST: base_digest,
        PREVIOUS_IMAGES: json.dumps(list(previous), separators=(",", ":")),
        STATE: state,
        REASON: "",
        TRAFFIC: traffic_note[:MAX_REASON],
        PREVIOUS_TRAFFIC: json.dumps(previous_traffic, separators=(",", ":")) if previous_traffic else "",
    }
    if any(previous_uris):
        out[PREVIOUS_BASE_URIS] = json.dumps(list(previous_uris), separators=(",", ":"))
    return out


def changed_by_someone_else(rollout: str, base_digest: str, reason: str) -> dict[str, str]:
    """The target failed, but the service was changed by someone else during the gate: left alone."""
    return {ROLLOUT_ID: rollout, BASE_DIGEST: base_digest, STATE: CHANGED_BY_SOMEONE_ELSE,
            REASON: f"{CHANGED_DURING_GATE}: {reason}"[:MAX_REASON]}


def rolled_back(rollout: str, base_digest: str, reason: str, *, verify: str | None = None,
                pinned_traffic: list[dict[str, object]] | None = None) -> dict[str, str]:
    """`verify`: the failing request, when verification failed; `pinned_traffic`: the traffic held by
    name until the restored revision is ready (a redelivered task restores the rest from it)."""
    out = {ROLLOUT_ID: rollout, BASE_DIGEST: base_digest, STATE: ROLLED_BACK, REASON: reason[:MAX_REASON]}
    if verify is not None:
        out[VERIFY] = verify[:MAX_REASON]
    if pinned_traffic is not None:
        out[PINNED_TRAFFIC] = json.dumps(pinned_traffic, separators=(",", ":"))
    return out


def verified(finding: str, traffic_note: str) -> dict[str, str]:
    """Verification passed and the traffic is back as the service had it: the roll is done."""
    return {STATE: ROLLED, VERIFY: finding[:MAX_REASON], TRAFFIC: traffic_note[:MAX_REASON]}


def previous(annotations: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The images and base_image_uris a rolled service had before, as `rolled` recorded them."""
    def load(key: str) -> tuple[str, ...]:
        try:
            value = json.loads(annotations.get(key, "[]"))
        except json.JSONDecodeError:
            return ()
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    return load(PREVIOUS_IMAGES), load(PREVIOUS_BASE_URIS)


def already_rolled_back(annotations: Mapping[str, str], base_digest: str | None) -> str | None:
    """Why not to try `base_digest` on a service again: it was rolled back from it; else None."""
    if annotations.get(STATE) == ROLLED_BACK and annotations.get(BASE_DIGEST) == base_digest:
        return ALREADY_ROLLED_BACK.format(reason=annotations.get(REASON, ""))
    return None
