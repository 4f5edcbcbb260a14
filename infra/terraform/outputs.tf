# The flags a job needs, from what this module made. job_flags: the job's own flags
# (pipelines/options.py; the Flex Template's parameters of the same names); dataflow_flags:
# Dataflow's. Left to the command: --runner, --streaming, --setup_file (a path in the checkout),
# --metadata_refresh_s and the job's tuning flags (their defaults hold; infra/dataflow/README.md).
locals {
  bucket_url = "gs://${google_storage_bucket.archive.name}"
  job_flags = {
    input_subscription = google_pubsub_subscription.viewcounts["events"].id
    dead_letter_topic  = google_pubsub_topic.viewcounts["dead_letters"].id
    archive_path       = "${local.bucket_url}/archive"
    dead_letter_path   = "${local.bucket_url}/dead-letters"
    bigtable_project   = var.project
    bigtable_instance  = google_bigtable_instance.counts.name
    bigtable_table     = google_bigtable_table.aggregates.name
    metadata_path      = "${local.bucket_url}/metadata/videos.jsonl"
  }
  dataflow_flags = {
    project               = var.project
    region                = var.region
    job_name              = var.dataflow_job_name
    service_account_email = google_service_account.worker.email
    temp_location         = "${local.bucket_url}/dataflow/tmp"
    staging_location      = "${local.bucket_url}/dataflow/staging"
  }
}

output "job_flags" {
  description = "The streaming job's flags, {flag: value}: pass each as --flag=value (metadata_path: upload the JSONL snapshot there before starting)"
  value       = local.job_flags
}

output "dataflow_flags" {
  description = "Dataflow's flags for the job, {flag: value}: pass each as --flag=value"
  value       = local.dataflow_flags
}

output "job_args" {
  description = "job_flags and dataflow_flags as one command line: python -m pipelines.streaming --runner=DataflowRunner --streaming --setup_file=./setup.py $(terraform output -raw job_args)"
  value       = join(" ", [for flag, value in merge(local.job_flags, local.dataflow_flags) : "--${flag}=${value}"])
}

output "template_parameters" {
  description = "job_flags as gcloud dataflow flex-template run --parameters=... takes them"
  value       = join(",", [for flag, value in local.job_flags : "${flag}=${value}"])
}

output "parquet_path" {
  description = "Pass as --parquet-path to python -m pipelines.compact"
  value       = "${local.bucket_url}/parquet"
}

output "bigquery_events_table" {
  description = "The Parquet archive in BigQuery: PROJECT.DATASET.TABLE"
  value       = "${var.project}.${google_bigquery_dataset.archive.dataset_id}.${google_bigquery_table.events.table_id}"
}

output "stats_service_url" {
  description = "URL of the stats service: /v1/stats, /v1/top, the dashboard at /, the API docs at /docs"
  value       = google_cloud_run_v2_service.stats.uri
}
