"""Identifiers: Google Cloud resource names and baseroll's rollout ids, each defined once.

The limits are the ones the real APIs enforce; docs/GOOGLE_APIS.md#resource-names gives the
source of each. Every pattern is meant for `fullmatch`.
"""
from __future__ import annotations

import re

# Project id: 6-30 characters, lower-case letters, digits and hyphens, starting with a letter and
# not ending with a hyphen (Resource Manager, "Creating and managing projects").
_PROJECT_ID = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
PROJECT_ID = re.compile(_PROJECT_ID)
# Project number: server-assigned decimal digits. Google documents no length; 20 digits hold any
# unsigned 64-bit value.
_PROJECT_NUMBER = r"[0-9]{1,20}"
PROJECT_NUMBER = re.compile(_PROJECT_NUMBER)
# Cloud Run resource names take either ("{project} can be project id or number", run_v2 GetServiceRequest).
PROJECT = re.compile(rf"{_PROJECT_ID}|{_PROJECT_NUMBER}")
# Cloud Build's `projectId` may still carry a legacy domain-scoped id ("example.com:my-project").
BUILD_PROJECT_ID = re.compile(rf"(?:[a-z0-9.-]{{1,63}}:)?{_PROJECT_ID}")

# Region: Google publishes no pattern; every region name has this shape (us-central1,
# northamerica-northeast2). ListServices refuses the "-" wildcard, so a region is always concrete.
_REGION = r"[a-z]+-[a-z]+[0-9]+"
REGION = re.compile(_REGION)

# Cloud Run service id: starts with a letter, does not end with a hyphen, fewer than 50 characters
# (run_v2 CreateServiceRequest.service_id).
_SERVICE_ID = r"[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?"
SERVICE_ID = re.compile(_SERVICE_ID)
# A service's full name, as Cloud Run v2 returns it in `Service.name`.
SERVICE_NAME = re.compile(
    rf"projects/(?P<project>{_PROJECT_ID}|{_PROJECT_NUMBER})/locations/(?P<region>{_REGION})"
    rf"/services/(?P<service>{_SERVICE_ID})"
)
# Worker pool id: the service id's rule (run_v2 CreateWorkerPoolRequest.worker_pool_id). Job id: its
# docstring states no rule; a DNS label (at most 63 characters) is accepted (docs/GOOGLE_APIS.md#resource-names).
_JOB_ID = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
# A workload's full name: a service's, a job's or a worker pool's (`Job.name`, `WorkerPool.name`).
WORKLOAD_NAME = re.compile(
    rf"projects/(?P<project>{_PROJECT_ID}|{_PROJECT_NUMBER})/locations/(?P<region>{_REGION})"
    rf"/(?:services/(?P<service>{_SERVICE_ID})|jobs/(?P<job>{_JOB_ID})|workerPools/(?P<pool>{_SERVICE_ID}))"
)
# The kind of workload each collection of a name holds (fleet.view.WorkloadKind).
KIND_OF_GROUP = {"service": "service", "job": "job", "pool": "worker-pool"}


def workload_kind(name: str) -> str | None:
    """"service", "job" or "worker-pool" for a well-formed workload name; None for anything else."""
    match = WORKLOAD_NAME.fullmatch(name)
    if match is None:
        return None
    return next(kind for group, kind in KIND_OF_GROUP.items() if match.group(group) is not None)

# Labels (Resource Manager label requirements): a key is 1-63 characters, starts with a lower-case
# letter; a value is 0-63 characters; both only lower-case letters, digits, `_` and `-`. Google also
# allows international characters; baseroll accepts the ASCII subset only.
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")

# Pub/Sub topic id: 3-255 characters, starts with a letter, then letters, digits and `-_.~+%`;
# never starts with "goog" (Pub/Sub resource names).
TOPIC_ID = re.compile(r"(?!goog)[A-Za-z][A-Za-z0-9._~+%-]{2,254}")

# Rollout id: baseroll's own (contracts.ledger.rollout_id builds it from a sanitised track name and
# digests, and every id it builds matches: tests/unit/test_rollout_ids.py). At most 63 characters of
# [a-z0-9-], starting and ending with a letter or digit, so it also fits a label value, a DNS label,
# an OCI tag and a Firestore document id.
ROLLOUT_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# Base track name (config `base_tracks[].name`): 1-63 letters, digits, `.`, `_` or `-`, starting
# with a letter or digit. Rollout ids are built from a sanitised form of it.
TRACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# Firestore database id: "(default)", or 4-63 lower-case letters, digits and hyphens, starting with
# a letter and not ending with a hyphen (Firestore, "Manage databases").
FIRESTORE_DATABASE = re.compile(r"\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9]")
