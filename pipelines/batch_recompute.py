"""Batch recompute: re-count a time range from the raw archive with the streaming job's transforms.

Reads the archive's hour folders for ``[--start, --end)`` (hour-aligned RFC 3339 instants),
runs the same ``CountEvents`` core (dedup by ``event_id`` across the whole range, no
processing-time checks, one pane per window) and overwrites those windows' aggregates in
Bigtable. Events the streaming job refused as ``too_late`` are in the archive and are
counted here: that is the point of a recompute. ``build_pipeline(argv)`` returns the job
without running it::

    python -m pipelines.batch_recompute --archive_path gs://B/archive \\
        --start 2024-05-14T00:00:00Z --end 2024-05-15T00:00:00Z --bigtable_project P ...

``--after_restarts`` instead recomputes the closed hours that streaming jobs started
without state may have left low (``pipelines.restarts.plan_recompute``; within
``[--start, --end)`` when those are given too), and logs the affected hours that are not
closed yet (run it again later); it is safe to run repeatedly::

    python -m pipelines.batch_recompute --archive_path gs://B/archive --after_restarts --bigtable_project P ...
"""
from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.graph import count_and_store, run_from_command_line
from pipelines.options import CountingOptions, policy_of, sinks_of
from pipelines.streaming import metadata_snapshots
from pipelines.restarts import plan_recompute
from schemas.archive import ARCHIVE_WINDOW_S, hour_folder
from schemas.event import US_PER_S, format_time_us, parse_event_time
from transforms.enrich import EnrichFromSnapshots

_LOG = logging.getLogger(__name__)


class RecomputeOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # not argparse-required: Beam parses every registered options class on every view
        parser.add_argument("--start", help="RFC 3339, hour-aligned, inclusive; required without --after_restarts")
        parser.add_argument("--end", help="RFC 3339, hour-aligned, exclusive; required without --after_restarts")
        parser.add_argument("--after_restarts", action="store_true", default=False,
                            help="recompute the closed hours affected by streaming jobs started without state")


def _range_s(start: str | None, end: str | None) -> tuple[int, int]:
    if not start or not end:
        raise ValueError("--start and --end are required")
    start_s, end_s = parse_event_time(start) // US_PER_S, parse_event_time(end) // US_PER_S
    if start_s % ARCHIVE_WINDOW_S or end_s % ARCHIVE_WINDOW_S or end_s <= start_s:
        raise ValueError("--start and --end must be hour-aligned with start < end")
    return start_s, end_s


def hours_to_recompute(archive_path: str, r: RecomputeOptions, now_s: float) -> list[int]:
    """Start instants (epoch seconds) of the hours to recompute: ``[--start, --end)``, or with
    ``--after_restarts`` the closed hours of ``plan_recompute`` (within the range if given)."""
    if not r.after_restarts:
        start_s, end_s = _range_s(r.start, r.end)
        return list(range(start_s, end_s, ARCHIVE_WINDOW_S))
    plan = plan_recompute(archive_path, now_s,
                          range(*_range_s(r.start, r.end), ARCHIVE_WINDOW_S) if r.start or r.end else None)
    if plan.open:
        _LOG.warning("hours affected by a start without state but not closed yet (recompute them later): %s",
                     ", ".join(format_time_us(h * US_PER_S) for h in plan.open))
    _LOG.info("recomputing %d hours affected by starts without state: %s", len(plan.closed),
              ", ".join(format_time_us(h * US_PER_S) for h in plan.closed))
    return plan.closed


def _lines(readable_file):
    with readable_file.open() as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line, 0


def build_pipeline(argv: list[str] | None = None) -> beam.Pipeline:
    options = PipelineOptions(argv)
    o = options.view_as(CountingOptions)
    r = options.view_as(RecomputeOptions)
    if not o.archive_path:
        raise ValueError("--archive_path is required")
    hours = hours_to_recompute(o.archive_path, r, time.time())
    # the recompute reads the archive; it must not write a second copy of it
    sinks = dataclasses.replace(sinks_of(o, streaming=False), archive_path=None)
    pipeline = beam.Pipeline(options=options)
    payloads = (pipeline
                | "archive hours" >> beam.Create([f"{hour_folder(o.archive_path, h)}/*.jsonl" for h in hours])
                | "match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                | "open" >> fileio.ReadMatches()
                | "lines" >> beam.FlatMap(_lines))
    count_and_store(payloads, EnrichFromSnapshots(metadata_snapshots(pipeline, o.metadata_path, None), triggered=False),
                    policy_of(o, check_age=False), None, sinks)
    return pipeline


if __name__ == "__main__":
    run_from_command_line(build_pipeline)
