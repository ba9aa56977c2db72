"""Where rollout records live: the port, and its adapter that keeps each record as an OCI artifact
tagged with the rollout id in a configured repository of an allow-listed registry."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Protocol

from baseroll.clock import SYSTEM, Clock
from baseroll.contracts.records import RolloutRecord
from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, RegistryError

ARTIFACT_TYPE = "application/vnd.baseroll.rollout.v1+json"


class RecordStore(Protocol):
    def get(self, rollout_id: str) -> RolloutRecord | None: ...

    def put(self, record: RolloutRecord) -> None:
        """Store `record` (last writer wins), stamping its `updated` with the time of the write."""
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


class RegistryRecordStore:
    def __init__(self, client: RegistryClient, repository: ImageRef, clock: Clock = SYSTEM) -> None:
        self._client = client
        self._repo = repository
        self._clock = clock

    def get(self, rollout_id: str) -> RolloutRecord | None:
        try:
            manifest = self._client.get_manifest(self._repo.with_tag(rollout_id))
        except RegistryError as exc:
            if exc.status == 404 or exc.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
                return None
            raise
        raw = self._client.get_blob(self._repo, manifest.data["config"]["digest"], max_bytes=1024 * 1024)
        doc = json.loads(raw)
        return RolloutRecord(**{k: v for k, v in doc.items() if k in RolloutRecord.__dataclass_fields__})

    def put(self, record: RolloutRecord) -> None:
        record.updated = self._clock.now()
        config = oci.canonical_json(asdict(record))
        digest = self._client.put_blob(self._repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": ARTIFACT_TYPE, "digest": digest, "size": len(config)},
            "layers": [],
        }
        self._client.put_manifest(self._repo.with_tag(record.rollout_id), oci.canonical_json(manifest), oci.OCI_MANIFEST)
