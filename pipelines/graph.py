"""Wire the counting core to its side input and sinks; used by every entry point.

``count_and_store(payloads, enrich, policy, early_firing_s, sinks)`` builds
validate -> dedup -> windows -> enrich -> Bigtable, the top lists of the panes
(``transforms.top.TopEntities``) -> Bigtable, plus the dead letters (files, and a
best-effort copy on a Pub/Sub topic: ``transforms.dead_letters``; ``SinkConfig`` refuses
a job without a dead-letter folder), the raw archive (files,
``transforms.files``) and, for a streaming job with an archive, the marker of a start
without state (``pipelines.restarts``); returns the ``CountEvents`` outputs.
"""

from __future__ import annotations

import apache_beam as beam

from pipelines.options import SinkConfig
from pipelines.restarts import RecordStatelessStart
from pipelines.runners import top_cleanup_grace_s
from schemas.archive import ARCHIVE_FILE_PREFIX
from transforms import metrics
from transforms.bigtable_sink import WriteAggregates
from transforms.count_events import DAY_COUNTS, DEAD_LETTERS, RAW_ARCHIVE, ROWS, CountEvents
from transforms.dead_letters import WriteDeadLetters
from transforms.files import WriteJsonlByHour
from transforms.top import TopEntities
from transforms.validate import AcceptancePolicy


def run_from_command_line(build_pipeline) -> None:
    """``python -m pipelines.X FLAGS``: build the job from the flags, run it, wait for it."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, force=True)
    build_pipeline(sys.argv[1:]).run().wait_until_finish()


def bigtable_writer(sinks: SinkConfig, written_counter: str | None = None) -> beam.ParDo:
    """The Bigtable sink step (``transforms.bigtable_sink.WriteAggregates``) of ``sinks``;
    ``written_counter``: its counter of cells written (default ``aggregates_written``)."""
    return beam.ParDo(
        WriteAggregates(
            sinks.bigtable_project,
            sinks.bigtable_instance,
            sinks.bigtable_table,
            write_budget_s=sinks.bigtable_write_budget_s,
            attempt_timeout_s=sinks.bigtable_attempt_timeout_s,
            **({"written_counter": written_counter} if written_counter else {}),
        )
    )


def count_and_store(
    payloads,
    enrich: beam.PTransform,
    policy: AcceptancePolicy,
    early_firing_s: int | None,
    sinks: SinkConfig,
    stamped_watermark: bool = False,
) -> dict:
    """``enrich``: ``transforms.enrich.EnrichFromSnapshots`` or ``EnrichFromFile``;
    ``stamped_watermark``: see ``CountEvents``; the top stages' ``cleanup_grace_s`` follows the
    runner of the pipeline's options (``pipelines.runners.top_cleanup_grace_s``). Dead letters go to ``sinks.dead_letter_path``,
    which a ``SinkConfig`` always has."""
    counted = payloads | "count events" >> CountEvents(policy, early_firing_s, stamped_watermark)
    write_failures = counted[ROWS] | "enrich" >> enrich | "write to Bigtable" >> bigtable_writer(sinks)
    top_write_failures = (
        (counted[ROWS], counted[DAY_COUNTS])
        | "top entities"
        >> TopEntities(policy.allowed_lateness_s, cleanup_grace_s=top_cleanup_grace_s(payloads.pipeline.options))
        | "write top lists to Bigtable" >> bigtable_writer(sinks, metrics.TOP_LISTS_WRITTEN)
    )
    dead = (counted[DEAD_LETTERS], write_failures, top_write_failures) | "all dead letters" >> beam.Flatten()
    dead | "dead letters" >> WriteDeadLetters(sinks.dead_letter_path, sinks.dead_letter_topic, sinks.run_id)
    if sinks.archive_path:
        (
            counted[RAW_ARCHIVE]
            | "raw archive files" >> WriteJsonlByHour(sinks.archive_path, ARCHIVE_FILE_PREFIX, sinks.run_id)
        )
        if sinks.record_stateless_start:
            (
                payloads.pipeline
                | "record a start without state"
                >> RecordStatelessStart(sinks.archive_path, sinks.run_id, policy.allowed_lateness_s)
            )
    return counted
