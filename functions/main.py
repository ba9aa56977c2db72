"""Cloud Run functions entry points: CloudEvent in → core call. Nothing else lives here.

Deployed with GOOGLE_FUNCTION_SOURCE=functions/main.py; run locally with
`functions-framework --source functions/main.py --target <name> --signature-type cloudevent`.
"""
import os

import functions_framework
from baseroll import runtime
from baseroll.edge import handlers
from baseroll.edge import notify_chat as chat
from cloudevents.http import CloudEvent


@functions_framework.cloud_event
def on_artifact_push(event: CloudEvent) -> None:
    """Topic `gcr`: an Artifact Registry push that moves a tracked base tag starts a rollout."""
    handlers.on_artifact_push(event.data, event["id"], runtime.from_environment)


@functions_framework.cloud_event
def roll_service(event: CloudEvent) -> None:
    """Topic `baseroll-tasks`: roll one service."""
    handlers.roll_service(event.data, event["id"], runtime.from_environment)


@functions_framework.cloud_event
def on_roll_result(event: CloudEvent) -> None:
    """Topic `baseroll-results`: worker results and coordinator steps."""
    handlers.on_roll_result(event.data, event["id"], runtime.from_environment)


@functions_framework.cloud_event
def on_roll_request(event: CloudEvent) -> None:
    """Topic `baseroll-requests`: roll requests (CLI, Cloud Build step, by hand, the scheduled sweep)."""
    handlers.on_roll_request(event.data, event["id"], runtime.from_environment)


@functions_framework.cloud_event
def on_build_complete(event: CloudEvent) -> None:
    """Topic `cloud-builds`: a successful build rolls the bases it pushed and redeploys the apps it pushed."""
    handlers.on_build_complete(event.data, event["id"], runtime.from_environment)


@functions_framework.cloud_event
def notify_chat(event: CloudEvent) -> None:
    """Topic `baseroll-events`, optional (Terraform `chat_webhook_secret`): post each rollout event to Google Chat."""
    chat.notify(event.data, event["id"], os.environ)
