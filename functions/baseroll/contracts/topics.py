"""Pub/Sub topic names baseroll publishes to and is triggered by (infra/terraform declares each)."""
REQUESTS = "baseroll-requests"  # roll requests: CLI, Cloud Build step, sweep, by hand
TASKS = "baseroll-tasks"  # one message per service to roll (worker: roll_service)
RESULTS = "baseroll-results"  # worker results and the coordinator's own wave steps (on_roll_result)
ARTIFACT_PUSHES = "gcr"  # Artifact Registry notifications
BUILDS = "cloud-builds"  # Cloud Build notifications
EVENTS = "baseroll-events"  # rollout events for people and their tools (docs/EVENTS.md)

PUBLISHED = (REQUESTS, TASKS, RESULTS, EVENTS)
