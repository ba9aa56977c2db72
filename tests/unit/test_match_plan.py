from baseroll.config import Labels
from baseroll.contracts import ledger
from baseroll.fleet.view import ServiceView
from baseroll.images.match import (
    BaseVersion,
    ImageFacts,
    match_image,
)
from baseroll.images.oci import ANNOTATION_BASE_DIGEST as ANN_BASE_DIGEST
from baseroll.images.oci import ANNOTATION_BASE_NAME as ANN_BASE_NAME
from baseroll.images.refs import ImageRef
from baseroll.rollout.plan import make_plan


def d(c: str) -> str:
    return "sha256:" + c * 64


H = "reg.example.com"
TRACK = ImageRef(H, "bases/python", "3.12")
V1 = BaseVersion(d("1"), (d("a"), d("b")))
V2 = BaseVersion(d("2"), (d("c"), d("b")))
OTHER = BaseVersion(d("9"), (d("a"),))  # a shorter base sharing the first layer


def app(layers, **ann) -> ImageFacts:
    return ImageFacts(ImageRef(H, "apps/x", None, d("f")), tuple(layers), ann)


def test_annotation_outdated_current_and_other():
    name = f"{H}/bases/python:3.12"
    m = match_image(app([d("a"), d("b"), d("e")], **{ANN_BASE_NAME: name, ANN_BASE_DIGEST: V1.digest}), TRACK, V2, [V1])
    assert (m.verdict, m.how, m.old_base_digest) == ("outdated", "annotation", V1.digest)
    m = match_image(app([d("c"), d("b"), d("e")], **{ANN_BASE_NAME: name, ANN_BASE_DIGEST: V2.digest}), TRACK, V2, [V1])
    assert m.verdict == "current"
    m = match_image(app([d("a"), d("b")], **{ANN_BASE_NAME: f"{H}/bases/python:3.11", ANN_BASE_DIGEST: V1.digest}),
                    TRACK, V2, [V1])
    assert m.verdict == "other" and "3.11" in m.reason
    m = match_image(app([d("a")], **{ANN_BASE_NAME: f"{H}/bases/node:22", ANN_BASE_DIGEST: V1.digest}), TRACK, V2, [V1])
    assert m.verdict == "other"


def test_layer_prefix_picks_longest_known_version():
    m = match_image(app([d("a"), d("b"), d("e")]), TRACK, V2, [OTHER, V1, V2])
    assert (m.verdict, m.how, m.old_base_digest) == ("outdated", "layer-prefix", V1.digest)
    assert match_image(app([d("c"), d("b"), d("e")]), TRACK, V2, [V1]).verdict == "current"
    assert match_image(app([d("x"), d("e")]), TRACK, V2, [V1]).verdict == "other"
    # A base longer than the app can never be its prefix.
    assert match_image(app([d("a")]), TRACK, V2, [V1]).verdict == "other"


def svc(name, image, **labels) -> ServiceView:
    return ServiceView(name=f"projects/p-aaaaa/locations/us-central1/services/{name}", images=(image,), labels=labels)


def test_plan_dedups_rebases_and_explains_skips():
    a = f"{H}/apps/a@{d('f')}"
    facts = {a: app([d("a"), d("b"), d("e")])}
    services = [
        svc("s1", a), svc("s2", a), svc("s3", a, **{"baseroll-opt-out": "true"}),
        svc("s4", "evil.io/x/y:1"), svc("s5", "not a ref"), svc("s6", f"{H}/apps/gone:1"),
    ]
    facts[f"{H}/apps/gone:1"] = "MANIFEST_UNKNOWN"
    plan = make_plan(track_image=TRACK, new_base=TRACK.with_digest(V2.digest), new_version=V2, known_versions=[V1],
                     services=services, facts=facts, labels=Labels(), allowed=frozenset({H}))
    by = {p.service.name.rsplit("/", 1)[-1]: p for p in plan.services}
    assert [p.service.name.rsplit("/", 1)[-1] for p in plan.to_roll] == ["s1", "s2"]
    assert len(plan.jobs) == 1 and plan.jobs[0].old_base == ImageRef(H, "bases/python", None, V1.digest)
    assert by["s1"].containers[0].strategy == "rebase" and by["s1"].containers[0].job == plan.jobs[0]
    assert "opted out" in by["s3"].reason
    assert "not allow-listed" in by["s4"].reason
    assert "s5" in by and by["s5"].action == "skip"
    assert "MANIFEST_UNKNOWN" in by["s6"].reason


