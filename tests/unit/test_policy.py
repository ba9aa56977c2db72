"""The policy gate (`rollout.policy`): each reason a service is skipped or a task refused, its exact
text (logs, the plan output and other tests match on it), and the order the checks apply in."""
from __future__ import annotations

import re

import pytest
from baseroll.config import Labels
from baseroll.contracts import ledger
from baseroll.contracts.messages import Rollout
from baseroll.contracts.records import RolloutRecord
from baseroll.fleet import deploy
from baseroll.fleet.view import ServiceView
from baseroll.images.match import BaseVersion, ImageFacts
from baseroll.images.refs import ImageRef, parse
from baseroll.rollout import policy
from baseroll.rollout.plan import make_app_plan, make_plan

H = "reg.example.com"
D1, D2, D9 = ("sha256:" + c * 64 for c in "129")
NAME = "projects/p-aaaaa/locations/us-central1/services/s"
LABELS = Labels()
RO = Rollout("python-222222222222", "python", f"{H}/bases/python:3.12", D2)


def everything(name: str, labels: object) -> bool:
    return True


def nothing(name: str, labels: object) -> bool:
    return False


def svc(*images: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> ServiceView:
    return ServiceView(NAME, images, labels=labels or {}, annotations=annotations or {})


ROLLED_BACK_HERE = ledger.rolled_back("python-222222222222", D2, "HEALTH_CHECK_CONTAINER_ERROR: crashed")


@pytest.mark.parametrize("reason, text", [
    (policy.OUTSIDE_SCOPE, "outside the request's filter"),
    (policy.OPTED_OUT.format(label="baseroll-opt-out"), "opted out by label baseroll-opt-out=true"),
    (policy.already_rolled_back(ROLLED_BACK_HERE, D2),
     "already rolled back from this target: HEALTH_CHECK_CONTAINER_ERROR: crashed"),
    (policy.container(2, policy.registry_refused(parse("evil.io/x/y:1"), frozenset({H})) or ""),
     "container 2: registry evil.io is not allow-listed"),
    (policy.UNREADABLE.format(why=policy.NOT_INSPECTED), "image unreadable: not inspected"),
    (policy.BASE_URI_FOLLOWS_TAG.format(uri=f"{H}/bases/python:3.12"),
     f"base_image_uri {H}/bases/python:3.12 follows a tag: Cloud Run's automatic base image updates manage it"),
    (policy.BASE_URI_OTHER_BASE, "base_image_uri is another base"),
    (policy.ALREADY_ON_NEW_BASE, "already on the new base"),
    (policy.ALREADY_ON_NEW_BUILD, "already on the new build"),
    (policy.DOES_NOT_RUN.format(app=f"{H}/apps/shop:main"), f"does not run {H}/apps/shop:main"),
    (policy.NO_CONTAINER, "no container"),
    (policy.rebase_refused("config drift: the new base changed Entrypoint"),
     "rebase failed: config drift: the new base changed Entrypoint"),
    (policy.signature_verdict(f"{H}/apps/a@{D9}", signed=False, policy="require"),
     f"rebased image {H}/apps/a@{D9} is unsigned and signatures.policy is require"),
    (policy.CHANGED_SINCE_PLANNING, "changed since planning"),
    (policy.IMAGE_CHANGED_SINCE_PLANNING, "image changed since planning"),
    (policy.superseded(RO, D9), ("superseded", f"{H}/bases/python:3.12 now points at {D9}")),
    (policy.cancelled(RolloutRecord(RO.rollout_id, "python", D2, status="aborted", reason="by alice")),
     ("cancelled", "rollout aborted: by alice")),
], ids=lambda v: str(v)[:40])
def test_reason_texts(reason: object, text: object) -> None:
    assert reason == text


def test_the_decisions_below_the_rollout_are_the_ones_policy_names() -> None:
    """`fleet.deploy` cannot import `rollout`: it decides with the same functions policy re-exports."""
    assert policy.already_rolled_back is ledger.already_rolled_back
    assert policy.ALREADY_ROLLED_BACK == ledger.ALREADY_ROLLED_BACK
    assert policy.changed_since_planning is deploy.changed_since_planning
    assert policy.CHANGED_SINCE_PLANNING == deploy.CHANGED_SINCE_PLANNING


@pytest.mark.parametrize("view, scope, expected", [
    (svc("a", labels={"baseroll-opt-out": "true"}, annotations=ROLLED_BACK_HERE), nothing, policy.OUTSIDE_SCOPE),
    (svc("a", labels={"baseroll-opt-out": "TRUE"}, annotations=ROLLED_BACK_HERE), everything,
     "opted out by label baseroll-opt-out=true"),
    (svc("a", labels={"baseroll-opt-out": "false"}), everything, None),
    (svc("a", annotations=ROLLED_BACK_HERE), everything, ledger.already_rolled_back(ROLLED_BACK_HERE, D2)),
    (svc("a", annotations=ledger.rolled_back("python-111111111111", D1, "x")), everything, None),
    (svc("a", annotations=ledger.rolled("python-222222222222", D2, ("b",))), everything, None),
], ids=["scope-first", "opt-out-before-ledger", "opt-out-false", "rolled-back-here", "rolled-back-elsewhere",
        "rolled-not-back"])
def test_service_skip_order(view: ServiceView, scope, expected: str | None) -> None:
    assert policy.service_skip(view, LABELS, scope, D2) == expected


@pytest.mark.parametrize("signed, mode, refused", [
    (False, "require", True), (True, "require", False), (False, "report", False), (True, "report", False),
])
def test_signature_verdict(signed: bool, mode: str, refused: bool) -> None:
    assert (policy.signature_verdict("img", signed=signed, policy=mode) is not None) == refused


@pytest.mark.parametrize("status, cancelled", [
    ("running", False), ("finished", False), ("aborted", True), ("halted", True), ("superseded", True),
])
def test_cancelled_by_the_record(status: str, cancelled: bool) -> None:
    rec = RolloutRecord(RO.rollout_id, "python", D2, status=status)
    assert (policy.cancelled(rec) is not None) == cancelled
    assert policy.cancelled(None) is None


def test_superseded_only_when_the_tag_moved() -> None:
    assert policy.superseded(RO, D2) is None
    assert policy.superseded(RO, None) == ("superseded", f"{RO.track_image} now points at None")


@pytest.mark.parametrize("images, targets, changed", [
    (("old", "side"), {0: "new"}, False),  # as planned
    (("new", "side"), {0: "new"}, False),  # already on the target (a redelivery)
    (("human", "side"), {0: "new"}, True),  # someone else deployed meanwhile
    (("old",), {1: "new"}, True),  # the container is gone
    (("old", "other-side"), {0: "new"}, False),  # a container the task does not touch changed
])
def test_image_changed_since_planning(images: tuple[str, ...], targets: dict[int, str], changed: bool) -> None:
    reason = policy.image_changed_since_planning(svc(*images), targets, ("old", "side"))
    assert reason == (policy.IMAGE_CHANGED_SINCE_PLANNING if changed else None)


def _template(constant: str) -> str:
    return re.sub(r"\\\{\w+\\\}", ".+", re.escape(constant))


SERVICE_REASONS = re.compile("|".join(f"(?:{_template(c)})" for c in (
    policy.OUTSIDE_SCOPE, policy.OPTED_OUT, policy.ALREADY_ROLLED_BACK, policy.ALREADY_ON_NEW_BASE,
    policy.ALREADY_ON_NEW_BUILD, policy.DOES_NOT_RUN, policy.NO_CONTAINER)))
CONTAINER_REASONS = re.compile(_template(policy.CONTAINER) + f"(?:; {_template(policy.CONTAINER)})*")


def test_every_skip_the_planners_give_is_a_policy_outcome() -> None:
    """A skip reason made up anywhere but the policy (a new literal in `plan`) fails here."""
    app = f"{H}/apps/a@{D9}"
    track = ImageRef(H, "bases/python", "3.12")
    v1, v2 = BaseVersion(D1, ("l1",)), BaseVersion(D2, ("l2",))
    services = [
        svc(app, labels={"baseroll-opt-out": "true"}), svc(app, annotations=ROLLED_BACK_HERE), svc(),
        svc("evil.io/x/y:1", "not a ref", f"{H}/apps/gone:1", f"{H}/apps/other@{D1}"),
        ServiceView(NAME, (app, app), base_image_uris=(f"{H}/bases/python:3.12", f"{H}/bases/node@{D1}")),
        ServiceView(NAME, (app,), base_image_uris=(f"{H}/bases/python@{D2}",)),
        svc(app),
    ]
    facts = {app: ImageFacts(parse(app), ("l2", "app")), f"{H}/apps/other@{D1}": ImageFacts(parse(app), ("zz",)),
             f"{H}/apps/gone:1": "MANIFEST_UNKNOWN"}
    base = make_plan(track_image=track, new_base=track.with_digest(D2), new_version=v2, known_versions=[v1],
                     services=services, facts=facts, labels=LABELS, allowed=frozenset({H}))
    redeploy = make_app_plan(app=ImageRef(H, "apps/a", None), new_image=ImageRef(H, "apps/a", None, D9),
                             services=services, labels=LABELS, scope=lambda n, labels: "baseroll-opt-out" not in labels)
    skips = [p.reason for p in (*base.services, *redeploy.services) if p.action == "skip"]
    assert len(skips) == 2 * len(services)  # each service is there to be skipped, in both plans
    for reason in skips:
        assert SERVICE_REASONS.fullmatch(reason) or CONTAINER_REASONS.fullmatch(reason), reason
