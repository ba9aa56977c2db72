"""Lineage per track (`rollout.lineage`), the plan over it, the planner recording it, and `version_tags` in config.

One base repository holds two tracks, python:3.11 and python:3.12, whose images share their OS
layer. A version of the 3.12 track is a digest its own tag pointed to (now, recorded, or a tag
matching its `version_tags`); every other tag is another track's, and a listed (Artifact
Registry) version nobody's tag or record ties to is of unknown lineage.
"""
from __future__ import annotations

import pytest
from baseroll import config as config_mod
from baseroll.config import BaseTrack, ConfigError, Labels
from baseroll.contracts.roll import RollRequest
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.images.match import BaseVersion, ImageFacts
from baseroll.images.oci import ANNOTATION_BASE_DIGEST as DIGEST_KEY
from baseroll.images.oci import ANNOTATION_BASE_NAME as NAME_KEY
from baseroll.rollout import fakes, planner, policy
from baseroll.rollout.fakes import REGISTRY, layer
from baseroll.rollout.lineage import (
    TrackLineage,
    is_version_tag,
    lineage_of,
    siblings,
    verdict,
)
from baseroll.rollout.plan import make_plan

REPO = f"{REGISTRY}/bases/python"
PY312 = BaseTrack("python", refs.parse(f"{REPO}:3.12"))
PY312_TAGGED = BaseTrack("python", refs.parse(f"{REPO}:3.12"), ("3.12-*", "3.12.*"))
PY311 = BaseTrack("python311", refs.parse(f"{REPO}:3.11"), ("3.11-*",))
NODE = BaseTrack("node", refs.parse(f"{REGISTRY}/bases/node:22"))


def version(*names: str) -> BaseVersion:
    layers = tuple(layer(n) for n in names)
    return BaseVersion(fakes.FakeRegistry().manifest_of(layers).digest, layers)


V311 = version("os", "py-3.11.1")  # 3.11's tag points here now
V311_OLD = version("os-old", "py-3.11.0")  # 3.11's previous version, untagged
V312_OLD = version("os", "py-3.12.1")  # 3.12's previous version
V312_NEW = version("os", "py-3.12.2")  # 3.12's tag points here now
V_UNTIED = version("os", "py-3.13-rc")  # listed by Artifact Registry, no tag, no record
ALL = {v.digest: v for v in (V311, V311_OLD, V312_OLD, V312_NEW, V_UNTIED)}
TAGS = {"3.12": V312_NEW.digest, "3.12-p2": V312_NEW.digest, "3.12-p1": V312_OLD.digest,
        "3.11": V311.digest, "3.11-p1": V311.digest}


def lineage(track: BaseTrack = PY312, *, tags: dict[str, str] | None = None, listed: tuple[str, ...] = (),
            recorded: dict[str, list[str]] | None = None, others: tuple[BaseTrack, ...] = ()) -> TrackLineage:
    return lineage_of(track, others, new=V312_NEW, tags=TAGS if tags is None else tags, versions=ALL,
                      listed=listed, recorded=recorded)


def digests(versions: tuple[BaseVersion, ...]) -> set[str]:
    return {v.digest for v in versions}


# ---------------------------------------------------------------- whose versions are whose

def test_another_tag_of_the_repository_is_never_a_version_of_the_track() -> None:
    got = lineage()
    assert digests(got.own) == {V312_NEW.digest}
    # The shortest tag names a digest: 3.11 (not 3.11-p1); 3.12-p1 is a tag like any other without version_tags.
    assert dict((v.digest, name) for name, v in got.others) == {V311.digest: "python:3.11",
                                                                V312_OLD.digest: "python:3.12-p1"}


@pytest.mark.parametrize("how", ["version_tags", "recorded", "recorded-untagged"])
def test_a_version_of_the_track_is_tied_by_its_version_tags_or_its_recorded_history(how: str) -> None:
    if how == "version_tags":
        got = lineage(PY312_TAGGED)
    elif how == "recorded":
        got = lineage(recorded={"python": [V312_OLD.digest]})
    else:  # the old version lost its tag; the lineage store saw the track's tag there
        got = lineage(tags={"3.12": V312_NEW.digest, "3.11": V311.digest}, recorded={"python": [V312_OLD.digest]})
    assert digests(got.own) == {V312_OLD.digest, V312_NEW.digest}
    assert [(name, v.digest) for name, v in got.others] == [("python:3.11", V311.digest)]


