# Addresses renamed when the Pub/Sub pairs and the workers' subscription roles became for_each
# resources: a state applied with the old addresses moves to the new ones in place, instead of
# `terraform apply` destroying the topics and subscriptions (and the events they retain).
moved {
  from = google_pubsub_topic.events
  to   = google_pubsub_topic.viewcounts["events"]
}

moved {
  from = google_pubsub_subscription.events
  to   = google_pubsub_subscription.viewcounts["events"]
}

moved {
  from = google_pubsub_topic.dead_letters
  to   = google_pubsub_topic.viewcounts["dead_letters"]
}

moved {
  from = google_pubsub_subscription.dead_letters
  to   = google_pubsub_subscription.viewcounts["dead_letters"]
}

moved {
  from = google_pubsub_subscription_iam_member.worker_events_subscriber
  to   = google_pubsub_subscription_iam_member.worker_events["roles/pubsub.subscriber"]
}

moved {
  from = google_pubsub_subscription_iam_member.worker_events_viewer
  to   = google_pubsub_subscription_iam_member.worker_events["roles/pubsub.viewer"]
}
