"""Ids that always parse (issue #12): every rollout id the planner builds, from any track name or
app repository name, is accepted by every parser of baseroll's own messages and requests.

A rollout id used to be `{track}-{digest[:12]}`; a track named `python_3.12` (or an app repository
`py.worker`) gave an id the step parser refused, so its steps were dropped as malformed and the
rollout stayed "running" for ever.
"""
from __future__ import annotations

import json

import pytest
from baseroll.config import ConfigError
from baseroll.config import parse as parse_config
from baseroll.contracts import ids, ledger, messages, requests
from baseroll.contracts.messages import Rollout, Step
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.contracts.requests import ServiceFilter
from baseroll.contracts.roll import RollRequest
from baseroll.images.refs import ImageRef
from baseroll.rollout import fakes, planner
from hypothesis import given, settings
from hypothesis import strategies as st

DIGESTS = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)
# Any text at all: what a config or an event could carry, before anything validates it.
NAMES = st.text(min_size=0, max_size=120)
# Repository path segments as OCI allows them (lower-case, digits, separators . _ - and runs of them).
REPO_SEGMENTS = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+){0,8}", fullmatch=True)
SCOPES = st.one_of(st.just(ServiceFilter()),
                   st.builds(ServiceFilter, projects=st.just(("tenants-aaaaa",)), regions=st.just(("us-east1",))))


def parses_everywhere(rollout_id: str) -> None:
    """The id as the coordinator step, the worker task and an operator's abort carry it."""
    assert ids.ROLLOUT_ID.fullmatch(rollout_id), rollout_id
    ro = Rollout(rollout_id, "any", f"{fakes.REGISTRY}/bases/python:3.12", "sha256:" + "a" * 64)
    data, attributes = messages.encode(Step(ro, wave=0, cursor=0, seq=1))
    decoded = messages.decode(PubSubMessage("1", data, attributes, None, None))
    assert isinstance(decoded, Step) and decoded.rollout.rollout_id == rollout_id
    doc = {"schema": requests.SCHEMA, "action": "abort", "rollout_id": rollout_id}
    assert requests.parse_document(json.loads(json.dumps(doc))).rollout_id == rollout_id


@settings(max_examples=200, deadline=None)
@given(name=NAMES, digest=DIGESTS, scope=SCOPES)
def test_every_id_built_from_any_track_name_parses(name: str, digest: str, scope: ServiceFilter) -> None:
    request = RollRequest("base", ImageRef(fakes.REGISTRY, "bases/python", "3.12"), None, "sweep", "e-1")
    parses_everywhere(planner.rollout_id_for(request, name, digest, scope))


@settings(max_examples=200, deadline=None)
@given(segments=st.lists(REPO_SEGMENTS, min_size=1, max_size=4), digest=DIGESTS, scope=SCOPES)
def test_every_id_built_for_any_app_repository_parses(segments: list[str], digest: str, scope: ServiceFilter) -> None:
    request = RollRequest("app", ImageRef(fakes.REGISTRY, "/".join(segments), "prod"), None, "request", "e-1")
    name = planner.track_name(fakes.config(), request)
    parses_everywhere(planner.rollout_id_for(request, name, digest, scope))


@settings(max_examples=200, deadline=None)
@given(a=NAMES, b=NAMES, digest=DIGESTS)
def test_different_names_name_different_rollouts(a: str, b: str, digest: str) -> None:
    if a != b:
        assert ledger.rollout_id(a, digest) != ledger.rollout_id(b, digest)


@pytest.mark.parametrize("name, expected", [
    ("python", "python-0123456789ab"),  # a clean name keeps the id it always had
    ("python_3.12", "python-3-12-"),
    ("Node.JS 22", "node-js-22-"),
    ("___", "track-"),
])
def test_ids_read_as_their_track(name: str, expected: str) -> None:
    rollout_id = ledger.rollout_id(name, "sha256:0123456789abcdef" + "0" * 48)
    assert rollout_id.startswith(expected) and rollout_id.endswith("-0123456789ab")
    parses_everywhere(rollout_id)


@pytest.mark.parametrize("name", ["python_3.12", "node-22", "Py.3", "a", "x" * 63])
def test_config_accepts_track_names_of_letters_digits_dots_underscores_hyphens(name: str) -> None:
    doc = {"projects": ["tenants-aaaaa"], "regions": ["us-east1"], "allowed_registries": [fakes.REGISTRY],
           "base_tracks": [{"name": name, "image": f"{fakes.REGISTRY}/bases/python:3.12"}]}
    assert parse_config(doc).base_tracks[0].name == name


@pytest.mark.parametrize("name", ["-python", ".hidden", "python/3.12", "py thon", "x" * 64, "pythön", "py\n"])
def test_config_refuses_other_track_names(name: str) -> None:
    doc = {"projects": ["tenants-aaaaa"], "regions": ["us-east1"], "allowed_registries": [fakes.REGISTRY],
           "base_tracks": [{"name": name, "image": f"{fakes.REGISTRY}/bases/python:3.12"}]}
    with pytest.raises(ConfigError, match=r"base_tracks\[0\]\.name"):
        parse_config(doc)
