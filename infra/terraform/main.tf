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
}
