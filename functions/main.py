"""Cloud Run functions entry points: CloudEvent in → core call. Nothing else lives here.

Deployed with GOOGLE_FUNCTION_SOURCE=functions/main.py; run locally with
`functions-framework --source functions/main.py --target on_artifact_push --signature-type cloudevent`.
"""
import functions_framework
from cloudevents.http import CloudEvent

from baseroll import handlers, runtime


@functions_framework.cloud_event
def on_artifact_push(event: CloudEvent) -> None:
    handlers.on_artifact_push(event.data, event["id"], runtime.from_environment)
