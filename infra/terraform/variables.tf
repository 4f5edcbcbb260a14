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
  description = "Bucket of the raw archive, dead-letter files, Parquet archive and Dataflow's files; default: PROJECT-viewcounts (bucket names are global)"
  type        = string
  default     = null
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

variable "service_image" {
  description = "Image of the stats service (viewcounts serve), built from infra/service/Dockerfile and pushed to a registry Cloud Run can pull from"
  type        = string
}

variable "service_name" {
  description = "Cloud Run service of the stats API and dashboard"
  type        = string
  default     = "viewcounts-stats"
}

variable "service_account_id" {
  description = "Service account the stats service runs as (roles/bigtable.reader on the instance, nothing else)"
  type        = string
  default     = "viewcounts-stats"
}

variable "service_min_instances" {
  description = "Instances of the stats service kept warm (their final-window caches stay filled)"
  type        = number
  default     = 1
}

variable "service_max_instances" {
  description = "Most instances of the stats service Cloud Run starts under load"
  type        = number
  default     = 10
}

variable "service_concurrency" {
  description = "Requests one instance serves at once (one asyncio process each)"
  type        = number
  default     = 80
}

variable "service_cpu" {
  description = "CPU limit of one instance of the stats service"
  type        = string
  default     = "1"
}

variable "service_memory" {
  description = "Memory limit of one instance (the final-window cache takes --cache-mb of it)"
  type        = string
  default     = "1Gi"
}

variable "service_invokers" {
  description = "Members given roles/run.invoker on the stats service, e.g. [\"group:analysts@example.com\"]; [\"allUsers\"] makes it public"
  type        = list(string)
  default     = []
}

variable "bigtable_deletion_protection" {
  description = "Refuse to delete the Bigtable instance and table (terraform destroy, or a change that replaces them); set false before tearing them down"
  type        = bool
  default     = true
}

variable "dead_letter_retention_days" {
  description = "Dead-letter files (gs://BUCKET/dead-letters, and dead-letters-redrive of pipelines.redrive) are deleted after this many days: redrive write_failed ones before"
  type        = number
  default     = 90
}

variable "noncurrent_retention_days" {
  description = "A deleted or overwritten object of the bucket (versioned) can be restored for this many days"
  type        = number
  default     = 7
}

variable "worker_account_id" {
  description = "Service account the job's workers run as (--service_account_email): Pub/Sub, Bigtable and bucket roles on those resources only"
  type        = string
  default     = "viewcounts-worker"
}

variable "job_launchers" {
  description = "Members given roles/iam.serviceAccountUser on the worker account, so they can start jobs as it, e.g. [\"user:oncall@example.com\"]"
  type        = list(string)
  default     = []
}

variable "dataflow_job_name" {
  description = "Name of the streaming job (--job_name); the alert policies watch the Dataflow jobs whose name starts with it"
  type        = string
  default     = "viewcounts"
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) every alert policy notifies"
  type        = list(string)
  default     = []
}

variable "alert_system_lag_s" {
  description = "Dataflow system lag (seconds) that, held for 5 minutes, opens an incident"
  type        = number
  default     = 300
}

variable "alert_oldest_unacked_s" {
  description = "Age (seconds) of the oldest unacknowledged event on the events subscription that, held for 5 minutes, opens an incident"
  type        = number
  default     = 900
}

variable "alert_counter_window_s" {
  description = "Window (seconds) over which the growth of write_failures and dead_letters is measured"
  type        = number
  default     = 600
}

variable "alert_dead_letters_threshold" {
  description = "Dead letters within alert_counter_window_s that open an incident (0: any); write_failures alerts on any"
  type        = number
  default     = 0
}
