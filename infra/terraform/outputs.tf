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

output "parquet_path" {
  description = "Pass as --parquet-path to python -m pipelines.compact"
  value       = "gs://${google_storage_bucket.archive.name}/parquet"
}

output "bigquery_events_table" {
  description = "The Parquet archive in BigQuery: PROJECT.DATASET.TABLE"
  value       = "${var.project}.${google_bigquery_dataset.archive.dataset_id}.${google_bigquery_table.events.table_id}"
}

output "bigtable" {
  description = "Pass as --bigtable_instance and --bigtable_table"
  value = {
    instance = google_bigtable_instance.counts.name
    table    = google_bigtable_table.aggregates.name
  }
}

output "stats_service_url" {
  description = "URL of the stats service: /v1/stats, /v1/top, the dashboard at /, the API docs at /docs"
  value       = google_cloud_run_v2_service.stats.uri
}
