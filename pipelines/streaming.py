"""The streaming job: Pub/Sub -> validate -> dedup -> minute/hour windows -> enrich -> Bigtable,
with dead letters to files (``--dead_letter_path``, else beside ``--archive_path``; the job
refuses to start with neither) and a best-effort copy on a Pub/Sub topic, and the raw archive to files.

``build_pipeline(argv)`` builds the job and returns it without running it (tests and the
demo drive it); ``main`` runs it::

    python -m pipelines.streaming --input_subscription projects/P/subscriptions/S \\
        --dead_letter_topic projects/P/topics/T --archive_path gs://B/archive \\
        --bigtable_project P --bigtable_instance I --bigtable_table T --streaming
"""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, StandardOptions
from apache_beam.utils.timestamp import Timestamp

from pipelines import runners
from pipelines.graph import count_and_store, run_from_command_line
from pipelines.options import CountingOptions, policy_of, sinks_of
from transforms.enrich import EnrichFromFile, EnrichFromSnapshots, read_snapshot_file
from transforms.pubsub_io import ReadFromPubSubPortable


def _with_arrival_time(data: bytes) -> tuple[bytes, int]:
    return data, time.time_ns() // 1000


def metadata_snapshots(pipeline: beam.Pipeline, metadata_path: str | None, refresh_s: int | None):
    """The enrichment snapshots ``(version, dict)``.

    With a path and ``refresh_s``: ``PeriodicImpulse`` re-reads the file every ``refresh_s``
    seconds (version: the firing time in µs). With a path only: the file read once at start
    (version 0). Without a path: no snapshot at all.
    """
    if metadata_path and refresh_s:
        from apache_beam.transforms.periodicsequence import PeriodicImpulse

        def snapshot(fired, path=metadata_path):  # fired: the firing time, a Timestamp or float seconds
            return Timestamp.of(fired).micros, read_snapshot_file(path)

        return (
            pipeline
            | "metadata refresh" >> PeriodicImpulse(fire_interval=refresh_s)
            | "re-read metadata" >> beam.Map(snapshot)
        )
    paths = [metadata_path] if metadata_path else []
    return (
        pipeline
        | "metadata path" >> beam.Create(paths)
        | "read metadata" >> beam.Map(lambda path: (0, read_snapshot_file(path)))
    )


def read_events(pipeline: beam.Pipeline, runner: str, o: CountingOptions):
    """Message payloads from ``o.input_subscription``, as ``(bytes, arrival µs)``: the native
    source where the runner has it (``RunnerProfile.native_pubsub``: element times from
    ``o.timestamp_attribute`` where ``native_timestamp_attribute``, else publish times, and a
    wall-clock watermark), else ``ReadFromPubSubPortable`` (its watermark never passes the wall
    clock plus ``o.max_future_skew_s``) with ``source_readers`` readers placed by
    ``runners.reader_placement`` and paced by ``runners.pull_pacing``."""
    profile = runners.profile(runner)
    if profile.native_pubsub:
        source = beam.io.ReadFromPubSub(
            subscription=o.input_subscription,
            **({"timestamp_attribute": o.timestamp_attribute} if profile.native_timestamp_attribute else {}),
        )
    else:
        options = pipeline.options
        source = ReadFromPubSubPortable(
            o.input_subscription,
            o.timestamp_attribute,
            max_future_skew_s=o.max_future_skew_s,
            readers=source_readers(options, runner),
            **runners.reader_placement(options, runner),
            **runners.pull_pacing(runner, options.view_as(runners.FlinkJobOptions).max_bundle_time_ms),
        )
    return pipeline | "read Pub/Sub" >> source | "arrival time" >> beam.Map(_with_arrival_time)


def source_readers(options: PipelineOptions, runner: str) -> int:
    """``--source_readers``, else ``--parallelism`` when it is given (one reader per source
    subtask: ``ReadFromPubSubPortable`` puts one on each), else 1. Raises ``ValueError`` for
    several readers where the dedup stage reads the watermark from element stamps
    (``RunnerProfile.stamped_watermark``: one reader's stamps are the source's watermark, several
    readers' are not)."""
    readers = options.view_as(CountingOptions).source_readers
    if readers is None:
        parallelism = options.view_as(FlinkRunnerOptions).parallelism
        readers = parallelism if parallelism and parallelism > 0 else 1
    if readers > 1 and runners.profile(runner).stamped_watermark:
        raise ValueError(
            f"--source_readers={readers}: the {runner} runner reads the watermark from the stamps of one reader; use 1"
        )
    return readers


def build_pipeline(argv: list[str] | None = None) -> beam.Pipeline:
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    o = options.view_as(CountingOptions)
    if not o.input_subscription:
        raise ValueError("--input_subscription is required")
    sinks = sinks_of(o)  # raises without a folder for the dead letters
    runner = runners.prepare(options)
    pipeline = beam.Pipeline(options=options)
    count_and_store(
        read_events(pipeline, runner, o),
        enrichment(pipeline, runner, o),
        policy_of(o, check_age=o.check_event_age, one_worker_thread=runners.profile(runner).one_worker_thread),
        o.early_firing_s,
        sinks,
        stamped_watermark=runners.profile(runner).stamped_watermark,
    )
    return pipeline


def enrichment(pipeline: beam.Pipeline, runner: str, o: CountingOptions) -> beam.PTransform:
    """How ``runner`` gets the metadata: a side input of snapshots where side inputs work
    (``RunnerProfile.metadata_side_input``; ``PeriodicImpulse`` re-reads the file when
    refreshing), else ``EnrichFromFile``. Raises ``ValueError`` for ``--metadata_refresh_s``
    on a runner that can do neither."""
    profile = runners.profile(runner)
    if not profile.metadata_side_input:
        return EnrichFromFile(o.metadata_path, o.metadata_refresh_s)
    if o.metadata_refresh_s and not profile.periodic_impulse:
        raise ValueError(
            f"--metadata_refresh_s needs PeriodicImpulse and triggered side inputs; the {runner} runner lacks them"
        )
    refreshing = bool(o.metadata_path and o.metadata_refresh_s)
    return EnrichFromSnapshots(
        metadata_snapshots(pipeline, o.metadata_path, o.metadata_refresh_s),
        triggered=refreshing or profile.trigger_read_once_side_input,
    )


if __name__ == "__main__":
    run_from_command_line(build_pipeline)
