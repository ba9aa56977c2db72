# ---------------------------------------------------------------------------------------------
# Source: the repository root, so the top-level requirements.txt and functions/ both ship.
# GOOGLE_FUNCTION_SOURCE=functions/main.py then loads the entry points exactly as
# `functions-framework --source functions/main.py --target X` does locally (functions-framework
# puts functions/ on sys.path, so `import baseroll` resolves).
# ---------------------------------------------------------------------------------------------

data "archive_file" "source" {
  type        = "zip"
  source_dir  = "${path.module}/../.."
  output_path = "${path.module}/.build/baseroll-source.zip"

  excludes = [
    ".git", ".git/**",
    ".venv", ".venv/**",
    ".ci", ".ci/**",
    ".demo", ".demo/**",
    ".hypothesis", ".hypothesis/**",
    ".pytest_cache", ".pytest_cache/**",
    "tests", "tests/**",
    "infra", "infra/**",
    "build", "build/**",
    "**/__pycache__", "**/__pycache__/**", "**/*.pyc",
    "**/*.egg-info", "**/*.egg-info/**",
    # Development-only files; keeping pyproject.toml out leaves requirements.txt as the one
    # dependency manifest the Python buildpack sees.
    "pyproject.toml", "requirements-dev.txt", "Makefile",
  ]
}

resource "google_storage_bucket" "source" {
  project                     = var.project_id
  name                        = "${var.project_id}-baseroll-source"
  location                    = var.region
  labels                      = local.labels
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  depends_on = [google_project_service.apis]
}

# Named by content: any change to the source uploads a new object and redeploys every function.
resource "google_storage_bucket_object" "source" {
  bucket = google_storage_bucket.source.name
  name   = "baseroll-${data.archive_file.source.output_md5}.zip"
  source = data.archive_file.source.output_path
}

# Where the function builds push their images (instead of the shared gcf-artifacts), so the
# builder's write access is scoped to this one repository.
resource "google_artifact_registry_repository" "functions" {
  project       = var.project_id
  location      = var.region
  repository_id = "baseroll-functions"
  format        = "DOCKER"
  description   = "Images built from the baseroll functions' source."
  labels        = local.labels

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s" # 30 days; the 10 most recent stay regardless
    }
  }

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------
# The functions: one per entry point in functions/main.py (local.functions).
# ---------------------------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "baseroll" {
  for_each = local.functions

  project     = var.project_id
  location    = var.region
  name        = "baseroll-${replace(each.key, "_", "-")}"
  description = each.value.description
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = each.key
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
    timeout_seconds                  = 540
    available_memory                 = var.function_memory
    max_instance_count               = lookup(var.max_instances, each.key, 3)
    min_instance_count               = 0
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.baseroll[each.value.identity].email

    environment_variables = {
      # Topic names are fixed in functions/baseroll/topics.py; their project is pubsub_project.
      BASEROLL_CONFIG_YAML = local.baseroll_config_yaml
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = local.topic_ids[each.value.topic]
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.baseroll["trigger"].email
  }

  lifecycle {
    precondition {
      condition     = alltrue([for h in local.base_track_hosts : contains([for a in var.allowed_registries : lower(a)], h)])
      error_message = "Every base_tracks image host must be listed in allowed_registries."
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_source_reader,
    google_artifact_registry_repository_iam_member.builder_image_writer,
    google_project_iam_member.builder_run_builder,
    google_service_account_iam_member.pubsub_agent_token_creator,
  ]
}

# Eventarc pushes to each function's underlying Cloud Run service (same name as the function)
# as the trigger identity; nothing else may invoke them.
resource "google_cloud_run_service_iam_member" "trigger_invoker" {
  for_each = local.functions

  project  = var.project_id
  location = google_cloudfunctions2_function.baseroll[each.key].location
  service  = google_cloudfunctions2_function.baseroll[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.baseroll["trigger"].email}"
}
