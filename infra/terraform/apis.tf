# The Google APIs this module and the job use, enabled before anything is created (every
# resource depends on them, directly or through a resource it refers to). Left enabled on
# `terraform destroy`: other workloads of the project may use them too.
locals {
  apis = toset([
    "artifactregistry.googleapis.com",     # the stats service's and the Flex Template launcher's images
    "bigquery.googleapis.com",             # the Parquet archive's external table
    "bigtable.googleapis.com",             # the job writes, the stats service reads (data API)
    "bigtableadmin.googleapis.com",        # the instance, table, GC policy and their IAM
    "cloudbuild.googleapis.com",           # builds the Flex Template launcher (infra/dataflow)
    "cloudresourcemanager.googleapis.com", # the project-level grant (roles/dataflow.worker)
    "compute.googleapis.com",              # Dataflow's workers are Compute Engine VMs
    "dataflow.googleapis.com",             # the streaming job
    "iam.googleapis.com",                  # the service accounts
    "logging.googleapis.com",              # the workers' and the service's logs
    "monitoring.googleapis.com",           # the alert policies
    "pubsub.googleapis.com",               # events in, dead letters out
    "run.googleapis.com",                  # the stats service
    "storage.googleapis.com",              # the archive bucket
  ])
}

resource "google_project_service" "apis" {
  for_each           = local.apis
  service            = each.value
  disable_on_destroy = false
}
