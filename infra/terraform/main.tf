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

# The stats service (`viewcounts serve`, query/service.py; image: infra/service/Dockerfile) on
# Cloud Run, as a service account of its own that may only read the aggregates: roles/bigtable.reader
# on the Bigtable instance, and nothing on the project.
resource "google_service_account" "stats_service" {
  account_id   = var.service_account_id
  display_name = "viewcounts stats service (reads the Bigtable aggregates)"
}

resource "google_bigtable_instance_iam_member" "stats_service_reader" {
  instance = google_bigtable_instance.counts.name
  role     = "roles/bigtable.reader"
  member   = "serviceAccount:${google_service_account.stats_service.email}"
}

resource "google_cloud_run_v2_service" "stats" {
  name                = var.service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false
  template {
    service_account                  = google_service_account.stats_service.email
    max_instance_request_concurrency = var.service_concurrency
    scaling {
      min_instance_count = var.service_min_instances
      max_instance_count = var.service_max_instances
    }
    containers {
      image = var.service_image
      ports {
        container_port = 8080
      }
      env {
        name  = "BIGTABLE_PROJECT"
        value = var.project
      }
      env {
        name  = "BIGTABLE_INSTANCE"
        value = google_bigtable_instance.counts.name
      }
      env {
        name  = "BIGTABLE_TABLE"
        value = google_bigtable_table.aggregates.name
      }
      resources {
        limits = {
          cpu    = var.service_cpu
          memory = var.service_memory
        }
        # the final-window cache and the open tails' expiry run between requests
        cpu_idle = false
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 2
        failure_threshold = 30
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds = 30
      }
    }
  }
  depends_on = [google_bigtable_instance_iam_member.stats_service_reader]
}

# Who may call the service (Cloud Run checks an identity token): none unless listed.
resource "google_cloud_run_v2_service_iam_member" "stats_invokers" {
  for_each = toset(var.service_invokers)
  name     = google_cloud_run_v2_service.stats.name
  location = google_cloud_run_v2_service.stats.location
  role     = "roles/run.invoker"
  member   = each.value
}
