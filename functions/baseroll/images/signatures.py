"""Signatures do not follow a rebase (docs/OCI.md#rebase, item 10): a signature covers a digest, and the
rebased image has a new one. baseroll reports that per service and, where policy requires
signatures, never deploys an unsigned rebased image: it asks a signing step (a Pub/Sub topic the
config names) to sign it and holds the service back until a signature exists.

Signatures are found the way cosign stores them: the tag `sha256-<hex>.sig` in the image's repository.
"""
from __future__ import annotations

import json

from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient

SIGN_REQUEST_SCHEMA = "baseroll.dev/sign-request/v1"


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-", 1) + ".sig"


def is_signed(client: RegistryClient, image: ImageRef) -> bool:
    assert image.digest, "a signature covers a digest"
    return client.head_manifest(image.with_tag(signature_tag(image.digest))) is not None


def sign_request(image: ImageRef, replaces: ImageRef, rollout_id: str) -> bytes:
    """The message a signing step receives: sign `image`, which replaces the signed `replaces`."""
    return json.dumps({"schema": SIGN_REQUEST_SCHEMA, "image": str(image), "replaces": str(replaces),
                       "rollout_id": rollout_id}, sort_keys=True).encode()