def test_a_configured_sibling_track_names_its_tags_and_its_recorded_versions() -> None:
    assert siblings(PY312, [PY312, PY311, NODE]) == [PY311]
    got = lineage(PY312_TAGGED, tags={**TAGS, "3.11-p0": V311_OLD.digest}, others=(PY311,))
    assert dict((v.digest, name) for name, v in got.others) == {V311.digest: "python:3.11",
                                                                V311_OLD.digest: "python:3.11"}
    untagged = lineage(PY312_TAGGED, recorded={"python311": [V311_OLD.digest]}, others=(PY311,))
    assert ("python:3.11", V311_OLD) in untagged.others


@pytest.mark.parametrize("recorded, own, untied", [
    ({}, {V312_NEW.digest}, {V312_OLD.digest, V_UNTIED.digest}),  # listed alone ties nothing
    ({"python": [V312_OLD.digest]}, {V312_OLD.digest, V312_NEW.digest}, {V_UNTIED.digest}),
])
def test_artifact_registry_listed_versions_count_only_when_tied(recorded: dict, own: set, untied: set) -> None:
    got = lineage(tags={"3.12": V312_NEW.digest, "3.11": V311.digest},
                  listed=(V312_NEW.digest, V312_OLD.digest, V311.digest, V_UNTIED.digest), recorded=recorded)
    assert digests(got.own) == own and digests(got.untied) == untied
    assert V311.digest not in digests(got.untied)  # tagged: another track's, not unknown


@pytest.mark.parametrize("tag, expected", [("3.12", True), ("3.12-p1", True), ("3.12.4", True),
                                           ("3.11", False), ("3.12", True), ("latest", False), ("3.120", False)])
def test_is_version_tag(tag: str, expected: bool) -> None:
    assert is_version_tag(tag, PY312_TAGGED) is expected


# ---------------------------------------------------------------- is an app on this track

def app(*base: str, annotations: dict[str, str] | None = None) -> ImageFacts:
    return ImageFacts(refs.parse(f"{REGISTRY}/apps/shop@{V312_NEW.digest}"),
                      tuple(layer(n) for n in (*base, "deps", "app")), annotations or {})


