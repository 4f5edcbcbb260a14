# Pub/Sub: events in, dead letters out; each topic with one subscription (the job reads the
# events', a person inspects and redrives the dead letters'). The events' subscription keeps
# acknowledged messages too, so a seek can replay them.
locals {
  pubsub = {
    events = {
      topic                 = var.events_topic
      subscription          = var.events_subscription
      retain_acked_messages = true
    }
    dead_letters = {
      topic                 = var.dead_letter_topic
      subscription          = var.dead_letter_subscription
      retain_acked_messages = false
    }
  }
}

resource "google_pubsub_topic" "viewcounts" {
  #checkov:skip=CKV_GCP_83:encrypted at rest with Google-managed keys; a customer key is an organisation's choice and needs a Cloud KMS key ring this module does not own
  for_each   = local.pubsub
  name       = each.value.topic
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "viewcounts" {
  for_each                   = local.pubsub
  name                       = each.value.subscription
  topic                      = google_pubsub_topic.viewcounts[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = var.subscription_retention
  retain_acked_messages      = each.value.retain_acked_messages
  expiration_policy {
    ttl = ""
  }
}

# Bigtable: one table of aggregates, one column family (layout: schemas/storage.py).
# deletion_protection (default on): `terraform destroy` and replacements refuse to delete the
# aggregates; set bigtable_deletion_protection = false first to tear the instance down.
resource "google_bigtable_instance" "counts" {
  #checkov:skip=CKV_GCP_85:encrypted at rest with Google-managed keys; a customer key is an organisation's choice and needs a Cloud KMS key ring this module does not own
  name                = var.bigtable_instance
  deletion_protection = var.bigtable_deletion_protection
  cluster {
    cluster_id   = "${var.bigtable_instance}-c1"
    zone         = var.bigtable_zone
    num_nodes    = var.bigtable_nodes
    storage_type = "SSD"
  }
  depends_on = [google_project_service.apis]
}

resource "google_bigtable_table" "aggregates" {
  name                = var.bigtable_table
  instance_name       = google_bigtable_instance.counts.name
  deletion_protection = var.bigtable_deletion_protection ? "PROTECTED" : "UNPROTECTED"
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

# One bucket, one folder per use (prefixes): raw archive `archive/` (purged after
# raw_retention_days), dead-letter files `dead-letters/` and those a redrive refused
# `dead-letters-redrive/` (dead_letter_retention_days), the Parquet archive `parquet/`
# (pipelines/compact.py: closed hours, deduplicated; kept longer, for analysts), the enrichment
# snapshot `metadata/`, Dataflow's `dataflow/tmp/` and `dataflow/staging/`, Flex Template specs
# `templates/`. Versioned: an object deleted or overwritten by mistake stays recoverable for
# noncurrent_retention_days (the archive is what recomputes and redrives read).
# Its name: var.archive_bucket, else one derived from the project id (bucket names are global).
locals {
  archive_bucket = coalesce(var.archive_bucket, "${var.project}-viewcounts")
}

resource "google_storage_bucket" "archive" {
  #checkov:skip=CKV_GCP_62:who reads and writes objects is recorded by Cloud Audit Logs (Data Access logs for Cloud Storage, a project or organisation setting); usage-log buckets are Cloud Storage's older, coarser mechanism
  name                        = local.archive_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  versioning {
    enabled = true
  }
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
  lifecycle_rule {
    condition {
      age            = var.dead_letter_retention_days
      matches_prefix = ["dead-letters/", "dead-letters-redrive/"]
    }
    action {
      type = "Delete"
    }
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

# The Parquet archive as a BigQuery external table: columns from the files
# (schemas/parquet_archive.py), dt (DATE) and hour (INTEGER) from the Hive-style folders;
# the wildcard starts with dt= so files being written under parquet/_staging/ are never read.
resource "google_bigquery_dataset" "archive" {
  #checkov:skip=CKV_GCP_81:holds only an external table (no data of its own); the files are in the archive bucket, encrypted at rest with Google-managed keys
  dataset_id = var.bigquery_dataset
  location   = var.region
  depends_on = [google_project_service.apis]
}

resource "google_bigquery_table" "events" {
  #checkov:skip=CKV_GCP_121:an external table holds no data (dropping it deletes no file), and schema changes of autodetect recreate it
  #checkov:skip=CKV_GCP_80:an external table stores nothing to encrypt; its files are in the archive bucket
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
  depends_on   = [google_project_service.apis]
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
  depends_on = [google_bigtable_instance_iam_member.stats_service_reader, google_project_service.apis]
}

# Who may call the service (Cloud Run checks an identity token): none unless listed.
resource "google_cloud_run_v2_service_iam_member" "stats_invokers" {
  for_each = toset(var.service_invokers)
  name     = google_cloud_run_v2_service.stats.name
  location = google_cloud_run_v2_service.stats.location
  role     = "roles/run.invoker"
  member   = each.value
}
