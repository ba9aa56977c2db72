"""Rollout events (contracts/events.py, rollout/events.py): schema, ids, attributes, and a publish that never fails a rollout."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from baseroll.contracts import events as E
from baseroll.contracts import topics
from baseroll.contracts.messages import Rollout
from baseroll.contracts.parsing import EventError
from baseroll.contracts.requests import message
from baseroll.rollout import events as publisher
from baseroll.rollout.fakes import FakeBus

RO = Rollout("python-0123456789ab", "python", "us-docker.pkg.dev/p/bases/python:3.12", "sha256:" + "1" * 64,
             scope={"regions": ["us-east1"]})
AT = 1_764_460_800.25  # 2025-11-30T00:00:00.250Z
SVC = "projects/p/locations/us-east1/services/"

# One of each kind, as the coordinator builds them.
ONE_OF_EACH = {
    E.STARTED: E.started(RO, at=AT, to_roll=12, skipped=3, wave_sizes=[2, 4, 6], approval="after-canary"),
    E.WAVE_RELEASED: E.wave_released(RO, at=AT, seq=3, wave=0, size=2),
    E.WAVE_SETTLED: E.wave_settled(RO, at=AT, seq=4, counts={"wave": 0, "size": 2, "done": 2, "failed": 0,
                                                             "skipped": 0}),
    E.HALTED: E.halted(RO, at=AT, seq=7, wave=1, reason="wave 1: 2 of 4 failed, over the failure budget",
                       failures={SVC + "cart": "not ready: HealthCheckContainerError", SVC + "shop": "timed out"}),
    E.AWAITING_APPROVAL: E.awaiting_approval(RO, at=AT, seq=5, wave=1, reason="awaiting approval before wave 1",
                                             approval="after-canary"),
    E.RESUMED: E.resumed(RO, at=AT, seq=6, wave=1, cause="approve", reason="approved wave 1"),
    E.ABORTED: E.aborted(RO, at=AT, seq=6, wave=1, reason="aborted by request"),
    E.SUPERSEDED: E.superseded(RO, at=AT, seq=6, wave=1, now_digest="sha256:" + "2" * 64),
    E.FINISHED: E.finished(RO, at=AT, seq=9, waves=[{"wave": 0, "size": 2, "done": 2, "failed": 0, "skipped": 0},
                                                    {"wave": 1, "size": 4, "done": 3, "failed": 1, "skipped": 0}]),
}


def test_every_kind_has_a_builder_and_round_trips():
    assert set(ONE_OF_EACH) == set(E.KINDS)
    for kind, event in ONE_OF_EACH.items():
        data, attributes = E.encode(event)
        assert attributes == {"schema": E.SCHEMA, "kind": kind, "rollout_id": RO.rollout_id,
                              "event_id": event.event_id}
        doc = json.loads(data)
        assert doc["schema"] == "baseroll.dev/rollout-event/v1" and doc["id"] == event.event_id
        assert doc["at"] == "2025-11-30T00:00:00.250Z"
        assert doc["rollout"] == {"rollout_id": RO.rollout_id, "track": "python", "track_image": RO.track_image,
                                  "base_digest": RO.base_digest, "kind": "base", "scope": {"regions": ["us-east1"]}}
        assert E.decode(message(data, attributes)) == event


def test_ids_are_deterministic_and_tell_happenings_apart():
    again = E.wave_settled(RO, at=AT + 99, seq=4, counts={"wave": 0, "size": 2, "done": 2})
    assert again.event_id == ONE_OF_EACH[E.WAVE_SETTLED].event_id == "python-0123456789ab:wave-settled:0:4"
    assert ONE_OF_EACH[E.STARTED].event_id == "python-0123456789ab:started:-:0"
    ids = [e.event_id for e in ONE_OF_EACH.values()]
    assert len(set(ids)) == len(ids)
    later_halt = E.halted(RO, at=AT, seq=11, wave=1, reason="again")  # halted again after a resume
    assert later_halt.event_id != ONE_OF_EACH[E.HALTED].event_id


def test_details_carry_what_a_person_needs():
    halted = ONE_OF_EACH[E.HALTED].detail
    assert halted["failed_total"] == 2
    assert halted["failed"][0] == {"service": SVC + "cart", "reason": "not ready: HealthCheckContainerError"}
    assert ONE_OF_EACH[E.FINISHED].detail == {"waves": 2, "size": 6, "done": 5, "failed": 1, "skipped": 0}
    assert ONE_OF_EACH[E.AWAITING_APPROVAL].detail["approve"] == "baseroll approve python-0123456789ab"
    many = E.halted(RO, at=AT, seq=1, wave=0, reason="r", failures={f"{SVC}s{i:03}": "x" for i in range(80)})
    assert len(many.detail["failed"]) == E.MAX_SERVICES and many.detail["failed_total"] == 80


def test_summaries_are_one_line_each():
    text = {kind: E.summary(event) for kind, event in ONE_OF_EACH.items()}
    assert all("\n" not in t and t.startswith("baseroll python-0123456789ab (") for t in text.values())
    assert text[E.HALTED].endswith("HALTED: wave 1: 2 of 4 failed, over the failure budget; failing: "
                                   "cart (not ready: HealthCheckContainerError), shop (timed out)")
    assert "run `baseroll approve python-0123456789ab`" in text[E.AWAITING_APPROVAL]
    assert text[E.FINISHED].endswith("finished: 5 done, 1 failed, 0 skipped in 2 waves")


@pytest.mark.parametrize("change, error", [
    ({"schema": "baseroll.dev/rollout-event/v2"}, "schema: expected"),
    ({"kind": "exploded"}, "kind: one of started"),
    ({"rollout": {"rollout_id": "Not An Id"}}, "rollout.rollout_id"),
    ({"seq": -1}, "seq: a non-negative integer"),
    ({"wave": "1"}, "wave: a non-negative integer or null"),
    ({"id": "python-0123456789ab:halted:1:8"}, "is not this event's id"),
])
def test_decode_refuses_what_is_not_an_event(change, error):
    doc = {**E.to_document(ONE_OF_EACH[E.HALTED]), **change}
    with pytest.raises(EventError, match=error):
        E.decode(message(json.dumps(doc).encode()))


def test_publish_sends_to_the_events_topic():
    bus = FakeBus()
    assert publisher.publish(bus, ONE_OF_EACH[E.STARTED], ONE_OF_EACH[E.WAVE_RELEASED]) == 2
    sent = bus.published[topics.EVENTS]
    assert [m.attributes["kind"] for m in sent] == [E.STARTED, E.WAVE_RELEASED]
    assert E.decode(sent[1]) == ONE_OF_EACH[E.WAVE_RELEASED]
    assert publisher.publish(bus) == 0
    assert topics.EVENTS in topics.PUBLISHED  # the local stack creates every published topic


class BrokenBus:
    def __init__(self, exc: Exception) -> None:
        self.exc, self.calls = exc, 0

    def publish(self, topic, items):
        self.calls += 1
        list(items)
        raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("NotFound: topic baseroll-events"), TimeoutError("deadline"),
                                 OSError("connection refused")])
def test_a_failed_publish_is_logged_and_never_raised(exc, capsys):
    bus = BrokenBus(exc)
    assert publisher.publish(bus, ONE_OF_EACH[E.HALTED]) == 0
    assert bus.calls == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    unpublished = [line for line in lines if line.get("message") == "rollout_event.unpublished"]
    assert unpublished and unpublished[0]["event_ids"] == ["python-0123456789ab:halted:1:7"]
    assert any(line.get("message") == "rollout_event" and line.get("kind") == "halted" for line in lines)


def test_docs_events_md_shows_each_kind_as_the_code_builds_it():
    """docs/EVENTS.md: the whole `started` example decodes, and each kind's detail example is the builder's."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "EVENTS.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]
    started = E.decode(message(json.dumps(blocks[0]).encode()))
    assert started == ONE_OF_EACH[E.STARTED]
    details = [b["detail"] for b in blocks[1:]]
    assert details == [dict(e.detail) for kind, e in ONE_OF_EACH.items() if kind != E.STARTED]
    for kind in E.KINDS:
        assert f"| `{kind}` |" in text, kind
