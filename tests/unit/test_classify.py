"""The one classification table (`edge.classify`): each exception type the entry points can see,
permanent (acknowledged) or transient (raised, redelivered); docs/RELIABILITY.md lists the same rows."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from baseroll.contracts.parsing import EventError
from baseroll.edge import classify
from baseroll.edge.classify import CorruptRecord, Refused
from baseroll.fleet.view import FleetError, StaleService
from baseroll.images.oci import OCIError
from baseroll.images.rebase import RebaseError
from baseroll.images.refs import RefError
from baseroll.images.registry import RegistryError
from baseroll.rollout.lease import Busy
from google.api_core import exceptions as gexc

DOC = Path(__file__).resolve().parents[2] / "docs" / "RELIABILITY.md"


def _reg(status: int | None = None, code: str | None = None) -> RegistryError:
    return RegistryError("registry said no", status, code)


CASES = [
    (EventError("bad json"), True, "malformed-event"),
    (Refused("evil.example.com is not allow-listed"), True, "refused"),
    (CorruptRecord("status is a int"), True, "corrupt-record"),
    (_reg(403, "DENIED"), True, "registry-refused"),
    (_reg(None, "DENIED"), True, "registry-refused"),  # a host outside the allow-list, refused before any I/O
    (_reg(404, "NOT_FOUND"), True, "registry-refused"),
    (_reg(404, "MANIFEST_UNKNOWN"), True, "registry-refused"),  # an app digest or a tracked tag that is gone
    (_reg(404, "NAME_UNKNOWN"), True, "registry-refused"),
    (_reg(None, "MANIFEST_INVALID"), True, "registry-refused"),
    (_reg(400), True, "registry-refused"),
    (_reg(401, "UNAUTHORIZED"), True, "registry-refused"),
    (_reg(405), True, "registry-refused"),
    (_reg(410), True, "registry-refused"),
    (_reg(408), False, "registry-unavailable"),
    (_reg(429, "TOOMANYREQUESTS"), False, "registry-unavailable"),
    (_reg(429, "DENIED"), False, "registry-unavailable"),  # the status says "later", whatever the code
    (_reg(500), False, "registry-unavailable"),
    (_reg(503, "UNAVAILABLE"), False, "registry-unavailable"),
    (_reg(503, "UNAUTHORIZED"), False, "registry-unavailable"),  # a token server down is not a refusal
    (_reg(), False, "registry-unreachable"),  # connection refused, a timeout, a body cut short
    (OCIError("manifest: not valid JSON"), True, "bad-image"),
    (RebaseError("old base is not a prefix"), True, "bad-image"),
    (RefError("bad reference"), True, "bad-image"),
    (FleetError("service projects/p/locations/r/services/s not found"), True, "cloud-run-refused"),
    (gexc.NotFound("no such service"), True, "cloud-run-refused"),
    (gexc.PermissionDenied("run.services.get denied"), True, "cloud-run-refused"),
    (gexc.ServiceUnavailable("try later"), False, "unclassified"),
    (gexc.TooManyRequests("quota"), False, "unclassified"),
    (gexc.DeadlineExceeded("slow"), False, "unclassified"),
    (StaleService("etag"), False, "cloud-run-conflict"),
    (Busy("held"), False, "step-busy"),
    (TimeoutError("read timed out"), False, "unclassified"),
    (ConnectionResetError("reset"), False, "unclassified"),
    (KeyError("bug"), False, "unclassified"),
    (TypeError("bug"), False, "unclassified"),
]


@pytest.mark.parametrize("exc, permanent, kind", CASES, ids=[f"{type(c[0]).__name__}-{c[2]}-{i}"
                                                              for i, c in enumerate(CASES)])
def test_each_exception_type_is_permanent_or_transient(exc: Exception, permanent: bool, kind: str) -> None:
    verdict = classify.classify(exc)
    assert (verdict.permanent, verdict.kind) == (permanent, kind)
    assert verdict.reason


def test_an_unclassified_failure_names_its_type() -> None:
    assert classify.classify(KeyError("x")).reason.startswith("KeyError")


def test_every_row_of_the_table_is_in_reliability_md_with_the_same_decision() -> None:
    text = DOC.read_text()
    assert "## Error classification" in text
    section = text.split("## Error classification", 1)[1]
    for row in classify.TABLE:
        line = next((ln for ln in section.splitlines() if f"`{row.kind}`" in ln), None)
        assert line is not None, f"row {row.kind} missing from docs/RELIABILITY.md"
        decision = "permanent" if row.permanent else "transient"
        assert re.search(rf"\b{decision}\b", line), f"{row.kind}: the doc does not say {decision}"
    assert f"`{classify.UNCLASSIFIED}`" in section
