"""Wire the counting core to its side input and sinks; used by every entry point.

``count_and_store(payloads, enrich, policy, early_firing_s, sinks)`` builds
validate -> dedup -> windows -> enrich -> Bigtable, plus the dead-letter sink (Pub/Sub
topic and/or files) and the raw archive (files), and returns the ``CountEvents`` outputs.
"""
from __future__ import annotations

import apache_beam as beam

from pipelines.options import SinkConfig
from transforms.bigtable_sink import WriteAggregates
from transforms.count_events import DEAD_LETTERS, RAW_ARCHIVE, ROWS, CountEvents
from schemas.archive import hour_of_us
from transforms.files import WriteJsonlByHour
from transforms.pubsub_io import WriteToPubSubPortable
from transforms.validate import AcceptancePolicy

def run_from_command_line(build_pipeline) -> None:
    """``python -m pipelines.X FLAGS``: build the job from the flags, run it, wait for it."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, force=True)
    build_pipeline(sys.argv[1:]).run().wait_until_finish()


def count_and_store(payloads, enrich: beam.PTransform, policy: AcceptancePolicy, early_firing_s: int | None,
                    sinks: SinkConfig, stamped_watermark: bool = False) -> dict:
    """``enrich``: ``transforms.enrich.EnrichFromSnapshots`` or ``EnrichFromFile``;
    ``stamped_watermark``: see ``CountEvents``."""
    counted = payloads | "count events" >> CountEvents(policy, early_firing_s, stamped_watermark)
    write_failures = (counted[ROWS]
                      | "enrich" >> enrich
                      | "write to Bigtable" >> beam.ParDo(WriteAggregates(
                          sinks.bigtable_project, sinks.bigtable_instance, sinks.bigtable_table)))
    dead = (counted[DEAD_LETTERS], write_failures) | "all dead letters" >> beam.Flatten()
    if sinks.dead_letter_topic:
        (dead | "to Pub/Sub messages" >> beam.Map(lambda d: (d.payload, d.pubsub_attributes()))
         | "dead letters to Pub/Sub" >> WriteToPubSubPortable(sinks.dead_letter_topic))
    if sinks.dead_letter_path:
        (dead | "dead letters by hour" >> beam.Map(lambda d: (hour_of_us(d.processing_time_us), [d.to_json()]))
         | "dead-letter files" >> WriteJsonlByHour(sinks.dead_letter_path, "dead-letters", sinks.archive_flush_s))
    if sinks.archive_path:
        (counted[RAW_ARCHIVE]
         | "raw archive files" >> WriteJsonlByHour(sinks.archive_path, "events", sinks.archive_flush_s))
    return counted
