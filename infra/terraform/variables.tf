# Defaults equal the pipeline's own defaults (pipelines/options.py, schemas/storage.py);
# tests/test_terraform.py keeps the two in step.

variable "project" {
  description = "GCP project id"
  type        = string
}

variable "region" {
  description = "Region for the bucket and Dataflow"
  type        = string
  default     = "us-central1"
}

variable "bigtable_zone" {
  description = "Zone of the Bigtable cluster"
  type        = string
  default     = "us-central1-b"
}

variable "events_topic" {
  description = "Topic the clients publish events to"
  type        = string
  default     = "viewcounts-events"
}

variable "events_subscription" {
  description = "Subscription the streaming job reads (--input_subscription)"
  type        = string
  default     = "viewcounts-events-sub"
}

variable "dead_letter_topic" {
  description = "Topic for dead letters (--dead_letter_topic)"
  type        = string
  default     = "viewcounts-dead-letters"
}

variable "dead_letter_subscription" {
  description = "Subscription to inspect and redrive dead letters"
  type        = string
  default     = "viewcounts-dead-letters-sub"
}

variable "subscription_retention" {
  description = "How long the events subscription keeps messages, acknowledged ones included, so a seek can replay them"
  type        = string
  default     = "604800s"
}

variable "bigtable_instance" {
  description = "Bigtable instance (--bigtable_instance)"
  type        = string
  default     = "viewcounts"
}

variable "bigtable_table" {
  description = "Bigtable table of aggregates (--bigtable_table)"
  type        = string
  default     = "viewcounts"
}

variable "bigtable_nodes" {
  description = "Nodes in the Bigtable cluster"
  type        = number
  default     = 1
}

variable "aggregate_retention_days" {
  description = "Cells of aggregates older than this are garbage-collected"
  type        = number
  default     = 400
}

variable "archive_bucket" {
  description = "Bucket of the raw archive and dead-letter files (--archive_path gs://BUCKET/archive)"
  type        = string
  default     = "viewcounts-archive"
}

variable "raw_retention_days" {
  description = "Raw events in the archive are deleted after this many days"
  type        = number
  default     = 30
}

variable "parquet_retention_days" {
  description = "Compacted Parquet hours (gs://BUCKET/parquet, pipelines/compact.py) are deleted after this many days"
  type        = number
  default     = 400
}

variable "bigquery_dataset" {
  description = "BigQuery dataset of the Parquet archive's external table"
  type        = string
  default     = "viewcounts_archive"
}

variable "bigquery_events_table" {
  description = "BigQuery external table over gs://BUCKET/parquet (one row per distinct event of each hour)"
  type        = string
  default     = "events"
}

variable "bigquery_require_partition_filter" {
  description = "Queries of the events table must filter on dt (or hour), so none scans the whole archive by mistake"
  type        = bool
  default     = true
}
