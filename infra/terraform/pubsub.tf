# ---------------------------------------------------------------------------------------------
# baseroll's own topics. Every topic a trigger reads (these three, and the source topics `gcr`
# and `cloud-builds`) has a dead-letter topic and a subscription that keeps what lands there for
# inspection and replay (a topic without subscriptions drops messages; README.md#dead-letter-topics).
# ---------------------------------------------------------------------------------------------

locals {
  # Key => name of every topic a function is triggered by; each gets `<name>-dead-letter`.
  trigger_topics     = merge(local.topics, local.source_topics)
  trigger_topic_keys = { for key, name in local.trigger_topics : name => key }
}

resource "google_pubsub_topic" "baseroll" {
  for_each = local.topics

  project                    = var.project_id
  name                       = each.value
  labels                     = local.labels
  message_retention_duration = "86400s"

  depends_on = [google_project_service.apis]
}

# Rollout events (docs/EVENTS.md): what each rollout did, for people and their tools. No baseroll
# function is triggered by it, so it has no dead-letter topic; subscribe to it (the optional
# notify_chat function in notify.tf, a pull subscription, a push endpoint of your own). A message
# published while it has no subscription is dropped, like on any topic; the same events are in the
# planner's log (`rollout_event` lines) for a log-based alert.
resource "google_pubsub_topic" "events" {
  project                    = var.project_id
  name                       = "baseroll-events"
  labels                     = local.labels
  message_retention_duration = "86400s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  for_each = local.trigger_topics

  project = var.project_id
  name    = "${each.value}-dead-letter"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "dead_letter" {
  for_each = local.trigger_topics

  project                    = var.project_id
  name                       = "${each.value}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  labels                     = local.labels
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expires
  }
}

# ---------------------------------------------------------------------------------------------
# Source topics: Artifact Registry publishes to `gcr`, Cloud Build to `cloud-builds`, both in
# the project that owns the registry or runs the build. Each is created here or read when it exists,
# on its own (var.create_source_topics): one may exist without the other.
# ---------------------------------------------------------------------------------------------

resource "google_pubsub_topic" "source" {
  for_each = { for key, name in local.source_topics : key => name if var.create_source_topics[key] }

  project = var.project_id
  name    = each.value
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

data "google_pubsub_topic" "source" {
  for_each = { for key, name in local.source_topics : key => name if !var.create_source_topics[key] }

  project = var.project_id
  name    = each.value
}

# ---------------------------------------------------------------------------------------------
# Dead lettering, on every trigger. The Pub/Sub service agent publishes what it gives up on (after
# max_delivery_attempts) to the dead-letter topics, and must be a subscriber on the trigger's
# subscription to acknowledge it there. The trigger subscriptions are the ones Eventarc creates:
# their names are generated and exposed by no Terraform resource or data source, so neither the
# dead-letter policy nor the subscriber grant can be declared here. With
# attach_dead_letter_policies = true (the default), a local-exec step reads each trigger's
# subscription with gcloud and sets both; set it to false to run the commands of the output
# `dead_letter_commands` by hand instead.
# ---------------------------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter_publisher" {
  for_each = local.trigger_topics

  project = var.project_id
  topic   = google_pubsub_topic.dead_letter[each.key].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.pubsub_service_agent}"
}

locals {
  # Every entry point => the key of its trigger topic's dead-letter topic.
  dead_lettered_functions = {
    for name, fn in local.functions : name => local.trigger_topic_keys[fn.topic]
  }

  dead_letter_commands = {
    for name, key in local.dead_lettered_functions : name => join(" && ", [
      "SUB=$(gcloud eventarc triggers describe '${google_cloudfunctions2_function.baseroll[name].event_trigger[0].trigger}' --format='value(transport.pubsub.subscription)')",
      "gcloud pubsub subscriptions update \"$SUB\" --dead-letter-topic='${google_pubsub_topic.dead_letter[key].id}' --max-delivery-attempts=${var.max_delivery_attempts}",
      "gcloud pubsub subscriptions add-iam-policy-binding \"$SUB\" --member='serviceAccount:${local.pubsub_service_agent}' --role=roles/pubsub.subscriber",
    ])
  }
}

resource "terraform_data" "dead_letter_policy" {
  for_each = { for name, key in local.dead_lettered_functions : name => key if var.attach_dead_letter_policies }

  # Re-run when the trigger (and with it the subscription) or the policy changes.
  triggers_replace = [
    google_cloudfunctions2_function.baseroll[each.key].event_trigger[0].trigger,
    google_pubsub_topic.dead_letter[each.value].id,
    var.max_delivery_attempts,
  ]

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = "set -euo pipefail; ${local.dead_letter_commands[each.key]}"
  }

  depends_on = [google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher]
}
