# ---------------------------------------------------------------------------------------------
# One service account per role. Every grant below is additive (_iam_member), scoped to the
# narrowest resource that works, and checked against a per-account allow-list by
# tests/unit/test_terraform.py. Nothing is granted to allUsers/allAuthenticatedUsers and no
# primitive role (owner/editor/viewer) is used.
# ---------------------------------------------------------------------------------------------

locals {
  service_accounts = {
    trigger = "Eventarc trigger identity: invokes the baseroll functions, nothing else."
    planner = "Runs on_artifact_push, on_build_complete, on_roll_request, on_roll_result: discovers the fleet, rebases images, publishes tasks."
    worker  = "Runs roll_service: deploys one service by digest, waits for ready, rolls back."
    builder = "Cloud Build identity for building the functions' images."
  }
}

resource "google_service_account" "baseroll" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = "baseroll-${each.key}"
  display_name = "baseroll ${each.key}"
  description  = each.value

  depends_on = [google_project_service.apis]
}

# --- trigger ---------------------------------------------------------------------------------
# roles/run.invoker on each function's service: see google_cloud_run_service_iam_member.trigger_invoker.
# No roles/eventarc.eventReceiver: every trigger routes direct Pub/Sub events, for which Eventarc
# needs none (README.md#identities-and-why-each-grant, "Eventarc roles and permissions").

# Eventarc's Pub/Sub push to a function is authenticated as the trigger account: the Pub/Sub
# service agent mints that account's OIDC token. Projects that enabled Pub/Sub on or before
# 8 April 2021 must grant the agent Token Creator for it (Eventarc roles and permissions); later
# ones hold it already, where this grant changes nothing. Scoped to the trigger account only.
resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  service_account_id = google_service_account.baseroll["trigger"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.pubsub_service_agent}"
}

# --- planner ---------------------------------------------------------------------------------

resource "google_project_iam_member" "planner_run_viewer" {
  for_each = toset(var.fleet_projects)

  project = each.value
  role    = "roles/run.viewer"
  member  = "serviceAccount:${google_service_account.baseroll["planner"].email}"
}

resource "google_artifact_registry_repository_iam_member" "planner_base_reader" {
  for_each = local.base_repositories

  project    = each.value.project
  location   = each.value.location
  repository = each.value.repository
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.baseroll["planner"].email}"
}

# The rebase writes the new app manifest (and mounts the new base's layers) into app repositories.
resource "google_artifact_registry_repository_iam_member" "planner_app_writer" {
  for_each = local.app_repositories

  project    = each.value.project
  location   = each.value.location
  repository = each.value.repository
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.baseroll["planner"].email}"
}

# The planner publishes tasks (rollout/step.py: the fan-out) and results (rollout/planner.py,
# lease.py, step.py: the coordinator's own steps), never roll requests: those come from the CLI,
# the Cloud Build step and the scheduler (test_terraform checks the code for it).
resource "google_pubsub_topic_iam_member" "planner_publisher" {
  for_each = toset(["tasks", "results"])

  project = var.project_id
  topic   = google_pubsub_topic.baseroll[each.key].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.baseroll["planner"].email}"
}

# Rollout events (rollout/events.py): published by the coordinator (on_roll_result), by
# planner.start and planner.control (on_roll_request, on_artifact_push, on_build_complete).
resource "google_pubsub_topic_iam_member" "planner_events_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.events.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.baseroll["planner"].email}"
}

# Sign requests for rebased images (signatures.policy = "require"): the signing step's topic,
# which lives in the host project and is owned by whoever runs the signing step.
resource "google_pubsub_topic_iam_member" "planner_sign_requests" {
  count = var.sign_request_topic == null ? 0 : 1

  project = var.project_id
  topic   = var.sign_request_topic
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.baseroll["planner"].email}"
}

# --- worker ----------------------------------------------------------------------------------

# The worker's Cloud Run calls (fleet/cloudrun.py) are GetService (run.services.get), UpdateService
# (run.services.update) and polling the update's long-running operation (run.operations.get).
# roles/run.developer would also let it create and delete services and jobs; this role cannot.
resource "google_project_iam_custom_role" "worker_deployer" {
  for_each = toset(var.fleet_projects)

  project     = each.value
  role_id     = "baserollWorkerDeployer"
  title       = "baseroll worker"
  description = "Read and update existing Cloud Run services (baseroll's roll_service); no create or delete."
  permissions = ["run.operations.get", "run.services.get", "run.services.update"]
}

resource "google_project_iam_member" "worker_deployer" {
  for_each = toset(var.fleet_projects)

  project = each.value
  role    = google_project_iam_custom_role.worker_deployer[each.value].name
  member  = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# Verify at zero traffic (rollout.verify, on by default; docs/GOOGLE_APIS.md#verify-at-zero-traffic):
# the worker sends each new revision's verification requests to its tag URL with its own ID token,
# which Cloud Run lets through only for an identity allowed to invoke the service (roles/run.invoker,
# "Can invoke a Cloud Run service"). Granted on each fleet project, it lets the worker call any
# path of every service in it, not only the ones it rolls: the cost of the check. Off with
# verify_at_zero_traffic = false, which also turns the check off in the config (readiness alone).
resource "google_project_iam_member" "worker_invoker" {
  for_each = var.verify_at_zero_traffic ? toset(var.fleet_projects) : toset([])

  project = each.value
  role    = "roles/run.invoker"
  member  = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# Updating a service that runs as service account X (a new revision) requires
# iam.serviceAccounts.actAs on X (Cloud Run, "Configure service identity for services").
resource "google_service_account_iam_member" "worker_act_as" {
  for_each = local.fleet_runtime_service_accounts

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# No read on app repositories: the worker never reads an app image; Cloud Run's own service agent
# pulls it when the new revision starts, as it pulled the image it replaces (same repository).

# Before deploying, the worker checks the base tag still points at the rollout's digest
# (rollout/worker.py, pipeline.current_digest: a HEAD of the tag).
resource "google_artifact_registry_repository_iam_member" "worker_base_reader" {
  for_each = local.base_repositories

  project    = each.value.project
  location   = each.value.location
  repository = each.value.repository
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# (That the rollout was not halted or aborted it reads from the store: store.tf.)

resource "google_pubsub_topic_iam_member" "worker_results_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.baseroll["results"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# --- builder ---------------------------------------------------------------------------------
# Google documents roles/run.builder on the project for a function's build account (Cloud Run,
# "Build service account"): artifactregistry upload/download/deleteArtifacts, logging.logEntries.create,
# source.repos.get, storage.objects.get. The three grants below give the build the parts it uses,
# narrower: logs, the source object, and the one repository the images go to. Set
# builder_run_builder = true to grant Google's role as documented instead of guessing further.

resource "google_project_iam_member" "builder_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.baseroll["builder"].email}"
}

# The build reads the source from the bucket Cloud Functions copies it into
# (gcf-v2-sources-PROJECT_NUMBER-REGION), which only exists after the first deployment, so the
# read grant cannot be scoped to that bucket ahead of time. Keep the host project dedicated.
resource "google_project_iam_member" "builder_source_reader" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = "serviceAccount:${google_service_account.baseroll["builder"].email}"
}

resource "google_artifact_registry_repository_iam_member" "builder_image_writer" {
  project    = google_artifact_registry_repository.functions.project
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.baseroll["builder"].email}"
}

resource "google_project_iam_member" "builder_run_builder" {
  count = var.builder_run_builder ? 1 : 0

  project = var.project_id
  role    = "roles/run.builder"
  member  = "serviceAccount:${google_service_account.baseroll["builder"].email}"
}
