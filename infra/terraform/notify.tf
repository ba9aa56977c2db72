# ---------------------------------------------------------------------------------------------
# Optional: notify_chat posts rollout events (topic baseroll-events, docs/EVENTS.md) to a Google
# Chat space. Deployed only when var.chat_webhook_secret names a Secret Manager secret holding the
# space's incoming-webhook URL; it runs as an account of its own that can read that secret and
# nothing else. Chat takes 60 writes a minute per space, so the function keeps to one instance.
# ---------------------------------------------------------------------------------------------

locals {
  notify_chat = var.chat_webhook_secret != null
}

resource "google_project_service" "secretmanager" {
  count = local.notify_chat ? 1 : 0

  project            = var.project_id
  service            = "secretmanager.googleapis.com"
  disable_on_destroy = false
}

resource "google_service_account" "notifier" {
  count = local.notify_chat ? 1 : 0

  project      = var.project_id
  account_id   = "baseroll-notifier"
  display_name = "baseroll notifier"
  description  = "Runs notify_chat: reads the Chat webhook secret, posts rollout events. Nothing else."

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "notifier_webhook_reader" {
  count = local.notify_chat ? 1 : 0

  project   = var.project_id
  secret_id = var.chat_webhook_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.notifier[0].email}"

  depends_on = [google_project_service.secretmanager]
}

resource "google_cloudfunctions2_function" "notify_chat" {
  count = local.notify_chat ? 1 : 0

  project     = var.project_id
  location    = var.region
  name        = "baseroll-notify-chat"
  description = "Rollout events (topic baseroll-events) posted to a Google Chat space."
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "notify_chat"
    service_account   = google_service_account.baseroll["builder"].id
    docker_repository = google_artifact_registry_repository.functions.id

    environment_variables = {
      GOOGLE_FUNCTION_SOURCE = "functions/main.py"
    }

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    timeout_seconds                  = 60
    available_memory                 = "256Mi"
    max_instance_count               = 1
    min_instance_count               = 0
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.notifier[0].email

    environment_variables = {
      CHAT_EVENT_KINDS = join(",", var.chat_event_kinds)
    }

    # The webhook URL is a credential: it reaches the function as a secret, never in its configuration.
    secret_environment_variables {
      key        = "CHAT_WEBHOOK_URL"
      project_id = var.project_id
      secret     = var.chat_webhook_secret
      version    = "latest"
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = google_pubsub_topic.events.id
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.baseroll["trigger"].email
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.notifier_webhook_reader,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_source_reader,
    google_artifact_registry_repository_iam_member.builder_image_writer,
    google_project_iam_member.builder_run_builder,
    google_service_account_iam_member.pubsub_agent_token_creator,
  ]
}

resource "google_cloud_run_service_iam_member" "notify_chat_invoker" {
  count = local.notify_chat ? 1 : 0

  project  = var.project_id
  location = google_cloudfunctions2_function.notify_chat[0].location
  service  = google_cloudfunctions2_function.notify_chat[0].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.baseroll["trigger"].email}"
}
