# Pub/Sub: events in, dead letters out.
resource "google_pubsub_topic" "events" {
  name = var.events_topic
}

resource "google_pubsub_subscription" "events" {
  name                       = var.events_subscription
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.subscription_retention
  retain_acked_messages      = true
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_topic" "dead_letters" {
  name = var.dead_letter_topic
}

resource "google_pubsub_subscription" "dead_letters" {
  name                       = var.dead_letter_subscription
  topic                      = google_pubsub_topic.dead_letters.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.subscription_retention
  expiration_policy {
    ttl = ""
  }
}

# Bigtable: one table of aggregates, one column family (layout: schemas/storage.py).
resource "google_bigtable_instance" "counts" {
  name                = var.bigtable_instance
  deletion_protection = true
  cluster {
    cluster_id   = "${var.bigtable_instance}-c1"
    zone         = var.bigtable_zone
    num_nodes    = var.bigtable_nodes
    storage_type = "SSD"
  }
}

resource "google_bigtable_table" "aggregates" {
  name          = var.bigtable_table
  instance_name = google_bigtable_instance.counts.name
  column_family {
    family = "a"
  }
}

# Keep only the newest cell of a window (the latest pane), and drop cells past retention.
resource "google_bigtable_gc_policy" "aggregates" {
  instance_name   = google_bigtable_instance.counts.name
  table           = google_bigtable_table.aggregates.name
  column_family   = "a"
  mode            = "UNION"
  deletion_policy = "ABANDON"
  max_version {
    number = 1
  }
  max_age {
    duration = "${var.aggregate_retention_days * 24}h"
  }
}

# Raw archive (and dead-letter files): purge raw events after raw_retention_days.
# Parquet archive (pipelines/compact.py: closed hours, deduplicated): kept longer, for analysts.
resource "google_storage_bucket" "archive" {
  name                        = var.archive_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  lifecycle_rule {
    condition {
      age            = var.raw_retention_days
      matches_prefix = ["archive/"]
    }
    action {
      type = "Delete"
    }
  }
  lifecycle_rule {
    condition {
      age            = var.parquet_retention_days
      matches_prefix = ["parquet/"]
    }
    action {
      type = "Delete"
    }
  }
}

# The Parquet archive as a BigQuery external table: columns from the files
# (schemas/parquet_archive.py), dt (DATE) and hour (INTEGER) from the Hive-style folders;
# the wildcard starts with dt= so files being written under parquet/_staging/ are never read.
resource "google_bigquery_dataset" "archive" {
  dataset_id = var.bigquery_dataset
  location   = var.region
}

resource "google_bigquery_table" "events" {
  dataset_id          = google_bigquery_dataset.archive.dataset_id
  table_id            = var.bigquery_events_table
  deletion_protection = false
  external_data_configuration {
    autodetect    = true
    source_format = "PARQUET"
    source_uris   = ["gs://${google_storage_bucket.archive.name}/parquet/dt=*"]
    hive_partitioning_options {
      mode                     = "CUSTOM"
      source_uri_prefix        = "gs://${google_storage_bucket.archive.name}/parquet/{dt:DATE}/{hour:INTEGER}"
      require_partition_filter = var.bigquery_require_partition_filter
    }
  }
}
