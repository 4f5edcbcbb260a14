"""Wire the counting core to its side input and sinks; used by every entry point.

``count_and_store(payloads, snapshots, policy, early_firing_s, sinks)`` builds
validate -> dedup -> windows -> enrich -> Bigtable, plus the dead-letter sink (Pub/Sub
topic and/or files) and the raw archive (files), and returns the ``CountEvents`` outputs.
"""
from __future__ import annotations

import apache_beam as beam

from pipelines.options import SinkConfig
from transforms.bigtable_sink import WriteAggregates
from transforms.count_events import DEAD_LETTERS, RAW_ARCHIVE, ROWS, CountEvents
from transforms.enrich import Enrich, LatestSnapshot
from transforms.files import WriteWindowedJsonl
from transforms.validate import AcceptancePolicy

# Dead-letter and archive files stay open for late input this long (processing-time
# rejections carry their arrival time, so a day is ample).
DEAD_LETTER_FILE_LATENESS_S = 24 * 3600


def _to_pubsub(dead):
    from apache_beam.io.gcp.pubsub import PubsubMessage

    return PubsubMessage(dead.payload, dead.pubsub_attributes())


def count_and_store(payloads, snapshots, policy: AcceptancePolicy, early_firing_s: int | None,
                    sinks: SinkConfig) -> dict:
    counted = payloads | "count events" >> CountEvents(policy, early_firing_s)
    latest = snapshots | "latest metadata" >> LatestSnapshot()
    write_failures = (counted[ROWS]
                      | "enrich" >> beam.ParDo(Enrich(), beam.pvalue.AsList(latest))
                      | "write to Bigtable" >> beam.ParDo(WriteAggregates(
                          sinks.bigtable_project, sinks.bigtable_instance, sinks.bigtable_table)))
    dead = (counted[DEAD_LETTERS], write_failures) | "all dead letters" >> beam.Flatten()
    if sinks.dead_letter_topic:
        from apache_beam.io.gcp.pubsub import WriteToPubSub

        (dead | "to Pub/Sub messages" >> beam.Map(_to_pubsub)
         | "dead letters to Pub/Sub" >> WriteToPubSub(sinks.dead_letter_topic, with_attributes=True))
    if sinks.dead_letter_path:
        (dead | "dead letters as JSON" >> beam.Map(lambda d: d.to_json())
         | "dead-letter files" >> WriteWindowedJsonl(sinks.dead_letter_path, "dead-letters",
                                                     DEAD_LETTER_FILE_LATENESS_S, sinks.archive_flush_s))
    if sinks.archive_path:
        (counted[RAW_ARCHIVE]
         | "raw archive files" >> WriteWindowedJsonl(
             sinks.archive_path, "events", policy.max_event_age_s + DEAD_LETTER_FILE_LATENESS_S,
             sinks.archive_flush_s))
    return counted
