"""The streaming job: Pub/Sub -> validate -> dedup -> minute/hour windows -> enrich -> Bigtable,
with dead letters to a Pub/Sub topic and/or files and the raw archive to files.

``build_pipeline(argv)`` builds the job and returns it without running it (tests and the
demo drive it); ``main`` runs it::

    python -m pipelines.streaming --input_subscription projects/P/subscriptions/S \\
        --dead_letter_topic projects/P/topics/T --archive_path gs://B/archive \\
        --bigtable_project P --bigtable_instance I --bigtable_table T --streaming
"""
from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import direct_runner_fix
from pipelines.graph import count_and_store, run_from_command_line
from pipelines.options import CountingOptions, policy_of, sinks_of
from transforms.enrich import read_snapshot_file


def _with_arrival_time(data: bytes) -> tuple[bytes, int]:
    return data, time.time_ns() // 1000


def metadata_snapshots(pipeline: beam.Pipeline, metadata_path: str | None):
    """The enrichment snapshots: the file read once at start (version 0), or none."""
    paths = [metadata_path] if metadata_path else []
    return (pipeline
            | "metadata path" >> beam.Create(paths)
            | "read metadata" >> beam.Map(lambda path: (0, read_snapshot_file(path))))


def build_pipeline(argv: list[str] | None = None) -> beam.Pipeline:
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    o = options.view_as(CountingOptions)
    if not o.input_subscription:
        raise ValueError("--input_subscription is required")
    if options.view_as(StandardOptions).runner in (None, "DirectRunner", "BundleBasedDirectRunner"):
        options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
        direct_runner_fix.apply()
    pipeline = beam.Pipeline(options=options)
    payloads = (pipeline
                | "read Pub/Sub" >> beam.io.ReadFromPubSub(subscription=o.input_subscription)
                | "arrival time" >> beam.Map(_with_arrival_time))
    count_and_store(payloads, metadata_snapshots(pipeline, o.metadata_path), policy_of(o), o.early_firing_s,
                    sinks_of(o))
    return pipeline


if __name__ == "__main__":
    run_from_command_line(build_pipeline)
