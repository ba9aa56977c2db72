"""The fleet is the ledger: annotations baseroll writes on each service it rolls.

Keys sit under `baseroll.dev/`, a prefix Cloud Run v2 accepts (it rejects run.googleapis.com,
cloud.googleapis.com, serving.knative.dev and autoscaling.knative.dev).
"""
from __future__ import annotations

import json
from typing import Mapping

PREFIX = "baseroll.dev/"
ROLLOUT_ID = PREFIX + "rollout-id"
BASE_DIGEST = PREFIX + "base-digest"
PREVIOUS_IMAGES = PREFIX + "previous-images"
PREVIOUS_BASE_URIS = PREFIX + "previous-base-image-uris"
STATE = PREFIX + "state"  # rolled | rolled-back
REASON = PREFIX + "reason"
MAX_REASON = 500


def rollout_id(track_name: str, base_digest: str) -> str:
    """Deterministic, so every redelivery of the same base push names the same rollout."""
    return f"{track_name}-{base_digest.removeprefix('sha256:')[:12]}"


def rolled(rollout: str, base_digest: str, previous: tuple[str, ...], previous_uris: tuple[str, ...] = ()) -> dict[str, str]:
    out = {
        ROLLOUT_ID: rollout,
        BASE_DIGEST: base_digest,
        PREVIOUS_IMAGES: json.dumps(list(previous), separators=(",", ":")),
        STATE: "rolled",
        REASON: "",
    }
    if any(previous_uris):
        out[PREVIOUS_BASE_URIS] = json.dumps(list(previous_uris), separators=(",", ":"))
    return out


def rolled_back(rollout: str, base_digest: str, reason: str) -> dict[str, str]:
    return {ROLLOUT_ID: rollout, BASE_DIGEST: base_digest, STATE: "rolled-back", REASON: reason[:MAX_REASON]}


def previous(annotations: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The images and base_image_uris a rolled service had before, as `rolled` recorded them."""
    def load(key: str) -> tuple[str, ...]:
        try:
            value = json.loads(annotations.get(key, "[]"))
        except json.JSONDecodeError:
            return ()
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    return load(PREVIOUS_IMAGES), load(PREVIOUS_BASE_URIS)
