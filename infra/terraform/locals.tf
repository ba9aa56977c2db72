locals {
  labels = {
    app = "baseroll"
  }

  # The baseroll topics (key => topic name). The code publishes to these names.
  topics = {
    requests = "baseroll-requests"
    tasks    = "baseroll-tasks"
    results  = "baseroll-results"
  }

  # Topics other services publish to in the host project (key => topic name).
  source_topics = {
    gcr          = "gcr"
    cloud_builds = "cloud-builds"
  }

  # Every entry point in functions/main.py, the topic that triggers it, the identity it runs as,
  # and the dead-letter topic key (null = no dead-letter topic: the sweep covers lost source events).
  functions = {
    on_artifact_push = {
      description = "Artifact Registry push (topic gcr): a tracked base tag moved, roll that base."
      topic       = "gcr"
      identity    = "planner"
      dead_letter = null
    }
    on_build_complete = {
      description = "Cloud Build notification (topic cloud-builds): roll rebuilt bases, redeploy rebuilt shared app images."
      topic       = "cloud-builds"
      identity    = "planner"
      dead_letter = null
    }
    on_roll_request = {
      description = "Roll request or scheduled sweep (topic baseroll-requests): plan, rebase and fan out tasks."
      topic       = "baseroll-requests"
      identity    = "planner"
      dead_letter = "requests"
    }
    roll_service = {
      description = "One service task (topic baseroll-tasks): deploy by digest, wait ready, roll back on failure."
      topic       = "baseroll-tasks"
      identity    = "worker"
      dead_letter = "tasks"
    }
    on_roll_result = {
      description = "Task result (topic baseroll-results): advance waves, halt on the failure budget, report."
      topic       = "baseroll-results"
      identity    = "planner"
      dead_letter = "results"
    }
  }

  # The configuration document the functions read from BASEROLL_CONFIG_YAML
  # (schema: functions/baseroll/config.py). Keep it a plain object of var references:
  # tests/unit/test_terraform.py renders it from terraform.tfvars.example and validates it with the code.
  baseroll_config = {
    projects           = var.fleet_projects
    regions            = var.fleet_regions
    allowed_registries = var.allowed_registries
    base_tracks        = var.base_tracks
    pubsub_project     = var.project_id
    store = {
      project  = var.project_id
      database = local.firestore_database
    }
    labels = {
      opt_out = var.opt_out_label
      cohort  = var.canary_label
      app_tag = var.app_tag_label
    }
    rollout = {
      ready_timeout_s     = var.ready_timeout_seconds
      concurrency         = var.rollout_concurrency
      drift_policy        = var.drift_policy
      waves               = var.waves
      failure_budget      = var.failure_budget
      write_quota_per_min = var.write_quota_per_minute
      region_quota        = var.region_write_quota
      approval            = var.rollout_approval
      windows             = var.maintenance_windows
      verify = {
        enabled = var.verify_at_zero_traffic
        path    = var.verify_path
      }
    }
    signatures = {
      policy        = var.signature_policy
      request_topic = var.sign_request_topic
    }
  }

  baseroll_config_yaml = yamlencode(local.baseroll_config)

  # Rollout records and track lineage live in a Firestore database of their own (store.tf), so
  # the functions' grants on it reach nothing else in the project.
  firestore_database = "baseroll"

  # The scheduled sweep: a roll request that reconciles whatever a lost event missed.
  sweep_message = {
    schema = "baseroll.dev/roll-request/v1"
    action = "sweep"
  }

  # Topic name => topic id (projects/P/topics/T), whether created here or read.
  source_topic_ids = merge(
    { for key, topic in google_pubsub_topic.source : topic.name => topic.id },
    { for key, topic in data.google_pubsub_topic.source : topic.name => topic.id },
  )
  topic_ids = merge(
    { for key, topic in google_pubsub_topic.baseroll : topic.name => topic.id },
    local.source_topic_ids,
  )

  pubsub_service_agent = "service-${data.google_project.host.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  base_repositories = { for r in var.base_repositories : "${r.project}/${r.location}/${r.repository}" => r }
  app_repositories  = { for r in var.app_repositories : "${r.project}/${r.location}/${r.repository}" => r }

  # Runtime service accounts as IAM resource names; the project is read from the email when it
  # has one (name@PROJECT.iam.gserviceaccount.com), else "-" (e.g. N-compute@developer...).
  fleet_runtime_service_accounts = {
    for email in var.fleet_runtime_service_accounts :
    email => "projects/${try(regex("@([a-z][a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", email)[0], "-")}/serviceAccounts/${email}"
  }

  base_track_hosts = distinct([for t in var.base_tracks : lower(split("/", t.image)[0])])
}

data "google_project" "host" {
  project_id = var.project_id
}
