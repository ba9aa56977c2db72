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

resource "google_project_iam_member" "trigger_event_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.baseroll["trigger"].email}"
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

# Tasks (fan-out), results (coordinator bookkeeping) and requests (follow-up rolls).
resource "google_pubsub_topic_iam_member" "planner_publisher" {
  for_each = local.topics

  project = var.project_id
  topic   = google_pubsub_topic.baseroll[each.key].name
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

resource "google_project_iam_member" "worker_run_developer" {
  for_each = toset(var.fleet_projects)

  project = each.value
  role    = "roles/run.developer"
  member  = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# Deploying a revision that runs as service account X requires iam.serviceAccounts.actAs on X.
resource "google_service_account_iam_member" "worker_act_as" {
  for_each = local.fleet_runtime_service_accounts

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

resource "google_artifact_registry_repository_iam_member" "worker_app_reader" {
  for_each = local.app_repositories

  project    = each.value.project
  location   = each.value.location
  repository = each.value.repository
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.baseroll["worker"].email}"
}

# Before deploying, the worker checks the base tag still points at the rollout's digest...
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
