# The reconciling sweep: a roll request on a schedule, so whatever a lost event missed is rolled.
# Cloud Scheduler publishes as its own service agent, which holds the publish permission.
resource "google_cloud_scheduler_job" "sweep" {
  project     = var.project_id
  region      = var.region
  name        = "baseroll-sweep"
  description = "Publishes a sweep roll request to baseroll-requests."
  schedule    = var.sweep_schedule
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.baseroll["requests"].id
    data       = base64encode(jsonencode(local.sweep_message))
    # Same attributes the CLI sets, so subscriptions can filter without decoding the data.
    attributes = local.sweep_message
  }

  depends_on = [google_project_service.apis]
}
