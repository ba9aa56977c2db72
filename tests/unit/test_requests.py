"""The roll-request schema (topic `baseroll-requests`, docs/REQUESTS.md)."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from baseroll.contracts import ids, messages, requests
from baseroll.contracts.parsing import EventError
from baseroll.contracts.requests import SCHEMA, Request, ServiceFilter
from baseroll.contracts.roll import RollRequest
from baseroll.edge import envelope as envelopes
from baseroll.images.refs import ImageRef
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HOST = "us-docker.pkg.dev"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
BASE = f"{HOST}/platform/bases/python:3.12"
APP = f"{HOST}/tenants/apps/shop"
SVC = "projects/tenants-prod-a/locations/us-central1/services/shop"


def doc(**fields: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, **fields}


def parse(body: Any, attributes: dict[str, str] | None = None) -> Request:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.parse_request(requests.message(data, attributes))


# ------------------------------------------------------------------------------------------ good requests


def test_roll_base_defaults() -> None:
    req = parse(doc(base=BASE))
    assert req == Request(action="roll", kind="base", image=ImageRef(HOST, "platform/bases/python", "3.12"))
    assert req.digest is None and req.filter.is_empty and not req.dry_run


def test_roll_base_with_digest_in_ref_and_field() -> None:
    req = parse(doc(action="roll", base=f"{BASE}@{D1}", digest=D1, dry_run=True, reason="CVE-2024-0001"))
    assert req.image == ImageRef(HOST, "platform/bases/python", "3.12")  # the digest lives in .digest only
    assert (req.digest, req.dry_run, req.reason) == (D1, True, "CVE-2024-0001")


def test_roll_app_with_digest_field_or_ref() -> None:
    a = parse(doc(app=f"{APP}:v7", digest=D2))
    b = parse(doc(app=f"{APP}@{D2}"))
    assert (a.kind, a.image, a.digest) == ("app", ImageRef(HOST, "tenants/apps/shop", "v7"), D2)
    assert (b.kind, b.image, b.digest) == ("app", ImageRef(HOST, "tenants/apps/shop"), D2)


def test_roll_with_full_filter() -> None:
    req = parse(doc(base=BASE, filter={
        "projects": ["tenants-prod-b", "tenants-prod-a", "tenants-prod-a"],
        "regions": ["us-central1"],
        "labels": {"team": "shop", "tier": "web"},
        "services": [SVC],
    }))
    f = req.filter
    assert f.projects == ("tenants-prod-a", "tenants-prod-b")  # sorted, de-duplicated
    assert f.regions == ("us-central1",) and f.services == (SVC,)
    assert f.label_map == {"team": "shop", "tier": "web"}


@pytest.mark.parametrize("action", ["resume", "abort", "approve"])
def test_resume_and_abort(action: str) -> None:
    req = parse(doc(action=action, rollout_id="python-0123456789ab", reason="pager"))
    assert req == Request(action=action, rollout_id="python-0123456789ab", reason="pager")


def test_sweep_needs_nothing_else() -> None:
    assert parse(doc(action="sweep")) == Request(action="sweep")
    req = parse(doc(action="sweep", dry_run=True, filter={"regions": ["europe-west1"]}))
    assert req.dry_run and req.filter.regions == ("europe-west1",)


def test_matching_attributes_are_accepted() -> None:
    assert parse(doc(action="sweep"), {"schema": SCHEMA, "action": "sweep", "other": "x"}).action == "sweep"


# ------------------------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    "body, needle",
    [
        (doc(base=BASE, colour="red"), "unknown field: 'colour'"),
        (doc(base=BASE, b=1, a=2), "unknown fields: 'a', 'b'"),
        ({"base": BASE}, "schema: expected 'baseroll.dev/roll-request/v1', got None"),
        ({"schema": "baseroll.dev/roll-request/v2", "base": BASE}, "schema: expected"),
        (doc(action="rebuild"), "action: expected one of roll, resume, abort, sweep, approve, got 'rebuild'"),
        (doc(action=["roll"]), "action: expected one of"),
        (doc(), "base/app: a roll needs exactly one"),
        (doc(base=BASE, app=f"{APP}@{D1}"), "base/app: a roll needs exactly one"),
        (doc(base="python:3.12"), "base: 'python:3.12' is not fully qualified"),
        (doc(base=7), "base: must be a string"),
        (doc(base=f"{HOST}/platform/bases/python"), "base: a base track is a tag"),
        (doc(base=f"{HOST}/platform/bases/python@{D1}"), "base: a base track is a tag"),
        (doc(app=f"{APP}:v7"), "digest: required for 'app'"),
        (doc(app="shop@" + D1), "app: "),
        (doc(base=BASE, digest="sha256:abc"), "digest: expected sha256:<64 lower-case hex>, got 'sha256:abc'"),
        (doc(base=BASE, digest=5), "digest: expected sha256"),
        (doc(base=f"{BASE}@{D1}", digest=D2), f"digest: {D2} disagrees with the digest in base"),
        (doc(base=BASE, dry_run="true"), "dry_run: must be true or false, got 'true'"),
        (doc(base=BASE, dry_run=1), "dry_run: must be true or false"),
        (doc(base=BASE, reason=3), "reason: must be a string"),
        (doc(base=BASE, reason="x" * 501), "reason: longer than 500 characters (501)"),
        (doc(base=BASE, filter=[]), "filter: must be an object, got list"),
        (doc(base=BASE, filter={"zones": []}), "filter.zones: unknown field"),
        (doc(base=BASE, filter={"regions": ["us-central1", "moon"]}), "filter.regions[1]: 'moon' is not a region"),
        (doc(base=BASE, filter={"regions": "us-central1"}), "filter.regions: must be a list, got str"),
        (doc(base=BASE, filter={"projects": ["ok-project", "Bad_Project"]}), "filter.projects[1]: 'Bad_Project'"),
        (doc(base=BASE, filter={"projects": [None]}), "filter.projects[0]: None is not a project id"),
        (doc(base=BASE, filter={"services": ["shop"]}), "filter.services[0]: 'shop' is not a full service, job or worker pool name"),
        (doc(base=BASE, filter={"services": [SVC.replace("us-central1", "moon")]}), "filter.services[0]"),
        (doc(base=BASE, filter={"labels": {"Team": "x"}}), "filter.labels: 'Team' is not a label key"),
        (doc(base=BASE, filter={"labels": {"team": 1}}), "filter.labels.team: 1 is not a label value"),
        (doc(base=BASE, filter={"labels": ["team=x"]}), "filter.labels: must be an object"),
        (doc(base=BASE, filter={"regions": ["us-central1"] * 1001}), "filter.regions: more than 1000 entries"),
        (doc(base=BASE, rollout_id="r1"), "rollout_id: not allowed with action 'roll'"),
        (doc(action="sweep", base=BASE), "base: not allowed with action 'sweep'"),
        (doc(action="abort", dry_run=True, rollout_id="r1"), "dry_run: not allowed with action 'abort'"),
        (doc(action="abort"), "rollout_id: required"),
        (doc(action="resume", rollout_id="Bad_ID"), "rollout_id: 'Bad_ID' is not a rollout id"),
        (doc(action="resume", rollout_id="-leading"), "rollout_id: '-leading'"),
        (doc(action="resume", rollout_id="a" * 64), "rollout_id: "),
        (doc(action="resume", rollout_id=12), "rollout_id: 12 is not a rollout id"),
        (doc(action="approve"), "rollout_id: required"),
        (doc(action="approve", rollout_id="python-1", filter={}), "filter: not allowed with action 'approve'"),
    ],
)
def test_bad_field_is_named(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(EventError) as exc:
        parse(body)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'{"schema": "x", "schema": "y"}', "schema: duplicate field"),
        (b"[" * 100_000, "larger than 65536 bytes"),
        (b"[" * 5_000 + b"]" * 5_000, "not valid JSON"),  # nesting beyond the parser's recursion limit
        (b"1" * 5_000, "not valid JSON"),  # beyond Python's int-digit limit (a ValueError, not a JSONDecodeError)
        (json.dumps(doc(base=BASE, reason="x" * 70_000)).encode(), "larger than 65536 bytes"),
    ],
)
def test_bad_data(data: bytes, needle: str) -> None:
    with pytest.raises(EventError, match=needle.replace("[", r"\[")):
        parse(data)


def test_attributes_must_agree_with_data() -> None:
    with pytest.raises(EventError, match="attributes.action: 'abort' disagrees with action 'roll'"):
        parse(doc(base=BASE), {"action": "abort"})
    with pytest.raises(EventError, match="attributes.schema"):
        parse(doc(base=BASE), {"schema": "v0"})


def test_parse_envelope_unwraps_eventarc() -> None:
    data = base64.b64encode(requests.to_message(action="sweep")).decode()
    env = {"message": {"data": data, "messageId": "42", "attributes": {"action": "sweep"}}, "subscription": "s"}
    assert requests.parse_request(envelopes.pubsub_message(env)) == Request(action="sweep")


# ------------------------------------------------------------------------------------------ round trip


ROUND_TRIP = [
    Request(action="roll", kind="base", image=ImageRef(HOST, "platform/bases/python", "3.12")),
    Request(action="roll", kind="base", image=ImageRef(HOST, "platform/bases/python", "3.12"), digest=D1,
            dry_run=True, reason="nightly", filter=ServiceFilter(projects=["tenants-prod-a"], regions=["us-east1"],
                                                                 labels={"team": "a"}, services=[SVC])),
    Request(action="roll", kind="app", image=ImageRef(HOST, "tenants/apps/shop"), digest=D2),
    Request(action="roll", kind="app", image=ImageRef(HOST, "tenants/apps/shop", "v1"), digest=D2),
    Request(action="sweep"),
    Request(action="sweep", dry_run=True, filter=ServiceFilter(regions=["europe-west1"])),
    Request(action="resume", rollout_id="python-0123456789ab"),
    Request(action="abort", rollout_id="x", reason="bad canary"),
]


@pytest.mark.parametrize("req", ROUND_TRIP)
def test_round_trip_from_request(req: Request) -> None:
    data = requests.to_message(req)
    assert parse(data, requests.attributes(req)) == req
    assert requests.to_message(parse(data)) == data  # canonical: a fixed point


def test_round_trip_from_fields_is_canonical() -> None:
    data = requests.to_message(
        base=f"{BASE}@{D1}", dry_run=True, reason="r",
        filter={"regions": ["us-central1", "europe-west1"], "labels": {"team": "a"}},
    )
    req = parse(data)
    canonical = requests.to_message(req)
    assert json.loads(canonical) == {
        "schema": SCHEMA, "action": "roll", "base": BASE, "digest": D1, "dry_run": True, "reason": "r",
        "filter": {"regions": ["europe-west1", "us-central1"], "labels": {"team": "a"}},
    }
    assert canonical == json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":")).encode()


def test_to_message_omits_defaults() -> None:
    assert json.loads(requests.to_message(action="sweep")) == {"schema": SCHEMA, "action": "sweep"}
    assert json.loads(requests.to_message(Request(action="sweep", reason=""))) == {"schema": SCHEMA, "action": "sweep"}


# ------------------------------------------------------------------------------------------ to the core


def test_to_roll_request_carries_filter_and_reason() -> None:
    req = parse(doc(base=f"{BASE}@{D1}", dry_run=True, reason="cve", filter={"labels": {"team": "a"},
                                                                             "regions": ["us-central1"]}))
    scoped = requests.to_roll_request(req, "msg-1")
    assert scoped.roll == RollRequest(kind="base", image=ImageRef(HOST, "platform/bases/python", "3.12"), digest=D1,
                                      source="request", event_id="msg-1", dry_run=True)
    assert scoped.filter == req.filter and scoped.reason == "cve"


def test_to_roll_request_refuses_other_actions() -> None:
    with pytest.raises(ValueError, match="not a roll"):
        requests.to_roll_request(Request(action="sweep"), "m")


# ------------------------------------------------------------------------------------------ filter matching


@pytest.mark.parametrize(
    "flt, name, labels, expected",
    [
        (ServiceFilter(), "anything", {}, True),
        (ServiceFilter(projects=["tenants-prod-a"]), SVC, {}, True),
        (ServiceFilter(projects=["tenants-prod-b"]), SVC, {}, False),
        (ServiceFilter(regions=["us-central1", "europe-west1"]), SVC, {}, True),
        (ServiceFilter(regions=["europe-west1"]), SVC, {}, False),
        (ServiceFilter(regions=["us-central1"]), "not/a/service/name", {}, False),
        (ServiceFilter(services=[SVC]), SVC, {}, True),
        (ServiceFilter(services=[SVC]), SVC.replace("shop", "cart"), {}, False),
        (ServiceFilter(labels={"team": "a"}), SVC, {"team": "a", "x": "y"}, True),
        (ServiceFilter(labels={"team": "a"}), SVC, {"team": "b"}, False),
        (ServiceFilter(labels={"team": "a"}), SVC, {}, False),
        (ServiceFilter(projects=["tenants-prod-a"], regions=["us-central1"], labels={"team": "a"}, services=[SVC]),
         SVC, {"team": "a"}, True),
    ],
)
def test_filter_matches(flt: ServiceFilter, name: str, labels: dict[str, str], expected: bool) -> None:
    assert flt.matches(name, labels) is expected


@pytest.mark.parametrize(
    "service_id, valid",
    [("a" * 49, True), ("a" * 50, False), ("a-b", True), ("a-", False), ("1a", False), ("A", False)],
)
def test_service_ids_have_one_rule_in_requests_and_messages(service_id: str, valid: bool) -> None:
    """Cloud Run service ids are fewer than 50 characters (docs/GOOGLE_APIS.md#resource-names); a roll
    request's filter and a worker task agree, because both read contracts.ids."""
    name = f"projects/tenants-prod-a/locations/us-central1/services/{service_id}"
    task = messages.Task(messages.Rollout("python-111111111111", "python", BASE, D1), name, 0,
                         (f"{APP}@{D1}",), {"0": f"{APP}@{D2}"})
    outcomes = []
    for parse_one in (lambda: parse(doc(base=BASE, filter={"services": [name]})),
                      lambda: messages.decode(requests.message(*messages.encode(task)))):
        try:
            parse_one()
            outcomes.append(True)
        except EventError:
            outcomes.append(False)
    assert outcomes == [valid, valid]


@pytest.mark.parametrize("project, valid", [
    ("tenants-prod-a", True), ("123456789012", True), ("abcde", False), ("a" * 31, False), ("tenant-", False),
])
def test_project_ids_and_numbers_in_service_names(project: str, valid: bool) -> None:
    name = f"projects/{project}/locations/us-central1/services/shop"
    assert bool(ids.SERVICE_NAME.fullmatch(name)) is valid
    assert bool(ids.PROJECT.fullmatch(project)) is valid


def test_filter_is_hashable_and_canonical() -> None:
    a = ServiceFilter(regions=["b-b1", "a-a1"], labels={"y": "1", "x": "2"})
    b = ServiceFilter(regions=("a-a1", "b-b1", "a-a1"), labels=(("x", "2"), ("y", "1")))
    assert a == b and hash(a) == hash(b)
    assert hash(Request(action="sweep", filter=a)) == hash(Request(action="sweep", filter=b))


# ------------------------------------------------------------------------------------------ property test


_KEYS = ["schema", "action", "base", "app", "digest", "filter", "dry_run", "rollout_id", "reason", "extra"]
_FILTER_KEYS = ["projects", "regions", "labels", "services", "zones"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from([SCHEMA, "roll", "resume", "abort", "sweep", BASE, f"{BASE}@{D1}", f"{APP}@{D2}", APP, D1,
                     "sha256:abc", "us-central1", "moon", "tenants-prod-a", SVC, "python-1", "", "Bad_ID"]),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12,
)
_filters = st.dictionaries(st.sampled_from(_FILTER_KEYS), st.one_of(
    _json, st.lists(_scalars, max_size=3), st.dictionaries(st.text(max_size=8), _scalars, max_size=3)), max_size=4)
_docs = st.dictionaries(st.sampled_from(_KEYS), st.one_of(_scalars, _filters, _json), max_size=6)
_attributes = st.dictionaries(st.sampled_from(["schema", "action", "x"]), st.sampled_from([SCHEMA, "roll", "sweep", ""]),
                              max_size=2)


_good_filter = st.fixed_dictionaries({}, optional={
    "projects": st.lists(st.sampled_from(["tenants-prod-a", "tenants-prod-b", "123456"]), max_size=2),
    "regions": st.lists(st.sampled_from(["us-central1", "europe-west1"]), max_size=2),
    "labels": st.dictionaries(st.sampled_from(["team", "tier"]), st.sampled_from(["a", "web", ""]), max_size=2),
    "services": st.lists(st.just(SVC), max_size=1),
})
_common = {"dry_run": st.booleans(), "reason": st.text(max_size=20), "filter": _good_filter}
_valid = st.one_of(
    st.fixed_dictionaries({"base": st.sampled_from([BASE, f"{BASE}@{D1}"])},
                          optional={"digest": st.just(D1), **_common}),
    st.fixed_dictionaries({"app": st.sampled_from([f"{APP}@{D2}", f"{APP}:v1@{D2}"])},
                          optional={"digest": st.just(D2), **_common}),
    st.fixed_dictionaries({"action": st.just("sweep")}, optional={"dry_run": st.booleans(), "filter": _good_filter}),
    st.fixed_dictionaries({"action": st.sampled_from(["resume", "abort"]), "rollout_id": st.just("python-1")},
                          optional={"reason": st.text(max_size=20)}),
).map(lambda d: {"schema": SCHEMA, **d})


def _mutate(d: dict[str, Any], key: str, value: Any, drop: bool) -> dict[str, Any]:
    """A valid request with one field replaced by junk, or removed."""
    d = dict(d)
    if drop:
        d.pop(key, None)
    else:
        d[key] = value
    return d


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


_inputs = st.one_of(
    _valid.map(_encode),
    st.builds(_mutate, _valid, st.sampled_from(_KEYS), st.one_of(_scalars, _filters, _json), st.booleans()).map(_encode),
    st.builds(lambda d, k, v: _encode({**d, "filter": {k: v}}), _valid, st.sampled_from(_FILTER_KEYS),
              st.one_of(_json, st.lists(_scalars, max_size=3), st.dictionaries(st.text(max_size=8), _scalars))),
    _docs.map(_encode),
    _docs.map(lambda d: _encode({"schema": SCHEMA, **d})),  # past the schema check, into the fields
    _json.map(_encode),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_inputs, attributes=_attributes)
def test_parse_request_raises_only_event_error(data: bytes, attributes: dict[str, str]) -> None:
    try:
        req = requests.parse_request(requests.message(data, attributes))
    except EventError as exc:
        assert str(exc)  # always a reason
        return
    # Whatever is accepted survives the canonical round trip.
    assert requests.parse_request(requests.message(requests.to_message(req))) == req


# ------------------------------------------------------------------------------------------ the documentation


def _documented_messages() -> list[tuple[bytes, dict[str, str]]]:
    """Every JSON example and every `gcloud pubsub topics publish` message in docs/REQUESTS.md."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "REQUESTS.md").read_text()
    found: list[tuple[bytes, dict[str, str]]] = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        try:
            found.append((json.dumps(json.loads(block)).encode(), {}))
        except json.JSONDecodeError:  # one document per line
            found.extend((line.encode(), {}) for line in block.splitlines() if line.strip())
    for cmd in re.findall(r"gcloud pubsub topics publish baseroll-requests(.*?)'\n", text, re.S):
        attrs = dict(kv.split("=", 1) for kv in re.search(r"--attribute=(\S+)", cmd)[1].split(","))
        found.append((re.search(r"--message='(.*)", cmd, re.S)[1].encode(), attrs))
    return found


def test_documented_examples_are_valid() -> None:
    examples = _documented_messages()
    assert len(examples) >= 8
    for data, attrs in examples:
        requests.parse_request(requests.message(data, attrs))