def test_plan_never_retries_a_rolled_back_target():
    a = f"{H}/apps/a@{d('f')}"
    rolled_back = ServiceView(name="projects/p-aaaaa/locations/us-central1/services/s", images=(a,),
                              annotations={ledger.STATE: ledger.ROLLED_BACK, ledger.BASE_DIGEST: V2.digest,
                                           ledger.REASON: "HEALTH_CHECK_CONTAINER_ERROR"})
    plan = make_plan(track_image=TRACK, new_base=TRACK.with_digest(V2.digest), new_version=V2, known_versions=[V1],
                     services=[rolled_back], facts={a: app([d("a"), d("b"), d("e")])}, labels=Labels(),
                     allowed=frozenset({H}))
    assert plan.to_roll == [] and "rolled back" in plan.services[0].reason


def test_base_image_uri_pins_move_and_tags_are_left_to_cloud_run():
    old_pin = ServiceView(name="projects/p-aaaaa/locations/us-central1/services/pinned", images=(f"{H}/apps/x:1",),
                          base_image_uris=(f"{H}/bases/python@{V1.digest}",))
    on_tag = ServiceView(name="projects/p-aaaaa/locations/us-central1/services/tagged", images=(f"{H}/apps/x:1",),
                         base_image_uris=(f"{H}/bases/python:3.12",))
    current = ServiceView(name="projects/p-aaaaa/locations/us-central1/services/current", images=(f"{H}/apps/x:1",),
                          base_image_uris=(f"{H}/bases/python@{V2.digest}",))
    new_base = TRACK.with_digest(V2.digest)
    plan = make_plan(track_image=TRACK, new_base=new_base, new_version=V2, known_versions=[V1],
                     services=[old_pin, on_tag, current], facts={}, labels=Labels(), allowed=frozenset({H}))
    by = {p.service.name.rsplit("/", 1)[-1]: p for p in plan.services}
    change = by["pinned"].containers[0]
    assert by["pinned"].action == "roll" and change.strategy == "base-uri"
    assert change.target == ImageRef(H, "bases/python", None, V2.digest) and plan.jobs == ()
    assert by["tagged"].action == "skip" and "automatic base image updates" in by["tagged"].reason
    assert by["current"].reason == "already on the new base"


def test_app_plan_redeploys_services_that_follow_the_built_tag():
    from baseroll.rollout.plan import make_app_plan

    app = ImageRef(H, "apps/shop", "main")
    new = app.with_digest(d("9"))
    services = [
        ServiceView(name="projects/p-aaaaa/locations/us-central1/services/by-tag", images=(f"{H}/apps/shop:main",)),
        ServiceView(name="projects/p-aaaaa/locations/us-central1/services/by-digest", images=(f"{H}/apps/shop@{d('1')}",),
                    labels={"baseroll-app-tag": "main"}),
        ServiceView(name="projects/p-aaaaa/locations/us-central1/services/other-tag", images=(f"{H}/apps/shop:v2",)),
        ServiceView(name="projects/p-aaaaa/locations/us-central1/services/done", images=(f"{H}/apps/shop@{d('9')}",),
                    labels={"baseroll-app-tag": "main"}),
        ServiceView(name="projects/p-aaaaa/locations/europe-west1/services/elsewhere", images=(f"{H}/apps/shop:main",)),
    ]
    in_us = lambda name, labels: "/us-central1/" in name  # noqa: E731 - a request filter
    plan = make_app_plan(app=app, new_image=new, services=services, labels=Labels(), scope=in_us)
    by = {p.service.name.rsplit("/", 1)[-1]: p for p in plan.services}
    assert {p.service.name.rsplit("/", 1)[-1] for p in plan.to_roll} == {"by-tag", "by-digest"}
    assert by["by-tag"].containers[0].target == ImageRef(H, "apps/shop", None, d("9"))
    assert by["other-tag"].action == "skip" and by["done"].reason == "already on the new build"
    assert by["elsewhere"].reason == "outside the request's filter"
