"""`baseroll approve ROLLOUT_ID` against the Pub/Sub stand-in, read back as on_roll_request reads it.

The stand-in, the push receiver and the topic are test_cli_publish's fixtures.
"""
from __future__ import annotations

import json

import pytest
from baseroll.contracts import requests
from baseroll.contracts.requests import Request

from tests.integration.test_cli_publish import (  # noqa: F401 - fixtures
    PROJECT,
    WAIT_S,
    invoke,
    published,
    receiver,
    received_request,
    standin,
    topic,
)

pytestmark = pytest.mark.integration


def test_approve_publishes_an_approve_request(standin, topic, receiver) -> None:
    result = invoke("--json", "approve", "python-0123456789ab", "--project", PROJECT, "--reason", "canaries fine")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    req, attributes = received_request(receiver, out["message_id"])
    assert req == Request(action="approve", rollout_id="python-0123456789ab", reason="canaries fine")
    assert attributes == {"schema": requests.SCHEMA, "action": "approve"}
    assert out["topic"] == topic and out["request"] == requests.to_document(req)


def test_approve_plain_output_is_the_message_id(standin, topic, receiver) -> None:
    result = invoke("approve", "python-0123456789ab", "--project", PROJECT)
    assert result.exit_code == 0, result.output
    assert received_request(receiver, result.stdout.strip())[0].action == "approve"


@pytest.mark.parametrize("args, needle", [
    (["Not_An_Id"], "rollout_id: 'Not_An_Id' is not a rollout id"),
    (["python-1", "--reason", "x" * 501], "reason: longer than 500"),
])
def test_invalid_approve_exits_2_and_publishes_nothing(standin, topic, receiver, args, needle) -> None:
    result = invoke("approve", *args, "--project", PROJECT)
    assert result.exit_code == 2 and needle in result.stderr and result.stdout == ""
    assert published(standin, topic) == 0
    assert standin.wait_idle(WAIT_S) and receiver.count() == 0


def test_approve_to_a_missing_topic_exits_3(standin) -> None:
    result = invoke("approve", "python-1", "--project", PROJECT, "--topic", "no-such-topic")
    assert result.exit_code == 3 and "NotFound" in result.stderr
