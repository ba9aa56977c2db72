"""`baseroll publish` (any roll request) and `baseroll approve` (one rollout awaiting approval): a request
onto the requests topic, checked by the parser the function uses."""
from __future__ import annotations

import concurrent.futures
import re
from typing import Any, Iterable

import click

from baseroll.cli.common import (
    EXIT_INVALID,
    EXIT_PUBLISH_FAILED,
    CliState,
    emit_json,
    fail,
)
from baseroll.contracts import requests, topics
from baseroll.contracts.parsing import EventError

DEFAULT_PUBLISH_TIMEOUT_S = 30.0
# Pub/Sub topic ids (https://cloud.google.com/pubsub/docs/create-topic#resource_names).
_TOPIC_ID = re.compile(r"^(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_TOPIC_PATH = re.compile(r"^projects/[^/]+/topics/(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")


@click.command()
@click.option("--project", envvar="GOOGLE_CLOUD_PROJECT", help="Project of the topic ($GOOGLE_CLOUD_PROJECT).")
@click.option("--topic", default=topics.REQUESTS, show_default=True, help="Topic id or projects/P/topics/T.")
@click.option("--action", type=click.Choice(requests.ACTIONS), default="roll", show_default=True)
@click.option("--base", metavar="REF", help="Base track tag, host/repo:tag[@sha256:...].")
@click.option("--app", metavar="REF", help="App image, host/repo[:tag][@sha256:...] (digest required).")
@click.option("--digest", help="The new digest (sha256:...), when not in the reference.")
@click.option("--dry-run", is_flag=True, help="Plan and report only; change nothing.")
@click.option("--filter-project", multiple=True, metavar="PROJECT", help="Only services in these projects.")
@click.option("--filter-region", multiple=True, metavar="REGION", help="Only services in these regions.")
@click.option("--filter-service", multiple=True, metavar="NAME",
              help="Only these workloads (projects/P/locations/R/services/S, .../jobs/J or .../workerPools/W).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only services with this label.")
@click.option("--rollout-id", help="The rollout to resume, approve or abort.")
@click.option("--reason", help="Free text carried into the logs (at most 500 characters).")
@click.option("--timeout", type=click.FloatRange(min=1.0, max=600.0), default=DEFAULT_PUBLISH_TIMEOUT_S,
              show_default=True, help="Seconds to wait for Pub/Sub to accept the message.")
@click.option("--json", "json_output", is_flag=True, help="Print {message_id, topic, request} as JSON.")
@click.pass_obj
def publish(state: CliState, project: str | None, topic: str, action: str, base: str | None, app: str | None,
            digest: str | None, dry_run: bool, filter_project: tuple[str, ...], filter_region: tuple[str, ...],
            filter_service: tuple[str, ...], labels: tuple[str, ...], rollout_id: str | None,
            reason: str | None, timeout: float, json_output: bool) -> None:
    """Publish a roll request (schema baseroll.dev/roll-request/v1) to the requests topic.

    \b
    baseroll publish --project P --base us-docker.pkg.dev/p/bases/python:3.12 --dry-run
    baseroll publish --project P --app us-docker.pkg.dev/p/apps/shop@sha256:... --filter-region us-central1
    baseroll publish --project P --action sweep
    baseroll publish --project P --action abort --rollout-id python-0123456789ab
    baseroll publish --project P --action approve --rollout-id python-0123456789ab
    """
    topic_path = _topic_path(project, topic)
    filter_doc = {k: list(v) for k, v in (("projects", filter_project), ("regions", filter_region),
                                          ("services", filter_service)) if v}
    if labels:
        filter_doc["labels"] = _label_map(labels)
    raw = requests.to_message(action=action, base=base, app=app, digest=digest, filter=filter_doc or None,
                              dry_run=dry_run, rollout_id=rollout_id, reason=reason)
    request = _validated(raw, action)
    data, attributes = requests.to_message(request), requests.attributes(request)
    try:
        message_id = publish_message(topic_path, data, attributes, timeout)
    except PublishError as exc:
        fail(EXIT_PUBLISH_FAILED, f"publishing to {topic_path} failed: {exc}")
    if json_output or state.json_output:
        emit_json({"message_id": message_id, "topic": topic_path, "request": requests.to_document(request)})
    else:
        click.echo(message_id)


@click.command()
@click.argument("rollout_id")
@click.option("--project", envvar="GOOGLE_CLOUD_PROJECT", help="Project of the topic ($GOOGLE_CLOUD_PROJECT).")
@click.option("--topic", default=topics.REQUESTS, show_default=True, help="Topic id or projects/P/topics/T.")
@click.option("--reason", help="Free text carried into the logs (at most 500 characters).")
@click.option("--timeout", type=click.FloatRange(min=1.0, max=600.0), default=DEFAULT_PUBLISH_TIMEOUT_S,
              show_default=True, help="Seconds to wait for Pub/Sub to accept the message.")
@click.pass_obj
def approve(state: CliState, rollout_id: str, project: str | None, topic: str, reason: str | None,
            timeout: float) -> None:
    """Approve the wave ROLLOUT_ID waits at (rollout.approval): publishes an `approve` request.

    \b
    baseroll approve python-0123456789ab --project P --reason "canaries look fine"
    """
    topic_path = _topic_path(project, topic)
    request = _validated(requests.to_message(action="approve", rollout_id=rollout_id, reason=reason), "approve")
    try:
        message_id = publish_message(topic_path, requests.to_message(request), requests.attributes(request), timeout)
    except PublishError as exc:
        fail(EXIT_PUBLISH_FAILED, f"publishing to {topic_path} failed: {exc}")
    if state.json_output:
        emit_json({"message_id": message_id, "topic": topic_path, "request": requests.to_document(request)})
    else:
        click.echo(message_id)


def _topic_path(project: str | None, topic: str) -> str:
    if _TOPIC_PATH.fullmatch(topic):
        return topic
    if not _TOPIC_ID.fullmatch(topic):
        fail(EXIT_INVALID, f"--topic: {topic!r} is not a topic id or projects/P/topics/T")
    if not project:
        fail(EXIT_INVALID, "--project: required (or $GOOGLE_CLOUD_PROJECT, or a full --topic path)")
    if "/" in project:
        fail(EXIT_INVALID, f"--project: {project!r} is not a project id")
    return f"projects/{project}/topics/{topic}"


def _label_map(pairs: Iterable[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(EXIT_INVALID, f"--label: expected KEY=VALUE, got {pair!r}")
        if labels.get(key, value) != value:
            fail(EXIT_INVALID, f"--label: {key!r} given twice with different values")
        labels[key] = value
    return labels


def _validated(raw: bytes, action: str) -> requests.Request:
    """Run the message through the same parser the function uses, so what the CLI accepts is
    exactly what the function accepts."""
    try:
        return requests.parse_request(requests.message(raw, {"schema": requests.SCHEMA, "action": action}))
    except EventError as exc:
        fail(EXIT_INVALID, f"invalid request: {exc}")


class PublishError(RuntimeError):
    """Pub/Sub did not accept the message in time (unreachable, refused, no credentials...)."""


def publish_message(topic_path: str, data: bytes, attributes: dict[str, str], timeout: float) -> str:
    """Publish one message and return its id. Honours PUBSUB_EMULATOR_HOST (the client does)."""
    from google.api_core import (
        exceptions as api_exceptions,  # heavy imports: only when publishing
    )
    from google.api_core import retry as api_retry
    from google.auth import exceptions as auth_exceptions
    from google.cloud import pubsub_v1

    # The client retries UNAVAILABLE for up to 10 minutes by default; a CLI must give up sooner.
    retry = api_retry.Retry(
        predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
                                              api_exceptions.InternalServerError, api_exceptions.Aborted),
        initial=0.1, maximum=2.0, multiplier=2.0, timeout=timeout,
    )
    failures = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError,
                concurrent.futures.TimeoutError, TimeoutError, OSError)
    client = None
    try:
        # One message: publish it now instead of waiting for a batch to fill.
        client = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        future = client.publish(topic_path, data, retry=retry, timeout=timeout, **attributes)
        return future.result(timeout=timeout + 5.0)
    except failures as exc:
        raise PublishError(f"{type(exc).__name__}: {exc}".strip()) from exc
    finally:
        if client is not None:
            _close(client)


def _close(client: Any) -> None:
    """Stop batching and close the gRPC channel, so an in-process caller (tests) leaks nothing."""
    try:
        client.stop()
    except RuntimeError:  # already stopped
        pass
    client.transport.close()
