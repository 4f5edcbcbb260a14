output "input_subscription" {
  description = "Pass as --input_subscription"
  value       = google_pubsub_subscription.events.id
}

output "dead_letter_topic" {
  description = "Pass as --dead_letter_topic"
  value       = google_pubsub_topic.dead_letters.id
}

output "archive_path" {
  description = "Pass as --archive_path"
  value       = "gs://${google_storage_bucket.archive.name}/archive"
}

output "bigtable" {
  description = "Pass as --bigtable_instance and --bigtable_table"
  value = {
    instance = google_bigtable_instance.counts.name
    table    = google_bigtable_table.aggregates.name
  }
}
