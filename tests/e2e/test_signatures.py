"""Signatures do not follow a rebase. With `signatures.policy: require`, an unsigned rebased image is
never deployed: a sign request goes to the signing step's topic, the wave fails at once with the
reason, and once the images are signed a resume rolls them."""
from __future__ import annotations

import pytest
from baseroll.contracts import requests
from baseroll.images import signatures
from baseroll.images.refs import parse

from infra.local import images, scenario
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e
SIGN_TOPIC = "baseroll-sign-requests"


@pytest.fixture(scope="module")
def stack():
    with LocalStack(signatures={"policy": "require", "request_topic": SIGN_TOPIC}, rollout={"failure_budget": 0}) as s:
        yield s


def sign(stack, image: str) -> None:
    """What a signing step does (cosign's layout): a signature artifact tagged sha256-<hex>.sig."""
    ref = parse(image)
    payload = images.ImageSpec(layers=[images.layer({"signature": f"signed {ref.digest}"})])
    images.push(stack.registry_client(), ref.with_tag(None).with_digest(ref.digest).pinned().with_tag(None),
                payload, tags=(signatures.signature_tag(ref.digest),))


def test_unsigned_rebased_images_are_held_until_signed(stack):
    fleet = scenario.seed_fleet(stack, services=21)
    sign(stack, str(fleet.apps["py-api"]))  # the original was signed: that signature will not carry over
    before = {n: v["updates"] for n, v in stack.cloudrun.stats()["services"].items()}
    new_base = scenario.push_new_base(stack, fleet, "python")
    scenario.publish_push(stack, new_base, "3.12")
    rid = scenario.rollout_id("python", new_base)
    record = scenario.wait_rollout(stack, rid, timeout=120)
    assert record["status"] == "halted", record
    assert {n: v["updates"] for n, v in stack.cloudrun.stats()["services"].items()} == before, "nothing unsigned deployed"
    requested = {r["image"] for r in stack.log_records("signature.requested")}
    assert requested and all(parse(i).repository.startswith("apps/py-") for i in requested)
    published = stack.pubsub.stats()["topics"][f"projects/baseroll-host/topics/{SIGN_TOPIC}"]["published"]
    assert published >= len(requested)
    assert "unsigned" in record["reason"] or record["waves"][-1]["failed"] > 0

    # The signing step signs what it was asked to; each resume gets one wave further (bounded).
    for _ in range(4):
        for image in {r["image"] for r in stack.log_records("signature.requested")}:
            sign(stack, image)
        stack.publish("baseroll-requests", requests.to_message(action="resume", rollout_id=rid),
                      schema=requests.SCHEMA, action="resume")
        stack.wait_idle(10)
        record = scenario.wait_rollout(stack, rid, timeout=180)
        if record["status"] == "finished":
            break
    assert record["status"] == "finished", record
    signed_images = {r["image"] for r in stack.log_records("signature.requested")}
    assert len(signed_images) == 3  # one per rebased app image, never per service
    assert {r["app"] for r in stack.log_records("signature.not_carried")} == {str(fleet.apps["py-api"])}
    for r in scenario.results(stack, fleet):
        if r.seeded.eligible_for("python"):
            assert r.image in signed_images and scenario.on_base(stack, r.image, new_base)
