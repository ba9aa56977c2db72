"""Permanent or transient: the one table every entry point decides a failure by.

A *permanent* failure cannot succeed on redelivery (the message, or what it names, is wrong): the
entry point acknowledges it, logs why (`event.rejected`, `task.failed`) and records it where a
record exists. A *transient* one may succeed later: the entry point raises, so Pub/Sub redelivers
with backoff, and after the subscription's last attempt the message goes to its dead-letter topic
(infra/terraform/README.md#dead-letter-topics). Anything this table does not name is transient:
a bug redelivered a few times and then dead-lettered is seen; a bug acknowledged is lost.
docs/RELIABILITY.md#error-classification lists the same table with the test of each row.

No Google SDK is imported here: a google.api_core error is recognised by its module and HTTP code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from baseroll.contracts.parsing import EventError
from baseroll.fleet.view import FleetError, StaleService
from baseroll.images.oci import OCIError
from baseroll.images.rebase import RebaseError
from baseroll.images.refs import RefError
from baseroll.images.registry import RegistryError
from baseroll.rollout.lease import Busy

# Registry error codes (docs/OCI.md#distribution-api) that the same request will meet again.
PERMANENT_REGISTRY_CODES = frozenset({
    "DENIED", "UNAUTHORIZED", "NAME_UNKNOWN", "NAME_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "TAG_INVALID", "DIGEST_INVALID", "SIZE_INVALID", "UNSUPPORTED",
})
RETRYABLE_STATUS = frozenset({408, 429})  # the 4xx that mean "later", as the registry client retries them
# google.api_core errors whose HTTP code means the call will never succeed as made: NotFound and
# PermissionDenied (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2).
PERMANENT_GOOGLE_CODES = frozenset({403, 404})


class Refused(Exception):
    """A message the edge refuses before doing anything (e.g. an image outside the allow-list)."""


class CorruptRecord(Exception):
    """A stored rollout record that cannot be read as one (fields missing or of the wrong type)."""


@dataclass(frozen=True)
class Verdict:
    permanent: bool
    kind: str  # the table row, as logged (`kind=`) and listed in docs/RELIABILITY.md
    reason: str


@dataclass(frozen=True)
class Row:
    kind: str
    permanent: bool
    matches: Callable[[BaseException], bool]
    what: str  # for the docs table


def _registry_status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, RegistryError) else None


def _google_code(exc: BaseException) -> int | None:
    if not type(exc).__module__.startswith("google.api_core"):
        return None
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _registry_unavailable(exc: BaseException) -> bool:
    status = _registry_status(exc)
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


def _registry_refused(exc: BaseException) -> bool:
    if not isinstance(exc, RegistryError):
        return False
    status = exc.status
    return exc.code in PERMANENT_REGISTRY_CODES or (status is not None and 400 <= status < 500)


TABLE: tuple[Row, ...] = (
    Row("malformed-event", True, lambda e: isinstance(e, EventError),
        "the event or message does not parse (EventError)"),
    Row("refused", True, lambda e: isinstance(e, Refused),
        "a roll request for an image on a host outside the allow-list; a task whose track or target "
        "image is not allow-listed"),
    Row("corrupt-record", True, lambda e: isinstance(e, CorruptRecord),
        "the rollout record cannot be read as one"),
    Row("registry-unavailable", False, _registry_unavailable,
        "registry HTTP 408, 429 or 5xx (after the client's own retries)"),
    Row("registry-refused", True, _registry_refused,
        "registry DENIED, UNAUTHORIZED, NAME_UNKNOWN, MANIFEST_UNKNOWN (an app digest or a tracked tag that no "
        "longer exists), BLOB_UNKNOWN, *_INVALID, UNSUPPORTED, and any other 4xx"),
    Row("registry-unreachable", False, lambda e: isinstance(e, RegistryError),
        "any other registry failure: connection refused or reset, a timeout, a body cut short"),
    Row("bad-image", True, lambda e: isinstance(e, (OCIError, RebaseError, RefError)),
        "image content or a reference that is not valid (OCIError, RebaseError, RefError)"),
    Row("cloud-run-refused", True, lambda e: isinstance(e, FleetError) or _google_code(e) in PERMANENT_GOOGLE_CODES,
        "Cloud Run NotFound (a service deleted after planning) or PermissionDenied; any FleetError"),
    Row("cloud-run-conflict", False, lambda e: isinstance(e, StaleService),
        "the service changed while it was being updated (etag, ABORTED)"),
    Row("step-busy", False, lambda e: isinstance(e, Busy),
        "another invocation holds the coordinator step"),
)
UNCLASSIFIED = "unclassified"  # anything else: transient


def classify(exc: BaseException) -> Verdict:
    """The first row of TABLE that matches `exc`; transient when none does."""
    reason = str(exc) or type(exc).__name__
    for row in TABLE:
        if row.matches(exc):
            return Verdict(row.permanent, row.kind, reason)
    return Verdict(False, UNCLASSIFIED, f"{type(exc).__name__}: {reason}")
