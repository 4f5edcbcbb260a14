# The account the streaming job's workers run as (Dataflow: --service_account_email, output
# dataflow_flags; the batch jobs, pipelines.batch_recompute and pipelines.redrive, too). Each
# role is bound on the one resource it is for; the only project-level role is Dataflow's own.
resource "google_service_account" "worker" {
  account_id   = var.worker_account_id
  display_name = "viewcounts job workers (Pub/Sub in, Bigtable and the archive bucket out)"
  depends_on   = [google_project_service.apis]
}

locals {
  worker = "serviceAccount:${google_service_account.worker.email}"
}

# roles/dataflow.worker has no narrower scope than the project: it lets the VMs lease and
# report work items of the project's jobs and write their logs and metrics (the job's
# counters the alert policies read).
resource "google_project_iam_member" "worker_dataflow" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = local.worker
}

# On the events subscription: pull and acknowledge the events (roles/pubsub.subscriber:
# transforms.pubsub_io; Beam's ReadFromPubSub on Dataflow), and pubsub.subscriptions.get
# (roles/pubsub.viewer: Dataflow's Pub/Sub source reads the subscription's topic and backlog for
# its watermark).
resource "google_pubsub_subscription_iam_member" "worker_events" {
  for_each     = toset(["roles/pubsub.subscriber", "roles/pubsub.viewer"])
  subscription = google_pubsub_subscription.viewcounts["events"].name
  role         = each.value
  member       = local.worker
}

# The best-effort copy of each dead letter (transforms.dead_letters, --dead_letter_topic).
resource "google_pubsub_topic_iam_member" "worker_dead_letters_publisher" {
  topic  = google_pubsub_topic.viewcounts["dead_letters"].name
  role   = "roles/pubsub.publisher"
  member = local.worker
}

# MutateRows of the aggregates and top lists (transforms.bigtable_sink; Bigtable has no
# write-only role): data access on the one table, nothing on the instance's other tables or
# its configuration.
resource "google_bigtable_table_iam_member" "worker_aggregates_user" {
  instance_name = google_bigtable_instance.counts.name
  table         = google_bigtable_table.aggregates.name
  role          = "roles/bigtable.user"
  member        = local.worker
}

# The bucket's objects: archive and dead-letter files, restart markers, the Parquet archive,
# the metadata snapshot, Dataflow's temp and staging files. Nothing on any other bucket.
resource "google_storage_bucket_iam_member" "worker_archive_objects" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectAdmin"
  member = local.worker
}

# Who may start jobs as this account (Dataflow checks iam.serviceAccounts.actAs on it):
# none unless listed, e.g. ["user:oncall@example.com", "serviceAccount:ci@P.iam.gserviceaccount.com"].
resource "google_service_account_iam_member" "worker_launchers" {
  for_each           = toset(var.job_launchers)
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}