OTHER_311 = policy.OTHER_TRACK.format(base="python:3.11")
CASES = {
    # name: (app, lineage kwargs, expected reason or None when matching goes on)
    "3.11 app, no annotation": (app("os", "py-3.11.1"), {}, OTHER_311),
    "old 3.12 app, version_tags": (app("os", "py-3.12.1"), {"track": PY312_TAGGED}, None),
    "old 3.12 app, recorded": (app("os", "py-3.12.1"), {"recorded": {"python": [V312_OLD.digest]}}, None),
    "old 3.12 app, nothing ties it": (app("os", "py-3.12.1"), {},
                                      policy.OTHER_TRACK.format(base="python:3.12-p1")),
    "app on an untied listed version": (app("os", "py-3.13-rc"), {"listed": (V_UNTIED.digest,)},
                                        policy.LINEAGE_UNKNOWN.format(base=f"{REPO}@{V_UNTIED.digest[:19]}")),
    "app on another base": (app("alpine"), {}, None),  # matching says "not built on …"
    "annotated: repository without a tag": (
        app("os", "py-3.12.1", annotations={NAME_KEY: REPO, DIGEST_KEY: V312_OLD.digest}), {"track": PY312_TAGGED},
        policy.ANNOTATED_WITHOUT_TAG.format(name=REPO, track="python:3.12")),
    "annotated: another tag": (
        app("os", "py-3.11.1", annotations={NAME_KEY: f"{REPO}:3.11", DIGEST_KEY: V311.digest}), {}, OTHER_311),
    # The build's own record of where the track's tag pointed (3.12-p1 is just another tag of that digest).
    "annotated: the track's tag and its old digest": (
        app("os", "py-3.12.1", annotations={NAME_KEY: f"{REPO}:3.12", DIGEST_KEY: V312_OLD.digest}), {}, None),
    "annotated: the track's tag, no digest, 3.11 layers": (
        app("os", "py-3.11.1", annotations={NAME_KEY: f"{REPO}:3.12"}), {}, OTHER_311),
    "annotated: another repository": (
        app("alpine", annotations={NAME_KEY: f"{REGISTRY}/bases/alpine:3"}), {}, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_verdict(name: str) -> None:
    facts, kw, expected = CASES[name]
    got = verdict(facts, lineage(kw.pop("track", PY312), **kw))
    if expected is None:
        assert isinstance(got, ImageFacts) and got.layers == facts.layers
    else:
        assert got == expected


def test_an_annotation_naming_a_version_tag_is_read_as_the_track_tag() -> None:
    facts = app("os", "py-3.12.1", annotations={NAME_KEY: f"{REPO}:3.12-p1", DIGEST_KEY: V312_OLD.digest})
    got = verdict(facts, lineage(PY312_TAGGED))
    assert isinstance(got, ImageFacts) and got.annotations[NAME_KEY] == f"{REPO}:3.12"
    assert verdict(facts, lineage(PY312)) == policy.OTHER_TRACK.format(base="python:3.12-p1")


# ---------------------------------------------------------------- the plan

def svc(name: str, image: str) -> ServiceView:
    return ServiceView(f"projects/tenants-aaaaa/locations/us-east1/services/{name}", (image,))


def test_plan_rolls_only_the_apps_on_versions_of_the_track() -> None:
    images = {
        "py311": app("os", "py-3.11.1"),
        "py312-old": app("os", "py-3.12.1"),
        "py312-new": app("os", "py-3.12.2"),
        "tagless": app("os", "py-3.12.1", annotations={NAME_KEY: REPO}),
        "node": app("node-os", "node-22"),
    }
    facts = {f"{REGISTRY}/apps/{k}@{V312_NEW.digest}": f for k, f in images.items()}
    services = [svc(k, f"{REGISTRY}/apps/{k}@{V312_NEW.digest}") for k in images]
    lin = lineage(PY312_TAGGED)
    plan = make_plan(track_image=PY312.image, new_base=PY312.image.at(V312_NEW.digest), new_version=V312_NEW,
                     known_versions=lin.own, services=services, facts=facts, labels=Labels(),
                     allowed=frozenset({REGISTRY}), lineage=lin)
    reasons = {sp.service.name.rsplit("/", 1)[-1]: (sp.action, sp.reason) for sp in plan.services}
    assert reasons == {
        "py311": ("skip", policy.container(0, OTHER_311)),
        "py312-old": ("roll", "built on an older version of the base"),
        "py312-new": ("skip", policy.ALREADY_ON_NEW_BASE),
        "tagless": ("skip", policy.container(0, policy.ANNOTATED_WITHOUT_TAG.format(name=REPO, track="python:3.12"))),
        "node": ("skip", policy.container(0, f"not built on {PY312.image}")),
    }
    assert [job.old_base.digest for job in plan.jobs] == [V312_OLD.digest]


# ---------------------------------------------------------------- the planner records what the tag moved to

def test_the_planner_records_each_digest_the_track_tag_moves_to_and_plans_with_it() -> None:
    """No version tags: v1 is known as 3.12's only because baseroll saw the tag there (a push event)."""
    w = fakes.FakeWorld(fakes.config())
    track = refs.parse(f"{REPO}:3.12")
    w.registry.push(f"{REPO}:3.11", [layer("os"), layer("py-3.11.1")])
    v1 = w.registry.push(track, [layer("os"), layer("py-3.12.1")])
    on_312 = w.registry.push(f"{REGISTRY}/apps/web:v1", [layer("os"), layer("py-3.12.1"), layer("web")]).pinned()
    on_311 = w.registry.push(f"{REGISTRY}/apps/api:v1", [layer("os"), layer("py-3.11.1"), layer("api")]).pinned()
    w.fleet.add(svc("web", str(on_312)))
    w.fleet.add(svc("api", str(on_311)))
    push = RollRequest("base", track, None, "artifact-push", "e-1")
    assert planner.start(w.deps, push)["status"] == "nothing-to-do"
    assert w.lineage.versions("python") == [v1.digest]
    v2 = w.registry.push(track, [layer("os"), layer("py-3.12.2")])
    out = planner.start(w.deps, RollRequest("base", track, v2.digest, "artifact-push", "e-2", dry_run=True))
    assert w.lineage.versions("python") == [v1.digest, v2.digest]
    rows = {r["service"].rsplit("/", 1)[-1]: (r["action"], r["reason"]) for r in out["services"]}
    assert rows == {"web": ("roll", "built on an older version of the base"),
                    "api": ("skip", policy.container(0, OTHER_311))}


# ---------------------------------------------------------------- config

def _doc(**track: object) -> dict:
    return {"projects": ["tenants-aaaaa"], "regions": ["us-east1"], "allowed_registries": [REGISTRY],
            "base_tracks": [{"name": "python", "image": f"{REPO}:3.12", **track}]}


def test_config_reads_version_tags() -> None:
    assert config_mod.parse(_doc()).base_tracks[0].version_tags == ()
    cfg = config_mod.parse(_doc(version_tags=["3.12.*", "3.12-*"]))
    assert cfg.base_tracks[0].version_tags == ("3.12.*", "3.12-*")


@pytest.mark.parametrize("bad", ["3.12.*", [""], [3], ["3.12/*"], ["a b"]])
def test_config_refuses_bad_version_tags(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"base_tracks\[0\]\.version_tags"):
        config_mod.parse(_doc(version_tags=bad))
