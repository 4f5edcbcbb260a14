"""Create the Pub/Sub and Bigtable resources the job uses (on the emulators, or for real).

The names and the GC rule are the ones ``infra/terraform/`` declares for the cloud.
"""

from __future__ import annotations

import datetime as dt

from pipelines.runners import ACK_DEADLINE_S
from schemas import storage

AGGREGATE_RETENTION_DAYS = 400


def create_table(project: str, instance: str, table: str) -> None:
    """Create ``table`` with the aggregates family if it does not exist.

    GC rule: keep only the newest cell of each column, and drop cells older than
    ``AGGREGATE_RETENTION_DAYS`` (a union: a cell goes when either rule says so).
    """
    from google.cloud.bigtable import Client, column_family

    client = Client(project=project, admin=True)
    try:
        t = client.instance(instance).table(table)
        if not t.exists():
            rule = column_family.GCRuleUnion(
                [
                    column_family.MaxVersionsGCRule(1),
                    column_family.MaxAgeGCRule(dt.timedelta(days=AGGREGATE_RETENTION_DAYS)),
                ]
            )
            t.create(column_families={storage.FAMILY: rule})
    finally:
        client.close()


def create_topic_and_subscription(project: str, topic: str, subscription: str | None) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic_path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(name=topic_path)
    except AlreadyExists:
        pass
    if subscription:
        subscriber = pubsub_v1.SubscriberClient()
        try:
            subscriber.create_subscription(
                name=subscriber.subscription_path(project, subscription),
                topic=topic_path,
                ack_deadline_seconds=ACK_DEADLINE_S,
            )
        except AlreadyExists:
            pass
        finally:
            subscriber.close()
