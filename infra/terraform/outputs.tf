output "topics" {
  description = "baseroll topic names."
  value = {
    requests = google_pubsub_topic.baseroll["requests"].name
    tasks    = google_pubsub_topic.baseroll["tasks"].name
    results  = google_pubsub_topic.baseroll["results"].name
    events   = google_pubsub_topic.events.name
  }
}

output "dead_letter_topics" {
  description = "Dead-letter topic per baseroll topic (each has a pull subscription of the same name)."
  value       = { for key, topic in google_pubsub_topic.dead_letter : local.topics[key] => topic.name }
}

output "source_topics" {
  description = "Topic ids the Artifact Registry and Cloud Build triggers listen on."
  value       = local.source_topic_ids
}

output "functions" {
  description = "Entry point => function name and URI (internal ingress only)."
  value = {
    for key, fn in google_cloudfunctions2_function.baseroll : key => {
      name = fn.name
      uri  = fn.service_config[0].uri
    }
  }
}

output "service_accounts" {
  description = "Role => service account email."
  value       = { for key, sa in google_service_account.baseroll : key => sa.email }
}

output "config_yaml" {
  description = "The configuration document the functions receive in BASEROLL_CONFIG_YAML."
  value       = local.baseroll_config_yaml
}

output "dead_letter_commands" {
  description = "Commands that attach each dead-letter topic to the subscription Eventarc created (run once unless attach_dead_letter_policies = true)."
  value       = local.dead_letter_commands
}

output "notify_chat_function" {
  description = "The function posting rollout events to Google Chat (null unless chat_webhook_secret is set)."
  value       = one(google_cloudfunctions2_function.notify_chat[*].name)
}
