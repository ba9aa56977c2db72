"""Lineage per track, end to end: one base repository with the tags 3.11 and 3.12 only (no version
tags), apps on each without base annotations, a push to 3.12 delivered to the function as
Artifact Registry's event. Only the apps built on 3.12's versions roll; the 3.11 apps are skipped
with a reason naming the other track, and the Cloud Run stand-in's own update counts show they
were never touched.

The old 3.12 version is known as 3.12's only because baseroll saw the tag there: the push event
of that version was delivered first (the planner records each digest a track's tag moves to), and
its tag has moved on since, leaving it untagged.
"""
from __future__ import annotations

import pytest
from baseroll.images.refs import ImageRef

from infra.local import images, scenario, seed
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

TRACK = "py-held"
PY312 = seed.BaseDef(TRACK, "held/python", "3.12", True)
PY311 = seed.BaseDef("py-held-311", "held/python", "3.11", False)
LOCATION = "projects/tenants-prod-a/locations/us-central1/services"


def push_tag_only(stack: LocalStack, base: seed.BaseDef, version: int) -> ImageRef:
    """Version n of `base` under its track tag alone, as a registry with no version tags holds it."""
    repo = ImageRef(stack.registry.host, base.repository)
    return images.push(stack.registry_client(), repo, seed.base_spec(base, version), tags=(base.tag,))


def test_a_push_to_3_12_rolls_only_the_apps_on_3_12_and_skips_the_3_11_apps_naming_that_track():
    extra = [{"name": TRACK, "image": f"{{registry}}/{PY312.repository}:{PY312.tag}"}]
    with LocalStack(ready_timeout_s=20, extra_tracks=extra) as stack:
        client, host, run = stack.registry_client(), stack.registry.host, stack.run_client()
        py311 = push_tag_only(stack, PY311, 1)
        v1 = push_tag_only(stack, PY312, 1)
        # Artifact Registry's event for v1: nothing runs on the track yet, but its tag was seen there.
        assert scenario.deliver_push(stack, v1, PY312.tag).status_code < 300
        apps = {
            "web312": seed.push_app(client, host, "web312", PY312, 1, v1, annotated=False),
            "cron312": seed.push_app(client, host, "cron312", PY312, 1, v1, annotated=False),
            "api311": seed.push_app(client, host, "api311", PY311, 1, py311, annotated=False),
            "jobs311": seed.push_app(client, host, "jobs311", PY311, 1, py311, annotated=False),
        }
        for app, image in apps.items():
            seed.create_service(run, f"{LOCATION}/{app}", str(image))

        v2 = push_tag_only(stack, PY312, 2)  # the tag moves on: v1 keeps no tag at all
        assert sorted(client.list_tags(ImageRef(host, PY312.repository))) == ["3.11", "3.12"]
        assert scenario.deliver_push(stack, v2, PY312.tag).status_code < 300
        record = scenario.wait_rollout(stack, scenario.rollout_id(TRACK, v2), timeout=90)
        assert record["status"] == "finished", record

        updates = stack.update_counts()  # the Cloud Run stand-in's own count of applied updates
        reasons = scenario.planned_reasons(stack)
        for app, image in apps.items():
            name = f"{LOCATION}/{app}"
            now = run.get_service(name=name).template.containers[0].image
            if app.endswith("312"):
                assert updates.get(name) == 1 and now != str(image), (app, updates.get(name), now)
                assert scenario.on_base(stack, now, v2), f"{app} is not on 3.12's new version"
            else:
                assert updates.get(name, 0) == 0 and now == str(image), (app, updates.get(name), now)
                assert reasons.get(name) == "container 0: built on python:3.11, another track of this repository"
