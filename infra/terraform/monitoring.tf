# Alert policies, each notifying var.notification_channels (ids of channels made in Cloud
# Monitoring, projects/P/notificationChannels/N; none: incidents show in the console only).
# Dataflow metrics are those of jobs whose name starts with var.dataflow_job_name (the
# streaming job, and the recompute and redrive jobs if so named).

locals {
  gauge_alerts = {
    system_lag = {
      what      = "Dataflow system lag"
      threshold = var.alert_system_lag_s
      filter    = "resource.type = \"dataflow_job\" AND resource.label.job_name = starts_with(\"${var.dataflow_job_name}\") AND metric.type = \"dataflow.googleapis.com/job/system_lag\""
      todo      = "The streaming job is behind: panes fire late and windows close late. Look for a backlog (oldest unacked message age), workers at their limit, or a stuck step in the job's graph."
    }
    oldest_unacked = {
      what      = "age of the oldest unacked event on ${google_pubsub_subscription.viewcounts["events"].name}"
      threshold = var.alert_oldest_unacked_s
      filter    = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${google_pubsub_subscription.viewcounts["events"].name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      todo      = "Events wait in the subscription: the job is not running, not keeping up, or not acknowledging (acks follow checkpoints on Flink). Past the subscription's retention (subscription_retention) they are lost."
    }
  }
  # The job's Beam counters (transforms/metrics.py, namespace viewcounts) that open an incident
  # when they grow by more than the threshold within alert_counter_window_s. Dataflow exports
  # a user counter as the gauge dataflow.googleapis.com/job/user_counter (PromQL:
  # dataflow_googleapis_com:job_user_counter; label metric_name: the counter's name, one series
  # per step), holding the running total: increase() over a window counts what was added (a
  # restarted job's reset to 0 is not a decrease). PromQL, because a threshold condition's
  # ALIGN_DELTA takes cumulative metrics only.
  counter_alerts = {
    write_failures = {
      threshold = 0
      todo      = "aggregates Bigtable refused within the write budget: they are write_failed dead letters; once Bigtable answers, redrive them (pipelines.redrive)"
    }
    dead_letters = {
      threshold = var.alert_dead_letters_threshold
      todo      = "events refused (dead letters, by reason: the dead_letters_<reason> counters and the files under dead-letters/); input errors come from a producer"
    }
  }
}

# Gauges that open an incident when above their threshold for 5 minutes (their highest value
# in each minute).
resource "google_monitoring_alert_policy" "gauge" {
  for_each              = local.gauge_alerts
  display_name          = "viewcounts: ${each.value.what} over ${each.value.threshold} s"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "${each.value.what} > ${each.value.threshold} s for 5 min"
    condition_threshold {
      filter          = each.value.filter
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  documentation {
    mime_type = "text/markdown"
    content   = each.value.todo
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "counter" {
  for_each              = local.counter_alerts
  display_name          = "viewcounts: ${each.key} increased"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "${each.key} grew by more than ${each.value.threshold} in ${var.alert_counter_window_s} s"
    condition_prometheus_query_language {
      query    = "sum by (job_name) (increase(dataflow_googleapis_com:job_user_counter{monitored_resource=\"dataflow_job\", metric_name=\"${each.key}\", job_name=~\"${var.dataflow_job_name}.*\"}[${var.alert_counter_window_s}s])) > ${each.value.threshold}"
      duration = "0s"
    }
  }
  documentation {
    mime_type = "text/markdown"
    content   = "${each.key}: ${each.value.todo}. README, Failure modes."
  }
  depends_on = [google_project_service.apis]
}
